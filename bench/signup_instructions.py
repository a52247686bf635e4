"""Instructions one Django process runs per signup and per trivial request (callgrind).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/bench_signup \\
    REDIS_URL=redis://127.0.0.1:6379/7 .venv/bin/python bench/signup_instructions.py

On a shared machine, rates drift by a third within minutes; an instruction count does
not: valgrind's callgrind counts the same total for the same code and inputs, whatever
else the machine is doing. So this is the figure to compare two commits by when a change
is to the signup's own Python. What it cannot see is what the kernel does for the
signup's Redis round trip (the switch to Redis and back, and the caches that switch
cools); bench/signup.py's rates include that, and on loopback it is most of what a
signup costs beyond the floor.

Each kind of request runs in a process of its own under callgrind, through Django's WSGI
handler with the benchmark's settings (bench/signup.py: the signup buffer on, PostgreSQL,
Redis), posting what the script embed posts: 50 requests to warm up, then N. The count
per request is the difference between N=400 and N=100 over 300, so start-up cancels out.
The buffer's drain task is queued in the warm-up, as it is once per SIGNUP_BUFFER_SECONDS
in production, and not once per signup as valgrind's slowness would otherwise have it.
Afterwards the buffer is drained and this run's contacts are deleted.

It needs valgrind (Debian: apt-get install valgrind). About five minutes.
"""

from __future__ import annotations

import io
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.signup import FORM_KEY, SHOP_ORIGIN, _bench_env, _ensure_database  # noqa: E402

WARM_UP = 50
FEW, MANY = 100, 400


def _child(kind: str, count: int, domain: str, stamp: str) -> None:
    """Runs under callgrind: WARM_UP + count requests of one kind through the WSGI handler."""
    from django.core.wsgi import get_wsgi_application

    application = get_wsgi_application()
    path = f"/f/{FORM_KEY}/submit" if kind == "signup" else "/bench/trivial"
    statuses: list[str] = []
    for i in range(WARM_UP + count):
        body = urlencode(
            {"email": f"{kind}{i}@{domain}", "first_name": "Bench", "consent": "on", "ts": stamp}
        ).encode()
        environ = {
            "REQUEST_METHOD": "POST", "PATH_INFO": path, "SERVER_NAME": "127.0.0.1",
            "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(body), "CONTENT_LENGTH": str(len(body)),
            "CONTENT_TYPE": "application/x-www-form-urlencoded;charset=UTF-8",
            "HTTP_HOST": "127.0.0.1", "HTTP_ACCEPT": "application/json",
            "HTTP_ORIGIN": SHOP_ORIGIN, "HTTP_USER_AGENT": "bench", "REMOTE_ADDR": "127.0.0.1",
        }  # fmt: skip
        response = application(environ, lambda status, headers: statuses.append(status))
        b"".join(response)
        response.close()
        if not statuses[-1].startswith("200"):
            raise SystemExit(f"{path} answered {statuses[-1]}")


def _instructions(kind: str, count: int, domain: str, stamp: str, env: dict) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        cmd = [
            "valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
            sys.executable, __file__, "--child", kind, str(count), domain, stamp,
        ]  # fmt: skip
        run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        if run.returncode != 0:
            raise SystemExit(f"the {kind} run failed:\n{run.stderr[-3000:]}")
        summary = re.search(r"^summary: (\d+)$", out.read_text(), re.MULTILINE)
        return int(summary.group(1))


def main() -> int:
    database_url = os.environ.get("DATABASE_URL", "")
    if not database_url.startswith(("postgres://", "postgresql://")) or not os.environ.get(
        "REDIS_URL"
    ):
        raise SystemExit("set DATABASE_URL=postgres://… and REDIS_URL=redis://… (docstring)")
    if not shutil.which("valgrind"):
        raise SystemExit("this benchmark needs valgrind: apt-get install -y valgrind")
    _ensure_database(database_url)
    var_dir = Path(tempfile.mkdtemp(prefix="stillhere-bench-"))
    env = _bench_env(SimpleNamespace(no_buffer=False), 9, var_dir)
    # A signup queues the buffer's drain once per SIGNUP_BUFFER_SECONDS (one in hundreds
    # under load); at valgrind's pace that would be nearly every signup.
    env["SIGNUP_BUFFER_SECONDS"] = "3600"
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v0"], cwd=ROOT, env=env, check=True
    )
    os.environ.update(env)
    import django

    django.setup()
    from django.core.cache import cache

    from audience import intake
    from audience.forms import render_stamp
    from audience.models import Contact
    from bench.signup import bench_form
    from config.celery import app as celery_app

    stamp = render_stamp(bench_form())
    domain = f"i{secrets.token_hex(4)}.bench.example"
    per_request = {}
    try:
        for kind in ("trivial", "signup"):
            few = _instructions(kind, FEW, f"few.{domain}", stamp, env)
            many = _instructions(kind, MANY, f"many.{domain}", stamp, env)
            per_request[kind] = (many - few) / (MANY - FEW)
            print(f"{kind:8s} {per_request[kind]:12,.0f} instructions per request")
    finally:
        intake.drain()
        Contact.objects.filter(email__endswith=domain).delete()
        celery_app.control.purge()  # the drain task the signups queued
        # The hour-long flag would keep the next signups on this Redis from queuing
        # their drain (bench/signup.py would wait for it in vain).
        cache.delete(intake.DRAIN_QUEUED_FLAG)
        shutil.rmtree(var_dir, ignore_errors=True)
    print(f"signup / trivial {per_request['signup'] / per_request['trivial']:8.2f}")
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        import django

        django.setup()
        kind, count, domain, stamp = sys.argv[2:6]
        _child(kind, int(count), domain, stamp)
    else:
        sys.exit(main())
