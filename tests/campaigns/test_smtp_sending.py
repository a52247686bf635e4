"""Sending a campaign over SMTP, to a real SMTP server on loopback (aiosmtpd).

Each of CAMPAIGN_SEND_CONCURRENCY slots holds one SMTP connection, opened on its first
send and closed with the chunk; the server here counts the sessions it sees open at once
and answers DATA after a short delay, so that several in flight actually overlap.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import logging
import socket
import time
from collections import Counter
from urllib.parse import urlsplit

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP

from audience.models import Contact
from audience.tokens import read_token
from campaigns import ratelimit, sending, services
from campaigns.models import Campaign, Delivery
from tests.polling import wait_for

SENT = Campaign.Status.SENT


class Relay:
    """The SMTP server's handler: what it accepted, for whom, and over how many sessions.

    Every hook runs on the server's event loop (one thread); the test reads the figures
    once the sender is done."""

    def __init__(self, data_delay: float = 0.05):
        self.data_delay = data_delay
        self.received: Counter[str] = Counter()  # accepted messages per RCPT TO
        self.messages: list[email.message.Message] = []
        self.refuse_rcpt: dict[str, str] = {}  # address -> reply to its RCPT TO
        self.refuse_data = 0  # answer this many DATA commands with data_reply
        self.data_reply = "451 4.3.0 Temporary failure, try again later"
        self.max_sessions = 0  # 0: any number; past it a new session is told 421
        self.data_commands = 0
        self.open = 0
        self.peak = 0
        self.sessions = 0
        self.turned_away = 0

    def forget_sessions(self) -> None:
        self.open = self.peak = self.sessions = 0

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        reply = self.refuse_rcpt.get(address.lower())
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        self.data_commands += 1
        refuse = self.refuse_data > 0
        self.refuse_data -= refuse
        # Answer late, as a real relay does: the sends in flight overlap meanwhile.
        await asyncio.sleep(self.data_delay)
        if refuse:
            return self.data_reply
        self.received.update(address.lower() for address in envelope.rcpt_tos)
        self.messages.append(
            email.message_from_bytes(envelope.content, policy=email.policy.default)
        )
        return "250 2.0.0 Queued"


class _CountingSMTP(SMTP):
    """One SMTP session; tells the relay when it opens and closes."""

    def connection_made(self, transport) -> None:
        relay: Relay = self.event_handler
        relay.open += 1
        relay.sessions += 1
        relay.peak = max(relay.peak, relay.open)
        self._turned_away = bool(relay.max_sessions) and relay.open > relay.max_sessions
        if self._turned_away:
            # What Postfix says past smtpd_client_connection_count_limit.
            relay.turned_away += 1
            transport.write(b"421 4.7.0 Too many connections, try again later\r\n")
            transport.close()
            return
        super().connection_made(transport)

    def connection_lost(self, error) -> None:
        self.event_handler.open -= 1
        if not self._turned_away:
            super().connection_lost(error)


class _RelayController(Controller):
    def factory(self):
        return _CountingSMTP(self.handler, **self.SMTP_kwargs)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def relay(settings):
    """A real SMTP server on loopback, and Django's SMTP backend pointed at it (no TLS,
    no login), as EMAIL_PROVIDER=smtp configures it."""
    handler = Relay()
    # aiosmtpd logs every command at INFO: a failing test's report would be all of it.
    server_log = logging.getLogger("mail.log")
    level = server_log.level
    server_log.setLevel(logging.WARNING)
    controller = _RelayController(handler, hostname="127.0.0.1", port=_free_port())
    controller.start()
    # start() opens a session of its own to see the server answer: not the sender's.
    assert wait_for(lambda: handler.open == 0, timeout=5)
    handler.forget_sessions()
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST = "127.0.0.1"
    settings.EMAIL_PORT = controller.port
    settings.EMAIL_HOST_USER = ""
    settings.EMAIL_HOST_PASSWORD = ""
    settings.EMAIL_USE_TLS = False
    settings.EMAIL_USE_SSL = False
    settings.EMAIL_TIMEOUT = 5
    settings.ANYMAIL = {}
    settings.CAMPAIGN_RETRY_BACKOFF = 0.2
    settings.CAMPAIGN_STATUS_CHECK_SECONDS = 0
    yield handler
    controller.stop()
    server_log.setLevel(level)


@pytest.fixture(autouse=True)
def _no_hold():
    # A hold (campaigns.ratelimit) outlives a test in Redis or the file: start clean.
    ratelimit.reset()
    yield
    ratelimit.reset()


def _contacts(n: int, *, extra: tuple[str, ...] = ()) -> list[str]:
    """`n` subscribed contacts (plus `extra` ones), and a few who must get nothing."""
    emails = [f"r{i:02d}@example.com" for i in range(n)] + list(extra)
    Contact.objects.bulk_create(
        [Contact(email=address, status=Contact.Status.SUBSCRIBED) for address in emails]
        + [
            Contact(email=f"gone{i}@example.com", status=Contact.Status.UNSUBSCRIBED)
            for i in range(3)
        ]
        + [Contact(email="waiting@example.com", status=Contact.Status.PENDING)]
        + [Contact(email="bounced@example.com", status=Contact.Status.BOUNCED)]
    )
    return emails


def _start() -> Campaign:
    campaign = Campaign.objects.create(
        name="We're still here",
        subject="Hi {{ first_name|default:'friend' }}, we're still here",
        body="Hello **{{ first_name|default:'friend' }}**, order at https://shop.example.",
    )
    return services.campaign_start(campaign=campaign)


def _send_every_chunk(campaign: Campaign, relay: Relay) -> list[int]:
    """Send each open chunk once, as a worker would; the SMTP sessions each one opened."""
    opened = []
    for number in sending.open_chunks(campaign.pk):
        before = relay.sessions
        sending.chunk_send(campaign_id=campaign.pk, chunk=number)
        opened.append(relay.sessions - before)
        # The chunk's connections are closed with it, none left hanging on the server.
        assert wait_for(lambda: relay.open == 0, timeout=5)
    return opened


def _unsubscribes(header: str) -> Contact | None:
    path = urlsplit(header.strip("<>")).path
    return read_token("unsubscribe", path.rstrip("/").rsplit("/", 1)[-1])


def _deliveries(campaign: Campaign) -> dict[str, Delivery]:
    rows = Delivery.objects.filter(campaign=campaign).select_related("contact")
    return {row.contact.email: row for row in rows}


def test_smtp_sends_everyone_once_over_at_most_one_connection_per_slot(relay, sender, settings):
    settings.CAMPAIGN_SEND_CONCURRENCY = 4
    settings.CAMPAIGN_CHUNK_SIZE = 30
    emails = _contacts(60)
    campaign = _start()
    assert campaign.total_count == 60

    opened = _send_every_chunk(campaign, relay)

    assert relay.received == Counter(emails)  # each subscriber once, nobody else
    assert 1 < relay.peak <= 4  # sends overlapped, never more sessions than slots
    assert len(opened) == 2
    assert all(n <= 4 for n in opened), opened  # connections reused within a chunk
    campaign.refresh_from_db()
    assert campaign.status == SENT
    assert (campaign.sent_count, campaign.failed_count, campaign.duplicate_count) == (60, 0, 0)
    deliveries = _deliveries(campaign)
    assert sorted(deliveries) == sorted(emails)
    assert {row.status for row in deliveries.values()} == {Delivery.Status.SENT}
    # What went over the wire is the campaign's message, and each recipient's one-click
    # unsubscribe (RFC 8058) unsubscribes that recipient.
    for message in relay.messages:
        assert message["Subject"] == "Hi friend, we're still here"
        assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert _unsubscribes(message["List-Unsubscribe"]).email == message["To"]


def test_smtp_refusing_one_recipient_fails_only_that_delivery(relay, sender, settings):
    settings.CAMPAIGN_SEND_CONCURRENCY = 4
    relay.refuse_rcpt["bad@example.com"] = "550 5.1.1 <bad@example.com>: No such user here"
    emails = _contacts(19, extra=("bad@example.com",))
    campaign = _start()

    _send_every_chunk(campaign, relay)

    good = [address for address in emails if address != "bad@example.com"]
    assert relay.received == Counter(good)
    campaign.refresh_from_db()
    assert campaign.status == SENT
    assert (campaign.sent_count, campaign.failed_count) == (19, 1)
    deliveries = _deliveries(campaign)
    bad = deliveries.pop("bad@example.com")
    assert bad.status == Delivery.Status.FAILED
    assert "550" in bad.error
    assert "No such user here" in bad.error  # the server's own reason, for the owner
    assert {row.status for row in deliveries.values()} == {Delivery.Status.SENT}


@pytest.mark.worker
@pytest.mark.parametrize(
    "reply",
    [
        "451 4.3.0 Temporary failure, try again later",
        # 421: the server also closes the session (smtplib drops it at once).
        "421 4.7.0 Server busy, closing connection",
    ],
    ids=["451", "421"],
)
def test_smtp_temporary_failure_is_retried_and_nobody_is_lost_or_failed(
    celery_worker, relay, sender, settings, reply
):
    settings.CAMPAIGN_SEND_CONCURRENCY = 4
    settings.CAMPAIGN_CHUNK_SIZE = 10
    relay.refuse_data = 3
    relay.data_reply = reply
    emails = _contacts(20)
    started = time.monotonic()
    campaign = _start()

    assert wait_for(
        lambda: Campaign.objects.filter(pk=campaign.pk, status=SENT).exists(), timeout=20
    ), Campaign.objects.values("status", "status_reason").get(pk=campaign.pk)

    assert relay.refuse_data == 0  # the server did turn the first three away
    # A 4xx to DATA is an answer, "not taken": the sends in flight beside it that were
    # taken are recorded, the rest go again, so nobody gets it twice or is counted so.
    assert relay.received == Counter(emails)
    assert relay.data_commands == 20 + 3
    campaign.refresh_from_db()
    assert (campaign.sent_count, campaign.failed_count, campaign.duplicate_count) == (20, 0, 0)
    assert set(Delivery.objects.filter(campaign=campaign).values_list("status", flat=True)) == {
        Delivery.Status.SENT
    }
    assert time.monotonic() - started < 10


@pytest.mark.worker
def test_smtp_relay_capping_connections_below_the_slots_loses_nobody(
    celery_worker, relay, sender, settings
):
    """A relay that takes fewer connections than the sender has slots (Postfix's
    smtpd_client_connection_count_limit) turns the extra ones away with a 421: a
    temporary trouble, retried, not a failed recipient."""
    settings.CAMPAIGN_SEND_CONCURRENCY = 4
    settings.CAMPAIGN_CHUNK_SIZE = 10
    relay.max_sessions = 2
    emails = _contacts(20)
    campaign = _start()

    assert wait_for(
        lambda: Campaign.objects.filter(pk=campaign.pk, status=SENT).exists(), timeout=20
    ), Campaign.objects.values("status", "status_reason").get(pk=campaign.pk)

    assert relay.turned_away > 0
    assert relay.received == Counter(emails)
    campaign.refresh_from_db()
    assert (campaign.sent_count, campaign.failed_count, campaign.duplicate_count) == (20, 0, 0)


def test_smtp_temporary_refusal_of_a_recipient_is_retried_not_failed(relay, sender, settings):
    """Greylisting, or a relay's "452 too many recipients" / "450 rate limited", comes
    as a 4xx to RCPT TO (RFC 5321 §4.2.1: transient negative): try again later, do not
    mark the contact failed for good."""
    settings.CAMPAIGN_SEND_CONCURRENCY = 4
    relay.refuse_rcpt["grey@example.com"] = "450 4.2.0 <grey@example.com>: Greylisted, retry later"
    emails = _contacts(9, extra=("grey@example.com",))
    campaign = _start()

    with pytest.raises(sending.TransientSendError):
        sending.chunk_send(campaign_id=campaign.pk, chunk=0)
    grey = Delivery.objects.get(campaign=campaign, contact__email="grey@example.com")
    assert grey.status == Delivery.Status.QUEUED
    relay.refuse_rcpt.clear()  # the greylist lets it through on the next try
    ratelimit.reset()
    sending.chunk_send(campaign_id=campaign.pk, chunk=0)

    assert relay.received == Counter(emails)
    campaign.refresh_from_db()
    assert campaign.status == SENT
    assert (campaign.sent_count, campaign.failed_count) == (10, 0)
