"""SIGKILL a worker in the middle of a large import; every row must still arrive, once.

A real worker process runs the import (its file big enough to be parsed by the parser
process); it is killed after its first progress save. The parser process must go with
it, and a fresh worker, prompted by beat's task, must resume the job and finish it:
each address one contact with one consent event, nothing lost, nothing doubled.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest

from audience import importing
from audience.importing import parsing
from audience.tasks import resume_stalled_imports, run_import
from tests.faults.workers import Database, start_worker, stop, wait, worker_env

pytestmark = pytest.mark.worker

ROWS = 80_000


def _parser_processes() -> list[int]:
    found = []
    for pid in os.listdir("/proc"):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"audience.parse_child" in f.read():
                    found.append(int(pid))
        except (OSError, ValueError):
            continue
    return found


def _file() -> bytes:
    lines = ["Email Address,First Name,Phone Number,OPTIN_TIME"]  # a Mailchimp export
    for i in range(ROWS):
        phone = f"+1415{2000000 + i:07d}" if i % 2 else ""
        lines.append(f"p{i}@example.com,Person {i},{phone},2024-05-01 10:00:00")
    return ("\r\n".join(lines) + "\r\n").encode()


def test_a_killed_import_worker_is_resumed_and_every_row_arrives_once(
    transactional_db, fault_report
):
    from config.celery import app

    app.control.purge()
    tmp = Path(tempfile.mkdtemp(prefix="stillhere-faults-"))
    db = Database(tmp)
    workers: list[subprocess.Popen] = []
    data = _file()
    survived, lost, duplicates = 0, None, None
    assert len(data) >= parsing.CHILD_MIN_BYTES  # the parser process takes part
    try:
        job = importing.job_create(f=io.BytesIO(data), name="big.csv", size=len(data))
        importing.job_start(job=job, options={"new_status": "consent"}, dispatch=False)
        db.hand_over()
        env = worker_env(db.url, IMPORT_STALL_SECONDS="3")

        def job_row() -> tuple:
            sql = "SELECT status, rows_done FROM audience_importjob WHERE id = %s"
            return db.query(sql, job.pk)[0]

        first = start_worker(env, tmp / "worker1.log")
        workers.append(first)
        run_import.delay(job.pk)
        assert wait(lambda: job_row()[1] > 0, timeout=60), (tmp / "worker1.log").read_text()
        assert _parser_processes(), "a file this large is parsed by the parser process"
        first.send_signal(signal.SIGKILL)
        first.wait()
        status, done_at_kill = job_row()
        assert status == "running" and 0 < done_at_kill < ROWS, "killed mid-import"
        # Orphaned, the parser process finds its pipe closed and ends.
        assert wait(lambda: not _parser_processes(), timeout=30)

        second = start_worker(env, tmp / "worker2.log")
        workers.append(second)

        def finished() -> bool:
            if job_row()[0] == "done":
                return True
            resume_stalled_imports.delay()  # beat's job, done here on a short timer
            return False

        assert wait(finished, timeout=120, step=1), (tmp / "worker2.log").read_text()
        (contacts, subscribed), *_ = db.query(
            "SELECT COUNT(*), SUM(CASE WHEN status = 'subscribed' THEN 1 ELSE 0 END) "
            "FROM audience_contact WHERE email LIKE %s",
            "p%@example.com",
        )
        assert (contacts, subscribed) == (ROWS, ROWS)
        (events, distinct), *_ = db.query(
            "SELECT COUNT(*), COUNT(DISTINCT contact_id) FROM audience_consentevent "
            "WHERE kind = %s",
            "import",
        )
        assert events == distinct == ROWS  # one consent event each, none doubled
        (rows_done,), *_ = db.query(
            "SELECT rows_done FROM audience_importjob WHERE id = %s", job.pk
        )
        assert rows_done == ROWS
        print(f"killed after {done_at_kill} rows; resumed and finished")
        survived, lost, duplicates = 1, ROWS - contacts, events - distinct
    finally:
        fault_report(
            fault="worker SIGKILL mid-import",
            cases=1,
            survived=survived,
            lost=lost,
            duplicates=duplicates,
        )
        for proc in workers:
            stop(proc)
