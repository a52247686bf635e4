"""SIGKILL a worker three times in one 5,000-recipient blast; nobody may be skipped.

Real worker processes (`python -m celery -A config worker`) on the configured broker,
against the test database, sending through the fake Mailgun on loopback. After each
kill, a fresh worker and the sweeper carry on, re-sending at most the chunk each dead
worker held.
"""

from __future__ import annotations

import signal
import subprocess
import tempfile
from pathlib import Path

import pytest

from bench.fake_esp import FakeESP
from campaigns import ratelimit, services
from campaigns.models import Campaign
from campaigns.tasks import sweep_stale_claims
from tests.faults.workers import Database, mailgun_worker_env, seed_blast, start_worker, stop, wait

pytestmark = pytest.mark.worker

RECIPIENTS = 5000
CHUNK = 500
KILLS_AT = (1250, 2500, 3750)  # recipients the provider has seen when each worker dies
CLAIM_TIMEOUT = 5


def test_three_sigkilled_workers_cost_at_most_a_chunk_each_and_skip_nobody(
    transactional_db, fault_report
):
    from config.celery import app

    app.control.purge()
    ratelimit.reset()
    esp = FakeESP(record="recipients").start()
    tmp = Path(tempfile.mkdtemp(prefix="stillhere-faults-"))
    db = Database(tmp)
    workers: list[subprocess.Popen] = []
    survived, lost, duplicates = 0, None, None
    try:
        expected = seed_blast(RECIPIENTS)
        campaign = Campaign.objects.create(
            name="Blast", subject="We're still here", body="Hello {{ first_name }}"
        )
        campaign = services.campaign_start(campaign=campaign)  # queues 10 chunk tasks
        assert campaign.total_count == RECIPIENTS
        db.hand_over()
        env = mailgun_worker_env(
            esp.url,
            db.url,
            CAMPAIGN_CHUNK_SIZE=CHUNK,
            CAMPAIGN_CLAIM_TIMEOUT=CLAIM_TIMEOUT,
            CAMPAIGN_RETRY_BACKOFF=0.2,
        )

        # Kill a worker in the middle of a chunk, three times over the blast.
        kills = []
        for number, threshold in enumerate(KILLS_AT, start=1):
            log = tmp / f"worker{number}.log"
            worker = start_worker(env, log)
            workers.append(worker)

            def reached(threshold=threshold) -> bool:
                sweep_stale_claims.delay()  # beat's job, on a short timer
                return esp.state.stats()["recipients"] >= threshold

            assert wait(reached, timeout=90, step=1), log.read_text()
            worker.send_signal(signal.SIGKILL)
            worker.wait()
            kills.append(esp.state.stats()["recipients"])
        assert kills[-1] < RECIPIENTS + CHUNK * len(KILLS_AT)

        last = start_worker(env, tmp / "worker-last.log")
        workers.append(last)

        def finished() -> bool:
            status = db.query("SELECT status FROM campaigns_campaign WHERE id = %s", campaign.pk)
            if status[0][0] == "sent":
                return True
            # Beat's job, done here on a short timer: hand stale claims back.
            sweep_stale_claims.delay()
            return False

        assert wait(finished, timeout=120, step=2), (tmp / "worker-last.log").read_text()

        stats = esp.state.stats()
        received = esp.state.recipients
        assert sorted(received) == sorted(expected), "someone was skipped or a stranger mailed"
        assert not any(email.startswith(("u", "p")) for email in received)
        duplicates = stats["duplicates"]
        assert duplicates <= CHUNK * len(KILLS_AT)
        (sent, counted), *_ = db.query(
            "SELECT sent_count, duplicate_count FROM campaigns_campaign WHERE id = %s",
            campaign.pk,
        )
        assert sent == RECIPIENTS
        # Each kill hit a chunk in flight: its rows were re-queued and re-sent, and every
        # real duplicate the provider saw is within what the campaign counted.
        assert 0 < counted <= CHUNK * len(KILLS_AT)
        assert duplicates <= counted
        print(f"killed at {kills} sent; duplicates seen {duplicates}, counted {counted}")
        open_rows = db.query(
            "SELECT COUNT(*) FROM campaigns_delivery WHERE campaign_id = %s AND status <> 'sent'",
            campaign.pk,
        )
        assert open_rows == [(0,)]
        survived, lost = 1, len(set(expected) - set(received))
    finally:
        fault_report(
            fault="worker SIGKILL x3 in one blast",
            cases=1,
            survived=survived,
            lost=lost,
            duplicates=duplicates,
        )
        for proc in workers:
            stop(proc)
        esp.stop()
