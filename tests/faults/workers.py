"""Real Celery worker processes for the fault tests: started, killed, and pointed at the
test database (PostgreSQL as is; an in-memory SQLite test database copied to a file)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from django.conf import settings as django_settings
from django.db import connection

ROOT = Path(__file__).resolve().parents[2]


def worker_env(database_url: str, **extra: str) -> dict:
    """The environment of a worker process on the test database and broker."""
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
    env.update(
        DJANGO_SETTINGS_MODULE="tests.settings",
        DATABASE_URL=database_url,
        STILLHERE_VAR_DIR=str(django_settings.VAR_DIR),
        LOG_LEVEL="WARNING",
    )
    if django_settings.REDIS_URL:
        env["REDIS_URL"] = django_settings.REDIS_URL
    env.update(extra)  # a test's own broker (REDIS_URL=...) wins
    return env


def mailgun_worker_env(esp_url: str, database_url: str, **extra) -> dict:
    """A worker's environment sending through the fake Mailgun at `esp_url`
    (bench/fake_esp.py); `extra` settings as values of any type."""
    return worker_env(
        database_url,
        EMAIL_PROVIDER="mailgun",
        EMAIL_API_KEY="key-test",
        EMAIL_API_URL=f"{esp_url}/v3",
        MAILGUN_SENDER_DOMAIN="mg.shop.example",
        # The mounted tracking webhook must have its key, or the settings refuse to load.
        MAILGUN_WEBHOOK_SIGNING_KEY="test-signing-key",
        **{name: str(value) for name, value in extra.items()},
    )


def seed_blast(recipients: int) -> list[str]:
    """`recipients` subscribed contacts (returned), 20 unsubscribed and 20 pending who
    must never be mailed, and sender settings complete enough to send."""
    from audience.models import Contact
    from campaigns.models import SenderSettings

    Contact.objects.bulk_create(
        [Contact(email=f"r{i}@example.com", status="subscribed") for i in range(recipients)]
        + [Contact(email=f"u{i}@example.com", status="unsubscribed") for i in range(20)]
        + [Contact(email=f"p{i}@example.com", status="pending") for i in range(20)]
    )
    SenderSettings.objects.update_or_create(
        pk=1,
        defaults={
            "from_name": "Shop",
            "from_email": "news@shop.example",
            "postal_address": "1 Harbour Road",
        },
    )
    return [f"r{i}@example.com" for i in range(recipients)]


def start_worker(env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [
            *(sys.executable, "-m", "celery", "-A", "config", "worker", "--pool", "solo"),
            *("--loglevel", "WARNING", "--without-gossip", "--without-mingle"),
        ],
        cwd=ROOT,
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait(predicate, timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return False


class Database:
    """The workers' view of the test database: PostgreSQL as is; an in-memory SQLite
    test database is copied to a file the worker processes can open."""

    def __init__(self, tmp: Path):
        self.file = None
        if connection.vendor == "sqlite":
            self.file = tmp / "faults.sqlite3"
            self.url = f"sqlite:///{self.file}"
        else:
            s = connection.settings_dict
            auth = s["USER"] + (f":{s['PASSWORD']}" if s["PASSWORD"] else "")
            self.url = f"postgres://{auth}@{s['HOST']}:{s['PORT'] or 5432}/{s['NAME']}"

    def hand_over(self) -> None:
        if self.file is not None:
            connection.ensure_connection()
            target = sqlite3.connect(self.file)
            connection.connection.backup(target)
            target.close()

    def query(self, sql: str, *params) -> list[tuple]:
        if self.file is not None:
            with sqlite3.connect(self.file, timeout=30) as db:
                return db.execute(sql.replace("%s", "?"), params).fetchall()
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchall()
