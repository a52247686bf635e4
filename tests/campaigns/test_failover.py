"""Provider failover: two fake providers on loopback (bench/fake_esp.py, each speaking its
real API), a real Celery worker, and a primary that dies in the middle of a blast.

Every subscribed recipient gets exactly one message, except at most the chunks in flight
at the switch, and those are counted; the campaign finishes through the secondary; the
switch shows on the campaign page; batch mode goes on batching through a secondary that
batches and falls back to one call per message through one that does not; confirmation
mail falls over too; without a failover nothing changes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections import Counter

import pytest

from audience import services as audience_services
from audience.models import Contact
from audience.tasks import send_due_confirmations
from bench.fake_esp import FakeESP
from campaigns import providers, ratelimit
from campaigns.models import Campaign, CampaignEvent, Delivery, SenderSettings
from config import providers as config_providers
from tests.campaign_runs import recipients as _recipients
from tests.campaign_runs import start as _start
from tests.campaign_runs import status as _status
from tests.factories import SignupFormFactory
from tests.polling import wait_for, while_locked
from tests.webhooks import mount_tracking

pytestmark = pytest.mark.worker

SENT = Campaign.Status.SENT
MAILGUN = "anymail.backends.mailgun.EmailBackend"
POSTMARK = "anymail.backends.postmark.EmailBackend"
WEBHOOK_SECRET = "stillhere:failover-webhook-secret"
SIGNING_KEY = "failover-test-signing-key"


@pytest.fixture
def shop(transactional_db):
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


@pytest.fixture
def primary(settings):
    """The primary: a fake Mailgun, configured as EMAIL_PROVIDER=mailgun configures it."""
    server = FakeESP().start()
    settings.EMAIL_PROVIDER = "mailgun"
    settings.EMAIL_BACKEND = MAILGUN
    settings.ANYMAIL = {
        "MAILGUN_API_KEY": "key-primary",
        "MAILGUN_API_URL": f"{server.url}/v3",
        "MAILGUN_SENDER_DOMAIN": "mg.shop.example",
        "REQUESTS_TIMEOUT": 1,
        "MAILGUN_WEBHOOK_SIGNING_KEY": SIGNING_KEY,
        "WEBHOOK_SECRET": WEBHOOK_SECRET,
    }
    settings.CAMPAIGN_RETRY_BACKOFF = 0.2
    settings.CAMPAIGN_STATUS_CHECK_SECONDS = 0
    yield server
    server.stop()


def _failover(settings, name: str, server: FakeESP) -> None:
    """EMAIL_FAILOVER_PROVIDER=`name` with its own credentials, as settings.py builds it
    from the EMAIL_FAILOVER_* variables (tests/test_provider_settings.py checks that)."""
    settings.EMAIL_FAILOVER_PROVIDER = name
    if name == "postmark":
        settings.EMAIL_FAILOVER_BACKEND = POSTMARK
        options = {"server_token": "pm-failover", "api_url": f"{server.url}/"}
    else:
        settings.EMAIL_FAILOVER_BACKEND = MAILGUN
        options = {
            "api_key": "key-failover",
            "api_url": f"{server.url}/v3/",
            "sender_domain": "mg2.shop.example",
        }
    settings.EMAIL_FAILOVER_OPTIONS = {**options, "requests_timeout": 1}
    settings.EMAIL_FAILOVER_AFTER_CHUNKS = 2
    config_providers.forget_primary_failure()


@pytest.fixture
def postmark_failover(settings):
    server = FakeESP().start()
    _failover(settings, "postmark", server)
    yield server
    server.stop()
    config_providers.forget_primary_failure()


@pytest.fixture
def mailgun_failover(settings):
    server = FakeESP().start()
    _failover(settings, "mailgun", server)
    yield server
    server.stop()


def _finished(campaign: Campaign, timeout: float) -> Campaign:
    done = wait_for(lambda: _status(campaign) == SENT, timeout=timeout, interval=0.2)
    campaign.refresh_from_db()
    assert done, (campaign.status, campaign.status_reason, campaign.sent_count)
    return campaign


def _received(*servers: FakeESP) -> Counter:
    total: Counter = Counter()
    for server in servers:
        total.update(server.state.recipients)
    return total


def _assert_once_but_counted(campaign: Campaign, emails: list[str], received: Counter, chunk):
    """Everyone got the campaign; nobody else did; what anyone got twice is at most the
    chunks in flight at the switch, and every such message is in duplicate_count."""
    assert set(received) == set(emails), "someone was skipped, or a stranger was mailed"
    extra = sum(received.values()) - len(emails)
    assert extra <= campaign.duplicate_count, (extra, campaign.duplicate_count)
    assert campaign.duplicate_count <= 2 * chunk
    assert (campaign.sent_count, campaign.failed_count) == (len(emails), 0)
    rows = Counter(Delivery.objects.filter(campaign=campaign).values_list("status", flat=True))
    assert rows == {Delivery.Status.SENT: len(emails)}


# --- a blast whose primary dies mid-way ------------------------------------------------------


@pytest.mark.parametrize(
    "death",
    [{"status": 500}, {"timeout": 1.5}],
    ids=["answers-500", "times-out"],
)
def test_a_blast_finishes_through_the_failover_when_the_primary_dies_mid_way(
    celery_worker, shop, primary, postmark_failover, settings, admin_client, death
):
    """5,000 recipients, the primary (Mailgun) dies after 1,500 of them, answering 500s
    or timing out: two failed chunks later the campaign switches to the secondary
    (Postmark), once, and finishes SENT through it."""
    n, chunk = 5000, 500
    settings.CAMPAIGN_CHUNK_SIZE = chunk
    settings.CAMPAIGN_SEND_CONCURRENCY = 16
    primary.state.control({"fail_after": 1500, **death})
    emails = _recipients(n)
    campaign = _finished(_start(), timeout=240)

    assert campaign.provider == Campaign.Provider.SECONDARY
    assert campaign.provider_switched_at is not None
    assert "mailgun turned 2 chunks in a row away" in campaign.provider_switch_reason
    assert "postmark" in campaign.provider_switch_reason
    received = _received(primary, postmark_failover)
    _assert_once_but_counted(campaign, emails, received, chunk)
    # The primary took what it took before it died; the rest went through the secondary.
    assert 1500 <= primary.state.stats()["recipients"] < n
    assert postmark_failover.state.stats()["recipients"] >= n - primary.state.stats()["recipients"]
    # Every message through the secondary carries the metadata its webhooks echo.
    assert {m["metadata"].get("campaign") for m in postmark_failover.state.messages()} == {
        str(campaign.pk)
    }
    # No pause: the primary's failures went to the failover, not to the owner.
    assert campaign.provider_pause_count == 0
    print(
        f"primary {primary.state.stats()['recipients']}, secondary "
        f"{postmark_failover.state.stats()['recipients']}, received twice "
        f"{sum(received.values()) - n}, duplicate_count {campaign.duplicate_count}"
    )

    page = admin_client.get(f"/admin/campaigns/campaign/{campaign.pk}/change/").content.decode()
    assert "Switched to the failover provider" in page
    assert "postmark (failover)" in page
    assert f"{campaign.provider_switched_at.astimezone():%Y-%m-%d %H:%M}" in page
    assert "mailgun turned 2 chunks in a row away" in page


def test_racing_workers_switch_a_campaign_once(shop, primary, postmark_failover):
    """Chunks failing on the primary from several workers at once: each is counted
    (atomically), the one that reaches the limit switches, the others see it done and
    retry through the failover; the switch (its time, its reason) is the first one's."""
    _recipients(3)
    campaign = _start()
    due = providers.campaign_failover_due
    assert not due(campaign_id=campaign.pk, provider="primary", reason="503 zeroth")
    assert due(campaign_id=campaign.pk, provider="primary", reason="503 first")
    first = Campaign.objects.get(pk=campaign.pk)
    assert first.provider == Campaign.Provider.SECONDARY
    assert "turned 2 chunks in a row away" in first.provider_switch_reason
    assert due(campaign_id=campaign.pk, provider="primary", reason="503 second")
    assert not providers.campaign_provider_switch(campaign_id=campaign.pk, reason="again")
    again = Campaign.objects.get(pk=campaign.pk)
    assert (again.provider_switched_at, again.provider_switch_reason) == (
        first.provider_switched_at,
        first.provider_switch_reason,
    )
    assert "503 first" in again.provider_switch_reason
    assert again.provider_failed_chunks == 2  # the late one was not counted
    # One audit row for the one switch, the system's, naming both providers.
    (event,) = CampaignEvent.objects.filter(campaign=campaign, kind="provider_switch")
    assert (event.actor_display, event.from_status, event.to_status) == (
        "system", "sending", "sending")  # fmt: skip
    assert "503 first" in event.reason
    assert event.detail == {"from": "mailgun", "to": "postmark (failover)"}
    # A chunk the failover turned away is retried as before: there is no third provider.
    assert not due(campaign_id=campaign.pk, provider="secondary", reason="503")


def test_a_chunk_the_primary_took_whole_starts_the_count_over(shop, primary, postmark_failover):
    """Failures in a row, not in all: one failed chunk, then one that went out whole,
    then one failed chunk is not two in a row."""
    _recipients(3)
    campaign = _start()
    due = providers.campaign_failover_due
    assert not due(campaign_id=campaign.pk, provider="primary", reason="503")
    providers.campaign_primary_took_chunk(campaign_id=campaign.pk)
    assert not due(campaign_id=campaign.pk, provider="primary", reason="503")
    assert Campaign.objects.get(pk=campaign.pk).provider == Campaign.Provider.PRIMARY
    assert due(campaign_id=campaign.pk, provider="primary", reason="503")


def test_the_primarys_hold_does_not_hold_the_failover(settings):
    """A 429/5xx hold on the primary (every worker waits it out) leaves the secondary
    free, so the failed chunk goes out through it at once."""
    ratelimit.reset()
    try:
        ratelimit.hold(30, provider="primary")
        assert ratelimit.reserve(1, per_second=0, per_hour=0, provider="primary") > 29
        assert ratelimit.reserve(1, per_second=0, per_hour=0, provider="secondary") == 0
    finally:
        ratelimit.reset()


def test_the_next_campaign_goes_through_the_recovered_primary(
    celery_worker, shop, primary, postmark_failover, settings
):
    settings.CAMPAIGN_CHUNK_SIZE = 50
    primary.state.control({"fail_always": 503})
    emails = _recipients(200)
    first = _finished(_start(), timeout=60)
    assert first.provider == Campaign.Provider.SECONDARY
    assert set(postmark_failover.state.recipients) == set(emails)

    primary.state.control({"reset": True})  # the primary is back
    postmark_failover.state.control({"reset": True})
    second = _finished(_start(), timeout=60)
    assert second.provider == Campaign.Provider.PRIMARY
    assert second.provider_switched_at is None
    assert primary.state.recipients == Counter(dict.fromkeys(emails, 1))
    assert postmark_failover.state.stats()["requests"] == 0


# --- batch mode ------------------------------------------------------------------------------


def test_batch_mode_falls_back_to_one_call_per_message_on_a_failover_without_batches(
    celery_worker, shop, primary, postmark_failover, settings
):
    """Mailgun batches; Postmark (as Stillhere uses it) does not: after the switch each
    message is its own call, and everyone still gets exactly one."""
    settings.CAMPAIGN_CHUNK_SIZE = 100
    settings.CAMPAIGN_BATCH_SIZE = 50
    primary.state.control({"fail_after": 100, "status": 503})
    emails = _recipients(600)
    campaign = _finished(_start(send_mode=Campaign.SendMode.BATCH), timeout=120)

    assert campaign.provider == Campaign.Provider.SECONDARY
    assert primary.state.stats()["recipients"] == 100
    assert primary.state.stats()["requests"] == 2  # two batches of 50 before it died
    secondary = postmark_failover.state.stats()
    assert secondary["recipients"] == 500
    assert secondary["requests"] == 500  # one call per message: no batches through it
    _assert_once_but_counted(campaign, emails, _received(primary, postmark_failover), 100)


def test_batch_mode_keeps_batching_through_a_failover_that_batches(
    celery_worker, shop, primary, mailgun_failover, settings
):
    """A second Mailgun account (its own key and domain): the failover takes batches."""
    settings.CAMPAIGN_CHUNK_SIZE = 100
    settings.CAMPAIGN_BATCH_SIZE = 50
    primary.state.control({"fail_after": 100, "status": 503})
    emails = _recipients(600)
    campaign = _finished(_start(send_mode=Campaign.SendMode.BATCH), timeout=120)

    assert campaign.provider == Campaign.Provider.SECONDARY
    secondary = mailgun_failover.state.stats()
    assert secondary["recipients"] == 500
    assert secondary["requests"] == 10  # batches of 50
    # Sent with the failover's own domain, never the primary's.
    assert {m["message_id"].split("@")[1] for m in mailgun_failover.state.messages()} == {
        "mg2.shop.example>"
    }
    _assert_once_but_counted(campaign, emails, _received(primary, mailgun_failover), 100)


# --- no failover configured ------------------------------------------------------------------


def test_without_a_failover_a_failing_primary_is_retried_as_before(
    celery_worker, shop, primary, settings
):
    assert providers.secondary() is None
    settings.CAMPAIGN_CHUNK_SIZE = 50
    primary.state.control({"fail_next": 3, "status": 503})
    emails = _recipients(150)
    campaign = _finished(_start(), timeout=60)
    assert campaign.provider == Campaign.Provider.PRIMARY
    assert campaign.provider_switched_at is None
    assert primary.state.recipients == Counter(dict.fromkeys(emails, 1))
    page_context = providers.campaign_provider_shown(campaign)
    assert (page_context["label"], page_context["failover"]) == ("mailgun", None)


# --- webhooks from both providers ----------------------------------------------------------


def _mailgun_event(client, event: str, recipient: str, metadata: dict):
    timestamp, token = str(int(time.time())), "tok-" + str(time.time_ns())
    signature = hmac.new(
        SIGNING_KEY.encode(), (timestamp + token).encode(), hashlib.sha256
    ).hexdigest()
    body = {
        "signature": {"timestamp": timestamp, "token": token, "signature": signature},
        "event-data": {
            "event": event,
            "timestamp": time.time(),
            "id": token,
            "recipient": recipient,
            "user-variables": metadata,
        },
    }
    # With ANYMAIL_WEBHOOK_SECRET set (the failover's endpoint needs it), anymail asks
    # every endpoint for it, Mailgun's too, on top of Mailgun's own signature.
    return client.post(
        "/anymail/mailgun/tracking/",
        json.dumps(body),
        content_type="application/json",
        HTTP_AUTHORIZATION=_basic(WEBHOOK_SECRET),
    )


def _basic(credentials: str) -> str:
    return "Basic " + base64.b64encode(credentials.encode()).decode()


def _postmark_event(client, message: dict, *, credentials: str = WEBHOOK_SECRET):
    body = {
        "RecordType": "Open",
        "MessageID": message["message_id"],
        "Recipient": message["to"],
        "ReceivedAt": "2026-12-07T15:00:00Z",
        "Metadata": message["metadata"],
        "FirstOpen": True,
        "Tag": "",
    }
    return client.post(
        "/anymail/postmark/tracking/",
        json.dumps(body),
        content_type="application/json",
        HTTP_AUTHORIZATION=_basic(credentials),
    )


def test_events_from_either_provider_update_the_same_deliveries(
    celery_worker, shop, primary, postmark_failover, settings, client
):
    """Both tracking endpoints are mounted, each refuses a forger, and an open reported
    by either lands on the Delivery of the message that provider sent."""
    mount_tracking(settings, settings.EMAIL_PROVIDER, settings.EMAIL_FAILOVER_PROVIDER)
    settings.CAMPAIGN_CHUNK_SIZE = 20
    primary.state.control({"fail_after": 20, "status": 502})
    _recipients(60)
    campaign = _finished(_start(), timeout=60)
    assert campaign.provider == Campaign.Provider.SECONDARY

    by_primary = primary.state.messages()[0]
    by_secondary = postmark_failover.state.messages()[0]
    assert by_primary["metadata"] == by_secondary["metadata"] == {"campaign": str(campaign.pk)}
    assert _postmark_event(client, by_secondary, credentials="forger:guess").status_code == 403
    assert (
        _mailgun_event(client, "opened", by_primary["to"], by_primary["metadata"]).status_code
        == 200
    )
    assert _postmark_event(client, by_secondary).status_code == 200

    opened = set(
        Delivery.objects.filter(campaign=campaign, opened_at__isnull=False).values_list(
            "contact__email", flat=True
        )
    )
    assert opened == {by_primary["to"], by_secondary["to"]}


# --- confirmation mail -----------------------------------------------------------------------


def test_confirmation_mail_goes_through_the_failover_when_the_primary_is_down(
    shop, primary, postmark_failover, settings, monkeypatch
):
    settings.CONFIRMATION_BATCH_SECONDS = 60  # the sweep below sends, not the kick
    form = SignupFormFactory(double_opt_in=True)
    primary.state.control({"fail_always": 503})
    for email in ("ada@example.com", "bo@example.com"):
        audience_services.contact_subscribe(
            form=form, email=email, evidence=audience_services.Evidence(method="form-html")
        )
    assert while_locked(lambda: send_due_confirmations.apply().get()) == 2
    assert sorted(m["to"] for m in postmark_failover.state.messages()) == [
        "ada@example.com",
        "bo@example.com",
    ]
    # The first mail found the primary down; the second did not ask it again.
    assert primary.state.stats()["failures_served"] == 1
    assert not Contact.objects.filter(confirmation_due=True).exists()

    # Once the primary is back it is tried first again (here at once, not after a minute).
    monkeypatch.setattr(config_providers, "PRIMARY_RETRY_SECONDS", 0)
    primary.state.control({"reset": True})
    audience_services.contact_subscribe(
        form=form, email="cy@example.com", evidence=audience_services.Evidence(method="form-html")
    )
    assert send_due_confirmations.apply().get() == 1
    assert [m["to"] for m in primary.state.messages()] == ["cy@example.com"]


def test_confirmation_mail_without_a_failover_keeps_its_debt_when_the_primary_is_down(
    shop, primary, settings
):
    settings.CONFIRMATION_BATCH_SECONDS = 60
    form = SignupFormFactory(double_opt_in=True)
    primary.state.control({"fail_always": 503})
    audience_services.contact_subscribe(
        form=form, email="ada@example.com", evidence=audience_services.Evidence(method="form-html")
    )
    assert send_due_confirmations.apply().get() == 0
    assert Contact.objects.get(email="ada@example.com").confirmation_due
