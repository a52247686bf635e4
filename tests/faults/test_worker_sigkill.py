"""SIGKILL a worker in the middle of a 5,000-recipient blast; nobody may be skipped.

Real worker processes (`python -m celery -A config worker`) on the configured broker,
against the test database, sending through the fake Mailgun on loopback. After the
kill, a fresh worker and the sweeper must finish the job, re-sending at most the chunk
the dead worker held.
"""

from __future__ import annotations

import signal
import subprocess
import tempfile
from pathlib import Path

import pytest

from audience.models import Contact
from bench.fake_esp import FakeESP
from campaigns import ratelimit, services
from campaigns.models import Campaign, SenderSettings
from campaigns.tasks import sweep_stale_claims
from tests.faults.workers import Database, start_worker, stop, wait, worker_env

pytestmark = pytest.mark.worker

RECIPIENTS = 5000
CHUNK = 500
CLAIM_TIMEOUT = 5


def _worker_env(esp: FakeESP, database_url: str) -> dict:
    return worker_env(
        database_url,
        EMAIL_PROVIDER="mailgun",
        EMAIL_API_KEY="key-test",
        EMAIL_API_URL=f"{esp.url}/v3",
        MAILGUN_SENDER_DOMAIN="mg.shop.example",
        # The mounted tracking webhook must have its key, or the settings refuse to load.
        MAILGUN_WEBHOOK_SIGNING_KEY="test-signing-key",
        CAMPAIGN_CHUNK_SIZE=str(CHUNK),
        CAMPAIGN_CLAIM_TIMEOUT=str(CLAIM_TIMEOUT),
        CAMPAIGN_RETRY_BACKOFF="0.2",
    )


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


def test_sigkilled_worker_costs_at_most_one_chunk_and_skips_nobody(transactional_db, fault_report):
    from config.celery import app

    app.control.purge()
    ratelimit.reset()
    esp = FakeESP(record="recipients").start()
    tmp = Path(tempfile.mkdtemp(prefix="stillhere-faults-"))
    db = Database(tmp)
    workers: list[subprocess.Popen] = []
    survived, lost, duplicates = 0, None, None
    try:
        expected = _seed()
        campaign = Campaign.objects.create(
            name="Blast", subject="We're still here", body="Hello {{ first_name }}"
        )
        campaign = services.campaign_start(campaign=campaign)  # queues 10 chunk tasks
        assert campaign.total_count == RECIPIENTS
        db.hand_over()
        env = _worker_env(esp, db.url)

        first = start_worker(env, tmp / "worker1.log")
        workers.append(first)
        # Kill it in the middle of a chunk, well into the blast.
        assert wait(lambda: esp.state.stats()["recipients"] >= 1250, timeout=60), (
            tmp / "worker1.log"
        ).read_text()
        first.send_signal(signal.SIGKILL)
        first.wait()
        at_kill = esp.state.stats()["recipients"]
        assert at_kill < RECIPIENTS

        second = start_worker(env, tmp / "worker2.log")
        workers.append(second)

        def finished() -> bool:
            status = db.query("SELECT status FROM campaigns_campaign WHERE id = %s", campaign.pk)
            if status[0][0] == "sent":
                return True
            # Beat's job, done here on a short timer: hand stale claims back.
            sweep_stale_claims.delay()
            return False

        assert wait(finished, timeout=80, step=2), (tmp / "worker2.log").read_text()

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
        survived, lost = 1, len(set(expected) - set(received))
    finally:
        fault_report(
            fault="worker SIGKILL mid-blast",
            cases=1,
            survived=survived,
            lost=lost,
            duplicates=duplicates,
        )
        for proc in workers:
            stop(proc)
        esp.stop()
