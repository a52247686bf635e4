"""Concurrent sending (CAMPAIGN_SEND_CONCURRENCY) keeps the sender's promises, against the
fake Mailgun answering with a real provider's latency, with real Celery workers.

Several sends in flight per chunk must still give: everyone once, counters exact, a
pause seen within CAMPAIGN_STATUS_CHECK_SECONDS (only the sends in flight finish after),
the global rate limit across every worker and slot, and a 429 in any slot holding every
slot of every worker off for the Retry-After.
"""

from __future__ import annotations

import math
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.db import connection

from bench.fake_esp import FakeESP
from campaigns import ratelimit, services
from campaigns.models import Campaign, Delivery, DeliveryChunk, SenderSettings
from tests.campaign_runs import recipients as _recipients
from tests.campaign_runs import start as _start
from tests.campaign_runs import status as _status
from tests.faults.workers import Database, mailgun_worker_env, start_worker, stop
from tests.polling import wait_for, while_locked

pytestmark = pytest.mark.worker

# Worker processes share the test database and the rate-limit state with this process.
needs_postgresql_and_redis = pytest.mark.skipif(
    connection.vendor != "postgresql" or not django_settings.REDIS_URL,
    reason="several worker processes on one database and one rate limit need PostgreSQL "
    "and Redis (CI's PostgreSQL leg runs these); SQLite's in-memory test database lives "
    "in this process only",
)

SENT = Campaign.Status.SENT


@pytest.fixture
def sender(transactional_db):
    ratelimit.reset()
    SenderSettings.objects.update_or_create(
        pk=1,
        defaults={
            "from_name": "Stillhere Shop",
            "from_email": "news@shop.example",
            "postal_address": "Stillhere Shop\n1 Harbour Road\nPortsmouth",
            "shop_url": "https://shop.example",
        },
    )
    yield SenderSettings.load()
    ratelimit.reset()


def _everyone_once(esp: FakeESP, emails: list[str]) -> None:
    assert esp.state.recipients == Counter(dict.fromkeys(emails, 1)), (
        "someone was skipped, mailed twice, or a stranger was mailed"
    )


def _exact_counters(campaign: Campaign, n: int) -> None:
    campaign.refresh_from_db()
    assert campaign.status == SENT
    assert (campaign.sent_count, campaign.failed_count, campaign.duplicate_count) == (n, 0, 0)
    rows = Counter(Delivery.objects.filter(campaign=campaign).values_list("status", flat=True))
    assert rows == {Delivery.Status.SENT: n}


# --- one worker, in a thread of this process (tests/conftest.py's celery_worker) ---------


def test_a_worker_keeps_exactly_its_concurrency_in_flight(celery_worker, esp, sender, settings):
    """Eight slots really send at once (and never a ninth): a sequential sender needs
    400 x 0.1 s = 40 s for what eight slots do in about 5."""
    concurrency, latency, n = 8, 0.1, 400
    settings.CAMPAIGN_SEND_CONCURRENCY = concurrency
    esp.state.control({"latency_ms": latency * 1000})
    emails = _recipients(n)
    started = time.monotonic()
    campaign = _start()
    assert wait_for(lambda: _status(campaign) == SENT, timeout=30)
    elapsed = time.monotonic() - started

    assert esp.state.stats()["peak_in_flight"] == concurrency
    assert elapsed < n * latency / 3, f"{elapsed:.1f} s: the sends did not overlap"
    _everyone_once(esp, emails)
    _exact_counters(campaign, n)
    print(f"{n} messages through {concurrency} slots at {latency * 1000:.0f} ms: {elapsed:.2f} s")


def test_batch_calls_of_one_chunk_go_out_concurrently(celery_worker, esp, sender, settings):
    """In batch mode a slot carries a batch API call: a 500-recipient chunk in batches
    of 50 is ten calls, four of them in flight at once."""
    settings.CAMPAIGN_SEND_CONCURRENCY = 4
    settings.CAMPAIGN_CHUNK_SIZE = 500
    settings.CAMPAIGN_BATCH_SIZE = 50
    esp.state.control({"latency_ms": 100})
    emails = _recipients(500)
    campaign = _start(send_mode=Campaign.SendMode.BATCH)
    assert wait_for(lambda: _status(campaign) == SENT, timeout=30)

    stats = esp.state.stats()
    assert stats["requests"] == 10
    assert stats["peak_in_flight"] == 4
    _everyone_once(esp, emails)
    _exact_counters(campaign, 500)


def test_a_provider_that_takes_fewer_at_once_gets_fewer_at_once(
    celery_worker, esp, sender, settings
):
    """Sixteen slots against a provider that answers 429 (Retry-After: 1) past 4 sends in
    flight: the worker halves its window at each 429 and settles just under the cap,
    so the campaign is sent in seconds with a few dozen 429s. Holding all 16 slots
    would draw ~12 refusals and a one-second hold per round of 4 sends: hundreds of
    429s and over a minute for 300 messages."""
    n = 300
    settings.CAMPAIGN_SEND_CONCURRENCY = 16
    settings.CAMPAIGN_CHUNK_SIZE = 100
    settings.CAMPAIGN_RETRY_BACKOFF = 0.2
    settings.CAMPAIGN_MAX_RETRIES = 100
    esp.state.control({"latency_ms": 40, "max_in_flight": 4})
    emails = _recipients(n)
    started = time.monotonic()
    campaign = _start()
    assert wait_for(lambda: _status(campaign) == SENT, timeout=60)
    elapsed = time.monotonic() - started

    stats = esp.state.stats()
    assert 0 < stats["over_capacity"] <= 60, stats
    assert elapsed < 30, f"{elapsed:.1f} s for {n} messages"
    _everyone_once(esp, emails)
    _exact_counters(campaign, n)
    print(f"{stats['over_capacity']} 429s, {n} sent in {elapsed:.1f} s")


def test_the_send_window_halves_at_a_429_and_grows_back_below_it():
    from campaigns.sending import _Window

    fresh = _Window()
    fresh.grow(16)  # a process's first send, before anything asked for its size
    assert fresh.current(16) == 16

    window = _Window()
    assert window.current(16) == 16
    window.shrink(16)
    assert (window.current(16), window.refused_at) == (8, 16)
    for _ in range(8):  # a window's worth of sends that went through: one more
        window.grow(16)
    assert window.current(16) == 9
    for _ in range(9 + 10 + 11 + 12 + 13 + 14):
        window.grow(16)
    assert window.current(16) == 15  # just below where the provider refused
    for _ in range(15 * _Window.PROBE - 1):
        window.grow(16)
    assert window.current(16) == 15  # probing past it only now and then
    window.grow(16)
    assert window.current(16) == 16
    window.reset()
    assert window.current(8) == 8


def test_a_pause_stops_a_chunk_in_flight_within_the_status_check(
    celery_worker, esp, sender, settings
):
    """Paused mid-chunk: within CAMPAIGN_STATUS_CHECK_SECONDS the chunk hands out no new
    sends; only those in flight, and those handed out before it looked, arrive after.
    What the provider got is exactly what the campaign recorded, and resume sends the
    rest, everyone once."""
    concurrency, latency, check, n = 8, 0.1, 0.2, 500
    settings.CAMPAIGN_SEND_CONCURRENCY = concurrency
    settings.CAMPAIGN_CHUNK_SIZE = n
    settings.CAMPAIGN_STATUS_CHECK_SECONDS = check
    esp.state.control({"latency_ms": latency * 1000})
    emails = _recipients(n)
    campaign = _start()
    assert wait_for(lambda: esp.state.stats()["recipients"] >= 50, timeout=20, interval=0.01)

    # Committed on return (again while SQLite says the worker's write has the table).
    while_locked(lambda: services.campaign_pause(campaign=campaign, actor="owner"))
    paused_at = time.monotonic()
    at_pause = esp.state.stats()["recipients"]
    chunks = DeliveryChunk.objects.filter(campaign=campaign)
    # The chunk gives its claim back once its sends in flight are in and recorded.
    assert wait_for(lambda: not chunks.filter(status="claimed").exists(), timeout=5)
    stopped_after = time.monotonic() - paused_at
    time.sleep(0.5)  # proof of absence: nothing more arrives
    received = esp.state.stats()
    rate = concurrency / latency  # what the slots send per second
    late = received["recipients"] - at_pause
    # In flight at the pause, plus what the chunk handed out before it next looked.
    assert late <= concurrency + math.ceil(check * rate) + 2, f"{late} sends after the pause"
    assert stopped_after < check + 2 * latency + 1, f"stopped {stopped_after:.2f} s after"
    assert received["recipients"] < n
    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.PAUSED
    sent_rows = Delivery.objects.filter(campaign=campaign, status=Delivery.Status.SENT)
    assert campaign.sent_count == sent_rows.count() == received["recipients"]
    assert set(sent_rows.values_list("contact__email", flat=True)) == set(esp.state.recipients)
    assert received["duplicates"] == 0

    services.campaign_resume(campaign=campaign, actor="owner")
    assert wait_for(lambda: _status(campaign) == SENT, timeout=30)
    _everyone_once(esp, emails)
    _exact_counters(campaign, n)
    print(f"paused at {at_pause} received; {late} more arrived; stopped in {stopped_after:.2f} s")


# --- two worker processes ----------------------------------------------------------------


class _Workers:
    """Real worker processes (`python -m celery -A config worker`) on the test database
    and this test's Redis, sending to `esp` with CAMPAIGN_* settings from `env`."""

    def __init__(self, esp: FakeESP, count: int, **env):
        from config.celery import app

        self.app = app
        app.control.purge()
        self.tmp = Path(tempfile.mkdtemp(prefix="stillhere-concurrency-"))
        environment = mailgun_worker_env(esp.url, Database(self.tmp).url, **env)
        self.procs: list[subprocess.Popen] = [
            start_worker(environment, self.tmp / f"worker{i}.log") for i in range(count)
        ]
        # Both take part from the first chunk on: wait until each answers a ping.
        ready = wait_for(lambda: len(app.control.ping(timeout=0.5)) >= count, timeout=40)
        assert ready, self.logs()

    def logs(self) -> str:
        return "\n".join(path.read_text() for path in sorted(self.tmp.glob("*.log")))

    def stop(self) -> None:
        for proc in self.procs:
            stop(proc)


@pytest.fixture
def workers(settings):
    started: list[_Workers] = []

    def start(esp: FakeESP, count: int, **env) -> _Workers:
        # This process numbers the chunks (campaign_start): it reads the same settings.
        for name, value in env.items():
            setattr(settings, name, value)
        started.append(_Workers(esp, count, **env))
        return started[-1]

    yield start
    for group in started:
        group.stop()


@pytest.fixture
def latent_esp():
    server = FakeESP(record="recipients").start()
    yield server
    server.stop()


@needs_postgresql_and_redis
def test_the_rate_limit_holds_across_every_slot_of_every_worker(sender, latent_esp, workers):
    """Two workers with eight slots each, 40 messages/s allowed: every message is
    reserved before it is handed to a slot, so in any second at most one second's
    burst (ratelimit.SECOND_BURST: 40 + 1 at once) plus 40 go out, and overall 40/s."""
    esp, rate, n = latent_esp, 40, 400
    esp.state.control({"latency_ms": 30})
    SenderSettings.objects.filter(pk=1).update(rate_per_second=rate)
    emails = _recipients(n)
    group = workers(esp, 2, CAMPAIGN_SEND_CONCURRENCY=8, CAMPAIGN_CHUNK_SIZE=100)
    campaign = _start()
    assert wait_for(lambda: _status(campaign) == SENT, timeout=30), group.logs()

    times = sorted(at for at, status in esp.state.log if status == 200)
    assert len(times) == n
    burst = int(rate * ratelimit.SECOND_BURST) + 1  # the GCRA lets rate x burst + 1 go at once
    # A send starts up to ~50 ms after its reserved time (a thread waking, a busy core);
    # two such late starts bunched together make at most this many more in a second.
    noise = 2
    busiest = max(sum(1 for t in times[i:] if t < start + 1.0) for i, start in enumerate(times))
    assert busiest <= burst + rate + noise, f"{busiest} sends in one second"
    span = times[-1] - times[0]
    overall = (n - burst) / span
    assert overall <= rate * 1.05, f"{overall:.1f}/s after the burst"
    _everyone_once(esp, emails)
    _exact_counters(campaign, n)
    print(f"busiest second {busiest}, {overall:.1f}/s after the burst over {span:.1f} s")


@needs_postgresql_and_redis
@pytest.mark.parametrize(
    ("cap", "latency_ms", "n"),
    [(5, 30, 100), (10, 150, 200)],
    ids=["most-refused", "only-both-together-refused"],
)
def test_a_429_storm_holds_every_slot_of_every_worker_for_the_retry_after(
    sender, latent_esp, workers, cap, latency_ms, n
):
    """Two workers x 8 slots against a provider that answers 429 + Retry-After: 1 past
    `cap` sends in flight: past 5, most concurrent sends are refused (each worker alone
    is over it); past 10, only both workers together are. Nobody may be lost or mailed
    twice (a 429 is not a delivery), nobody is failed, the counters are exact.

    The assertion that the hold reaches every slot: after any 429, from the moment the
    hold has had time to spread (hold_headway(): the sends in flight answer, the chunk
    records them and sets the hold, and every other process reads the hold at most
    ratelimit.HOLD_CHECK_SECONDS late) until the Retry-After is over, NO send arrives
    from anyone. Each way of ignoring it breaks that silence: a chunk that kept handing
    out sends after its 429; a retry after its own 0.2 s backoff instead of the
    Retry-After; and the other worker going on alone. The cap of 10 makes the last one
    visible: one worker's 8 slots fit under it, so a worker ignoring the other's hold
    sends successfully through the silence instead of being stopped by its own 429s.
    (A count of 429s would not tell: a sender ignoring the hold gets fewer of them.)
    """
    esp, retry_after = latent_esp, 1.0
    esp.state.control({"latency_ms": latency_ms, "max_in_flight": cap})
    emails = _recipients(n)
    group = workers(
        esp,
        2,
        CAMPAIGN_SEND_CONCURRENCY=8,
        # More chunks than workers: a worker holding a chunk's delayed retry (Celery
        # keeps a countdown task on the worker that fetched it) still has others to send.
        CAMPAIGN_CHUNK_SIZE=25,
        CAMPAIGN_RETRY_BACKOFF=0.2,
        CAMPAIGN_MAX_RETRIES=100,
    )
    started = time.monotonic()
    campaign = _start()
    finished = wait_for(lambda: _status(campaign) == SENT, timeout=40)
    assert finished, (esp.state.stats(), group.logs()[-3000:])
    elapsed = time.monotonic() - started

    stats = esp.state.stats()
    assert stats["over_capacity"] > 0, "no storm: the provider never said 429"
    _everyone_once(esp, emails)
    _exact_counters(campaign, n)
    campaign.refresh_from_db()
    assert campaign.provider_pause_count == 0  # a storm with mail getting through

    # When each request arrived: a 429 for too many in flight is logged on arrival, an
    # accepted send once its latency has passed.
    latency = latency_ms / 1000
    arrivals = sorted(at if status == 429 else at - latency for at, status in esp.state.log)
    refusals = [at for at, status in esp.state.log if status == 429]
    headway = hold_headway(latency)
    broke = [
        at - refused
        for refused in refusals
        for at in arrivals
        if refused + headway < at < refused + retry_after - 0.05
    ]
    assert not broke, (
        f"{len(broke)} sends arrived during a Retry-After, e.g. {broke[0]:.2f} s after a 429"
    )
    print(
        f"{stats['over_capacity']} 429s, peak {stats['peak_in_flight']} in flight, "
        f"{len(arrivals)} requests, sent in {elapsed:.1f} s"
    )


def hold_headway(latency: float) -> float:
    """Seconds after a 429 by which no slot of any worker hands out a send: the chunk
    that got it waits for its sends in flight (`latency`), records them and sets the hold
    (a transaction: 0.2 s leaves room for a busy 2-core machine), and every other process
    trusts its last reading of the hold for ratelimit.HOLD_CHECK_SECONDS at most."""
    return latency + 0.2 + ratelimit.HOLD_CHECK_SECONDS + 0.05
