"""The database connection of a running ``manage.py import_contacts`` is terminated
(pg_terminate_backend from another connection) after its first chunk is stored.

Wanted: the command prints one clear line and exits non-zero, no traceback; the job
ends ``failed`` (recorded on a fresh connection) with an error that says how many rows
were stored; running the same file again ends with exactly one contact per address.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from django.db import connection

from audience.models import Contact, ImportJob
from tests.faults.workers import ROOT, Database, wait, worker_env

ROWS = 120_000
APP = "stillhere-import-under-test"


def _file(path: Path) -> None:
    with path.open("w", newline="") as f:
        f.write("Email Address,First Name,OPTIN_TIME\r\n")
        for i in range(ROWS):
            f.write(f"p{i}@example.com,Person {i},2024-05-01 10:00:00\r\n")


def _command(db: Database, path: Path) -> subprocess.Popen:
    env = worker_env(db.url, PGAPPNAME=APP)  # libpq names the command's connections
    return subprocess.Popen(
        [sys.executable, "manage.py", "import_contacts", str(path)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _terminate_the_import_s_backends() -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = %s AND pid <> pg_backend_pid()",
            [APP],
        )
        return cursor.fetchone()[0]


def test_an_import_whose_connection_drops_fails_clearly_and_a_rerun_is_exact(
    transactional_db, fault_report
):
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL's pg_terminate_backend (CI runs it on PostgreSQL)")
    outcome = {"survived": 0, "lost": None, "duplicates": None}
    try:
        tmp = Path(tempfile.mkdtemp(prefix="stillhere-faults-"))
        path = tmp / "contacts.csv"
        _file(path)
        db = Database(tmp)
        proc = _command(db, path)
        try:
            started = wait(
                lambda: (
                    ImportJob.objects.filter(status="running", rows_done__gt=0).exists()
                    or proc.poll() is not None
                ),
                timeout=120,
            )
            assert started and proc.poll() is None, "the import ended before it could be cut"
            assert _terminate_the_import_s_backends() >= 1
            _, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode != 0
        assert "Traceback" not in err, err[-3000:]
        last = err.strip().splitlines()[-1]
        assert last.startswith("CommandError: The import stopped on the database connection was")
        job = ImportJob.objects.get()
        assert job.status == "failed"
        stored = Contact.objects.count()
        assert 0 < stored < ROWS
        # The error names the rows stored; with two writers one more chunk may be in.
        assert f"after {job.rows_done:,} rows of the file were stored" in job.error
        assert job.rows_done <= stored
        assert job.error in last

        again = subprocess.run(
            [sys.executable, "manage.py", "import_contacts", str(path)],
            cwd=ROOT, env=worker_env(db.url), capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert again.returncode == 0, again.stderr[-3000:]
        total = Contact.objects.count()
        distinct = Contact.objects.values("email").distinct().count()
        outcome = {"survived": 0, "lost": ROWS - distinct, "duplicates": total - distinct}
        assert total == ROWS
        assert Contact.objects.filter(email="p0@example.com").count() == 1
        os.remove(path)
        outcome["survived"] = 1
    finally:
        fault_report(
            fault="database connection terminated mid-import",
            cases=1,
            **outcome,
        )
