"""SIGKILL a worker twice while 16 sends are in flight; nobody may be skipped.

CAMPAIGN_SEND_CONCURRENCY=16 against the fake Mailgun answering in 40 ± 20 ms, as a
real provider does: each kill lands with many sends in flight in the dead worker's
threads. The chunk records its rows only once its sends are in, so a kill costs at most
the chunk that worker held: the sweeper re-queues it, a fresh worker sends it again
and counts those sends as possible duplicates.
"""

from __future__ import annotations

import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from bench.fake_esp import FakeESP
from campaigns import ratelimit, services
from campaigns.models import Campaign
from campaigns.tasks import sweep_stale_claims
from tests.faults.workers import Database, mailgun_worker_env, seed_blast, start_worker, stop, wait

pytestmark = pytest.mark.worker

RECIPIENTS = 3000
CHUNK = 500
CONCURRENCY = 16
KILLS_AT = (800, 1900)  # recipients the provider has seen when each worker dies
CLAIM_TIMEOUT = 5


def test_workers_sigkilled_with_sends_in_flight_cost_at_most_a_chunk_each(
    transactional_db, fault_report, settings
):
    from config.celery import app

    settings.CAMPAIGN_CHUNK_SIZE = CHUNK  # this process numbers the chunks
    app.control.purge()
    ratelimit.reset()
    esp = FakeESP(record="recipients", latency_ms=40, jitter_ms=20).start()
    tmp = Path(tempfile.mkdtemp(prefix="stillhere-faults-"))
    db = Database(tmp)
    workers: list[subprocess.Popen] = []
    survived, lost, duplicates = 0, None, None
    swept = {"at": 0.0}

    def sweep() -> None:
        # Beat's job, done here on a short timer: hand stale claims back.
        if time.monotonic() - swept["at"] >= 1:
            swept["at"] = time.monotonic()
            sweep_stale_claims.delay()

    try:
        expected = seed_blast(RECIPIENTS)
        campaign = Campaign.objects.create(
            name="Blast", subject="We're still here", body="Hello {{ first_name }}"
        )
        campaign = services.campaign_start(campaign=campaign)  # queues 6 chunk tasks
        assert campaign.total_count == RECIPIENTS
        db.hand_over()
        env = mailgun_worker_env(
            esp.url,
            db.url,
            CAMPAIGN_CHUNK_SIZE=CHUNK,
            CAMPAIGN_SEND_CONCURRENCY=CONCURRENCY,
            CAMPAIGN_CLAIM_TIMEOUT=CLAIM_TIMEOUT,
            CAMPAIGN_RETRY_BACKOFF=0.2,
        )

        # Kill a worker while many of its sends are in flight, twice over the blast.
        kills = []
        for number, threshold in enumerate(KILLS_AT, start=1):
            log = tmp / f"worker{number}.log"
            worker = start_worker(env, log)
            workers.append(worker)

            def in_the_thick_of_it(threshold=threshold) -> bool:
                sweep()
                return (
                    esp.state.stats()["recipients"] >= threshold
                    and esp.state.in_flight >= CONCURRENCY // 2
                )

            assert wait(in_the_thick_of_it, timeout=40, step=0.005), log.read_text()
            in_flight = esp.state.in_flight
            worker.send_signal(signal.SIGKILL)
            worker.wait()
            kills.append((esp.state.stats()["recipients"], in_flight))
        # Concurrency was really happening when each worker died.
        assert all(in_flight > 1 for _, in_flight in kills), kills
        assert 1 < esp.state.stats()["peak_in_flight"] <= CONCURRENCY

        last = start_worker(env, tmp / "worker-last.log")
        workers.append(last)

        def finished() -> bool:
            status = db.query("SELECT status FROM campaigns_campaign WHERE id = %s", campaign.pk)
            if status[0][0] == "sent":
                return True
            sweep()
            return False

        assert wait(finished, timeout=60, step=0.2), (tmp / "worker-last.log").read_text()

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
        print(f"killed at (sent, in flight) {kills}; duplicates {duplicates}, counted {counted}")
        open_rows = db.query(
            "SELECT COUNT(*) FROM campaigns_delivery WHERE campaign_id = %s AND status <> 'sent'",
            campaign.pk,
        )
        assert open_rows == [(0,)]
        survived, lost = 1, len(set(expected) - set(received))
    finally:
        fault_report(
            fault=f"worker SIGKILL x2 with {CONCURRENCY} sends in flight",
            cases=1,
            survived=survived,
            lost=lost,
            duplicates=duplicates,
        )
        for proc in workers:
            stop(proc)
        esp.stop()
