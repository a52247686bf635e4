"""Redis killed (SIGKILL) and restarted while signups arrive: every answered signup is in
PostgreSQL afterwards.

Each test runs its own redis-server, on a free port in a temp dir, as the cache (the
buffer, the rate limits); the shared Redis is never touched. With `appendonly yes` the
signups are buffered and the restarted Redis still holds them for the drain; with
`appendonly no` (which would lose them all) signups are written in their request.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest
import redis

from audience import buffer
from audience.forms import render_stamp
from audience.models import ConsentEvent, Contact
from audience.tasks import drain_signups
from tests.factories import SignupFormFactory
from tests.polling import wait_for

pytestmark = [
    pytest.mark.usefixtures("site_url"),
    pytest.mark.skipif(not shutil.which("redis-server"), reason="needs the redis-server command"),
]

JSON = {"HTTP_ACCEPT": "application/json", "HTTP_ORIGIN": "https://shop.example.com"}


class OwnRedis:
    def __init__(self, appendonly: str):
        self.dir = Path(tempfile.mkdtemp(prefix="stillhere-redis-"))
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.appendonly = appendonly
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                *("redis-server", "--port", str(self.port), "--bind", "127.0.0.1"),
                *("--dir", str(self.dir), "--appendonly", self.appendonly, "--save", ""),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        probe = redis.Redis(port=self.port)

        def ready() -> bool:
            try:
                return probe.ping()
            except redis.RedisError:
                return False

        assert wait_for(ready, timeout=10)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


@pytest.fixture(params=["yes", "no"], ids=["appendonly-yes", "appendonly-no"])
def own_redis(request, settings, monkeypatch):
    server = OwnRedis(request.param)
    server.start()
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": f"redis://127.0.0.1:{server.port}/0",
            "KEY_PREFIX": "stillhere",
        }
    }
    settings.SIGNUP_BUFFER = "auto"
    settings.SIGNUP_BUFFER_SECONDS = 0
    settings.SIGNUP_BUFFER_CHECK_SECONDS = 0.2
    settings.SIGNUP_RATE_PER_IP = "1000000/m"
    settings.SIGNUP_RATE_PER_FORM = "1000000/m"
    monkeypatch.setattr(drain_signups, "apply_async", lambda **kwargs: None)  # drained below
    yield server
    if server.proc.poll() is None:
        server.kill()
    shutil.rmtree(server.dir, ignore_errors=True)


@pytest.mark.django_db
def test_redis_killed_and_restarted_during_signups_loses_no_answered_signup(
    client, own_redis, fault_report
):
    form = SignupFormFactory(public_key="shop", double_opt_in=False)
    answered: list[str] = []
    held = {}

    def killer() -> None:
        wait_for(lambda: len(answered) >= 40, timeout=60)
        held["before_kill"] = redis.Redis(port=own_redis.port).xlen("stillhere:1:signup-buffer")
        own_redis.kill()  # while signups go on arriving
        wait_for(lambda: len(answered) >= 70, timeout=60)
        own_redis.start()
        held["after_restart"] = redis.Redis(port=own_redis.port).xlen("stillhere:1:signup-buffer")

    thread = threading.Thread(target=killer)
    thread.start()
    i = 0
    deadline = time.monotonic() + 120
    while (thread.is_alive() or len(answered) < 110) and time.monotonic() < deadline:
        email = f"s{i}@example.com"
        response = client.post(
            "/f/shop/submit", {"email": email, "consent": "on", "ts": render_stamp(form)}, **JSON
        )
        if 200 <= response.status_code < 300:
            answered.append(email)
        i += 1
    thread.join()
    if own_redis.appendonly == "yes":
        # Buffered before the kill, and the restarted Redis kept every entry.
        assert held["before_kill"] > 0
        assert held["after_restart"] >= held["before_kill"]
    else:
        assert held["before_kill"] == 0  # nothing was left waiting in Redis
    buffer.drain()
    stored = set(Contact.objects.filter(email__in=answered).values_list("email", flat=True))
    events = ConsentEvent.objects.filter(kind="signup", contact__email__in=answered).count()
    lost = len(set(answered) - stored)
    fault_report(
        fault=f"Redis SIGKILL + restart during signups (appendonly {own_redis.appendonly})",
        cases=len(answered),
        survived=len(answered) - lost,
        lost=lost,
        duplicates=events - len(stored),
    )
    assert lost == 0
    assert events == len(answered)  # one signup event each: none stored twice
    assert buffer.backlog() == 0


@pytest.mark.parametrize("own_redis", ["no"], indirect=True)
@pytest.mark.django_db
def test_without_appendonly_a_signup_is_in_postgresql_when_answered_and_buffered_once_it_is_on(
    client, own_redis
):
    form = SignupFormFactory(public_key="shop")

    def sign_up(email: str) -> None:
        data = {"email": email, "consent": "on", "ts": render_stamp(form)}
        assert client.post("/f/shop/submit", data, **JSON).status_code == 200

    sign_up("direct@example.com")
    assert Contact.objects.filter(email="direct@example.com").exists()
    assert buffer.backlog() == 0
    # Turned on at runtime: the next check, a moment later, finds it.
    redis.Redis(port=own_redis.port).config_set("appendonly", "yes")
    assert wait_for(buffer.in_use, timeout=5)  # asked again after SIGNUP_BUFFER_CHECK_SECONDS
    sign_up("buffered@example.com")
    assert not Contact.objects.filter(email="buffered@example.com").exists()
    assert buffer.backlog() == 1
    buffer.drain()
    assert Contact.objects.filter(email="buffered@example.com").exists()
