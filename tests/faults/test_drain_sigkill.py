"""SIGKILL a worker in the middle of draining a large signup buffer; every signup must
still arrive, once.

A real worker process drains a buffer (audience.intake) of tens of thousands of signups,
a batch at a time, and is killed after its first committed batch. At that moment what
it committed must be exactly what its cursor says (contacts and cursor go in one
transaction), and every entry after the cursor must still be in Redis. A fresh worker,
prompted as beat's sweep would, must finish: each address one contact with one signup
consent event, nothing lost, nothing doubled, the buffer empty.
"""

from __future__ import annotations

import signal
import subprocess
import tempfile
from pathlib import Path

import pytest
from django.conf import settings
from django.core.cache import cache
from django.db import connection
from django.utils import timezone

from audience import buffer, intake
from audience.services import Evidence
from audience.tasks import drain_signups
from tests.factories import SignupFormFactory
from tests.faults.workers import Database, start_worker, stop, wait, worker_env

pytestmark = [
    pytest.mark.worker,
    pytest.mark.skipif(
        "redis" not in settings.CACHES["default"]["BACKEND"].lower(),
        reason="the signup buffer exists only when the cache is Redis (set REDIS_URL)",
    ),
]

# SQLite (never with Redis in CI) stores a batch one signup at a time: fewer, to finish.
ENTRIES = 60_000 if connection.vendor == "postgresql" else 6_000


def _fill_buffer(form) -> None:
    """ENTRIES signups in the buffer, as audience.buffer writes them (single opt-in: no mail)."""
    client = buffer.client()
    stream = cache.make_key(intake.STREAM)
    at = timezone.now().timestamp()
    pipe = client.pipeline(transaction=False)
    for i in range(ENTRIES):
        entry = buffer.encode(
            sid=f"sid{i}", form=form, email=f"s{i}@example.com", first_name=f"Person {i}",
            last_name="", phone="", at=at + i / 1000,
            evidence=Evidence(method="form-script", ip="198.51.100.7", user_agent="Mozilla/5.0"),
        )  # fmt: skip
        pipe.xadd(stream, {"v": entry})
        if i % 5000 == 4999:
            pipe.execute()
    pipe.execute()
    assert intake.backlog() == ENTRIES


def test_a_killed_drain_worker_is_resumed_and_every_signup_arrives_once(
    transactional_db, fault_report
):
    from config.celery import app

    app.control.purge()
    tmp = Path(tempfile.mkdtemp(prefix="stillhere-faults-"))
    db = Database(tmp)
    workers: list[subprocess.Popen] = []
    client = buffer.client()
    stream = cache.make_key(intake.STREAM)
    survived, lost, duplicates = 0, None, None
    try:
        form = SignupFormFactory(double_opt_in=False)
        _fill_buffer(form)
        db.hand_over()
        env = worker_env(db.url)

        def cursor() -> tuple[int, str]:
            rows = db.query(
                "SELECT drained, last_id FROM audience_signupbuffercursor WHERE name LIKE %s",
                f"{buffer.STREAM}@%",
            )
            return rows[0] if rows else (0, "")

        def contacts() -> int:
            sql = "SELECT COUNT(*) FROM audience_contact WHERE email LIKE %s"
            return db.query(sql, "s%@example.com")[0][0]

        first = start_worker(env, tmp / "worker1.log")
        workers.append(first)
        drain_signups.delay()
        assert wait(lambda: cursor()[0] > 0, timeout=60), (tmp / "worker1.log").read_text()
        first.send_signal(signal.SIGKILL)
        first.wait()
        drained_at_kill, last_id = cursor()
        assert 0 < drained_at_kill < ENTRIES, "killed mid-drain"
        # What was committed is exactly what the cursor passed, and nothing after it is gone.
        assert contacts() == drained_at_kill
        assert len(client.xrange(stream, min=f"({last_id}")) == ENTRIES - drained_at_kill

        second = start_worker(env, tmp / "worker2.log")
        workers.append(second)

        def finished() -> bool:
            if cursor()[0] == ENTRIES and intake.backlog() == 0:
                return True
            drain_signups.delay()  # beat's sweep, done here on a short timer
            return False

        assert wait(finished, timeout=180, step=1), (tmp / "worker2.log").read_text()
        assert contacts() == ENTRIES
        (events, distinct), *_ = db.query(
            "SELECT COUNT(*), COUNT(DISTINCT contact_id) FROM audience_consentevent "
            "WHERE kind = %s",
            "signup",
        )
        assert events == distinct == ENTRIES  # one signup event each, none doubled
        assert not client.xrange(cache.make_key(intake.FAILED_STREAM))
        print(f"killed after {drained_at_kill} signups; resumed and finished")
        survived, lost, duplicates = 1, ENTRIES - contacts(), events - distinct
    finally:
        fault_report(
            fault="worker SIGKILL mid signup-buffer drain",
            cases=1,
            survived=survived,
            lost=lost,
            duplicates=duplicates,
        )
        for proc in workers:
            stop(proc)
