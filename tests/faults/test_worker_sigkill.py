"""SIGKILL a worker in the middle of a 5,000-recipient blast; nobody may be skipped.

Real worker processes (`python -m celery -A config worker`) on the configured broker,
against the test database, sending through the fake Mailgun on loopback. After the
kill, a fresh worker and the sweeper must finish the job, re-sending at most the chunk
the dead worker held.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.db import connection

from audience.models import Contact
from bench.fake_esp import FakeESP
from campaigns import ratelimit, services
from campaigns.models import Campaign, SenderSettings
from campaigns.tasks import sweep_stale_claims

pytestmark = pytest.mark.worker

RECIPIENTS = 5000
CHUNK = 500
CLAIM_TIMEOUT = 5
ROOT = Path(__file__).resolve().parents[2]


def _worker_env(esp: FakeESP, database_url: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
    env.update(
        DJANGO_SETTINGS_MODULE="tests.settings",
        DATABASE_URL=database_url,
        STILLHERE_VAR_DIR=str(django_settings.VAR_DIR),
        EMAIL_PROVIDER="mailgun",
        EMAIL_API_KEY="key-test",
        EMAIL_API_URL=f"{esp.url}/v3",
        MAILGUN_SENDER_DOMAIN="mg.shop.example",
        CAMPAIGN_CHUNK_SIZE=str(CHUNK),
        CAMPAIGN_CLAIM_TIMEOUT=str(CLAIM_TIMEOUT),
        CAMPAIGN_RETRY_BACKOFF="0.2",
        LOG_LEVEL="WARNING",
    )
    if django_settings.REDIS_URL:
        env["REDIS_URL"] = django_settings.REDIS_URL
    return env


def _start_worker(env: dict, log: Path) -> subprocess.Popen:
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


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class _Database:
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

    def query(self, sql: str, campaign_id: int) -> list[tuple]:
        if self.file is not None:
            with sqlite3.connect(self.file, timeout=30) as db:
                return db.execute(sql.replace("%s", "?"), [campaign_id]).fetchall()
        with connection.cursor() as cursor:
            cursor.execute(sql, [campaign_id])
            return cursor.fetchall()


def _seed() -> list[str]:
    Contact.objects.bulk_create(
        [Contact(email=f"r{i}@example.com", status="subscribed") for i in range(RECIPIENTS)]
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
    return [f"r{i}@example.com" for i in range(RECIPIENTS)]


def _wait(predicate, timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return False


def test_sigkilled_worker_costs_at_most_one_chunk_and_skips_nobody(transactional_db):
    from config.celery import app

    app.control.purge()
    ratelimit.reset()
    esp = FakeESP(record="recipients").start()
    tmp = Path(tempfile.mkdtemp(prefix="stillhere-faults-"))
    db = _Database(tmp)
    workers: list[subprocess.Popen] = []
    try:
        expected = _seed()
        campaign = Campaign.objects.create(
            name="Blast", subject="We're still here", body="Hello {{ first_name }}"
        )
        campaign = services.campaign_start(campaign=campaign)  # queues 10 chunk tasks
        assert campaign.total_count == RECIPIENTS
        db.hand_over()
        env = _worker_env(esp, db.url)

        first = _start_worker(env, tmp / "worker1.log")
        workers.append(first)
        # Kill it in the middle of a chunk, well into the blast.
        assert _wait(lambda: esp.state.stats()["recipients"] >= 1250, timeout=60), (
            tmp / "worker1.log"
        ).read_text()
        first.send_signal(signal.SIGKILL)
        first.wait()
        at_kill = esp.state.stats()["recipients"]
        assert at_kill < RECIPIENTS

        second = _start_worker(env, tmp / "worker2.log")
        workers.append(second)

        def finished() -> bool:
            status = db.query("SELECT status FROM campaigns_campaign WHERE id = %s", campaign.pk)
            if status[0][0] == "sent":
                return True
            # Beat's job, done here on a short timer: hand stale claims back.
            sweep_stale_claims.delay()
            return False

        assert _wait(finished, timeout=80, step=2), (tmp / "worker2.log").read_text()

        stats = esp.state.stats()
        received = esp.state.recipients
        assert sorted(received) == sorted(expected), "someone was skipped or a stranger mailed"
        assert not any(email.startswith(("u", "p")) for email in received)
        duplicates = stats["duplicates"]
        assert duplicates <= CHUNK
        (sent, counted), *_ = db.query(
            "SELECT sent_count, duplicate_count FROM campaigns_campaign WHERE id = %s",
            campaign.pk,
        )
        assert sent == RECIPIENTS
        # The kill hit a chunk in flight: its rows were re-queued and re-sent, and every
        # real duplicate the provider saw is within what the campaign counted.
        assert 0 < counted <= CHUNK
        assert duplicates <= counted
        print(f"killed at {at_kill} sent; duplicates seen {duplicates}, counted {counted}")
        open_rows = db.query(
            "SELECT COUNT(*) FROM campaigns_delivery WHERE campaign_id = %s AND status <> 'sent'",
            campaign.pk,
        )
        assert open_rows == [(0,)]
    finally:
        for proc in workers:
            _stop(proc)
        esp.stop()
