"""The sending engine against a fake Mailgun on loopback, mostly with a real worker."""

from __future__ import annotations

import time
from datetime import timedelta
from urllib.parse import urlsplit

import pytest
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.utils import timezone

from audience.models import Contact
from audience.services import Evidence, contact_unsubscribe
from audience.tokens import read_token
from campaigns import lifecycle, ratelimit, sending, services
from campaigns.models import Campaign, Delivery, DeliveryChunk, SenderSettings
from campaigns.selectors import campaign_progress, campaign_recipients
from campaigns.tasks import start_due_campaigns, sweep_stale_claims
from tests.factories import ContactFactory, TagFactory
from tests.polling import wait_for, while_locked

POSTAL = "Stillhere Shop\n1 Harbour Road\nPortsmouth"


@pytest.fixture
def sender(transactional_db):
    ratelimit.reset()
    SenderSettings.objects.update_or_create(
        pk=1,
        defaults={
            "from_name": "Stillhere Shop",
            "from_email": "news@shop.example",
            "reply_to": "help@shop.example",
            "postal_address": POSTAL,
            "shop_url": "https://shop.example",
        },
    )
    yield SenderSettings.load()
    ratelimit.reset()


def _campaign(**kwargs) -> Campaign:
    defaults = {
        "name": "We're still here",
        "subject": "Hi {{ first_name|default:'friend' }}, we're still here",
        "preheader": "Instagram is down; we are not",
        "body": 'Hello **{{ first_name|default:"friend" }}**,\n\nOrder at [our shop](https://shop.example).',
    }
    defaults.update(kwargs)
    return Campaign.objects.create(**defaults)


def _wait(predicate, timeout=30.0, interval=0.2) -> bool:
    # tests.polling's wait_for looks again when SQLite says "table is locked" while a
    # worker thread writes; a bare loop here once failed the suite on that.
    return wait_for(predicate, timeout=timeout, interval=interval)


def _status(campaign: Campaign) -> str:
    return Campaign.objects.values_list("status", flat=True).get(pk=campaign.pk)


def _unsubscribe_contact(url: str) -> Contact | None:
    path = urlsplit(url.strip("<>")).path
    return read_token("unsubscribe", path.rstrip("/").rsplit("/", 1)[-1])


def _audience():
    tricky = ContactFactory(email="ann@example.com", first_name='<b>Ann & "Bob"</b>')
    plain = ContactFactory(email="cy@example.com", first_name="Cy")
    nameless = ContactFactory(email="dee@example.com", first_name="")
    ContactFactory(email="gone@example.com", status=Contact.Status.UNSUBSCRIBED)
    ContactFactory(email="waiting@example.com", status=Contact.Status.PENDING)
    ContactFactory(email="bounced@example.com", status=Contact.Status.BOUNCED)
    return [tricky, plain, nameless]


def _check_messages(esp, recipients: list[Contact]) -> dict:
    messages = {m["to"]: m for m in esp.state.messages()}
    assert sorted(messages) == sorted(c.email for c in recipients)
    for contact in recipients:
        message = messages[contact.email]
        headers = message["headers"]
        assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert _unsubscribe_contact(headers["List-Unsubscribe"]) == contact
        assert "Harbour Road" in message["text"]
        assert "1 Harbour Road<br>Portsmouth" in message["html"]
        assert "Unsubscribe" in message["html"]
        assert "/u/" in message["text"]
    tricky = messages["ann@example.com"]
    assert "<strong>&lt;b&gt;Ann &amp; &quot;Bob&quot;&lt;/b&gt;</strong>" in tricky["html"]
    assert "<b>Ann" not in tricky["html"]
    assert 'Hello <b>Ann & "Bob"</b>,' in tricky["text"]
    assert tricky["subject"] == 'Hi <b>Ann & "Bob"</b>, we\'re still here'
    assert messages["dee@example.com"]["subject"] == "Hi friend, we're still here"
    assert "<strong>Cy</strong>" in messages["cy@example.com"]["html"]
    return messages


@pytest.mark.worker
def test_each_subscriber_gets_their_own_message_and_unsubscribe_headers(celery_worker, esp, sender):
    recipients = _audience()
    campaign = services.campaign_start(campaign=_campaign())
    assert campaign.total_count == 3
    assert _wait(lambda: _status(campaign) == Campaign.Status.SENT)

    messages = _check_messages(esp, recipients)
    assert esp.state.stats()["requests"] == 3
    for delivery in Delivery.objects.filter(campaign=campaign).select_related("contact"):
        assert delivery.status == Delivery.Status.SENT
        assert delivery.message_id == messages[delivery.contact.email]["message_id"]
    campaign.refresh_from_db()
    assert (campaign.sent_count, campaign.failed_count, campaign.duplicate_count) == (3, 0, 0)
    assert campaign.finished_at is not None


@pytest.mark.worker
def test_batch_mode_sends_one_call_with_per_recipient_merge_data_and_headers(
    celery_worker, esp, sender
):
    recipients = _audience()
    campaign = services.campaign_start(campaign=_campaign(send_mode=Campaign.SendMode.BATCH))
    assert _wait(lambda: _status(campaign) == Campaign.Status.SENT)

    assert esp.state.stats()["requests"] == 1
    messages = _check_messages(esp, recipients)
    raw = esp.state.raw[0][1]
    assert "%recipient." in raw["html"][0]  # one body for all, values merged per recipient
    ids = set(Delivery.objects.filter(campaign=campaign).values_list("message_id", flat=True))
    assert ids == {messages["ann@example.com"]["message_id"]}


def test_contact_who_unsubscribes_mid_send_gets_nothing_more(esp, sender, settings):
    settings.CAMPAIGN_CHUNK_SIZE = 2
    first, second, third, fourth = (ContactFactory() for _ in range(4))
    campaign = services.campaign_start(campaign=_campaign())  # tasks wait for commit
    sending.chunk_send(campaign_id=campaign.pk, chunk=0)
    contact_unsubscribe(contact=fourth, evidence=Evidence(method="one-click"))
    sending.chunk_send(campaign_id=campaign.pk, chunk=1)

    assert sorted(esp.state.recipients) == sorted([first.email, second.email, third.email])
    skipped = Delivery.objects.get(campaign=campaign, contact=fourth)
    assert skipped.status == Delivery.Status.SKIPPED
    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.SENT
    assert (campaign.total_count, campaign.sent_count) == (3, 3)


@pytest.mark.worker
def test_pause_holds_the_rest_and_resume_sends_everyone_once(celery_worker, esp, sender, settings):
    settings.CAMPAIGN_CHUNK_SIZE = 4
    SenderSettings.objects.filter(pk=1).update(rate_per_second=10)
    contacts = [ContactFactory() for _ in range(24)]
    campaign = services.campaign_start(campaign=_campaign())
    assert _wait(lambda: esp.state.stats()["recipients"] >= 3)

    while_locked(lambda: services.campaign_pause(campaign=campaign, actor="owner"))
    time.sleep(0.3)
    at_pause = esp.state.stats()["recipients"]
    time.sleep(1.5)
    assert esp.state.stats()["recipients"] == at_pause < len(contacts)
    assert _status(campaign) == Campaign.Status.PAUSED
    assert not DeliveryChunk.objects.filter(campaign=campaign, status="claimed").exists()

    while_locked(lambda: services.campaign_resume(campaign=campaign, actor="owner"))
    assert _wait(lambda: _status(campaign) == Campaign.Status.SENT)
    assert sorted(esp.state.recipients) == sorted(c.email for c in contacts)
    assert set(esp.state.recipients.values()) == {1}


@pytest.mark.worker
def test_cancel_stops_sending_for_good(celery_worker, esp, sender, settings):
    settings.CAMPAIGN_CHUNK_SIZE = 4
    SenderSettings.objects.filter(pk=1).update(rate_per_second=10)
    for _ in range(24):
        ContactFactory()
    campaign = services.campaign_start(campaign=_campaign())
    assert _wait(lambda: esp.state.stats()["recipients"] >= 3)

    while_locked(lambda: services.campaign_cancel(campaign=campaign, actor="owner"))
    time.sleep(0.3)
    at_cancel = esp.state.stats()["recipients"]
    time.sleep(1.5)
    assert esp.state.stats()["recipients"] == at_cancel < 24
    assert _status(campaign) == Campaign.Status.CANCELLED
    assert Delivery.objects.filter(campaign=campaign, status=Delivery.Status.QUEUED).exists()
    with pytest.raises(ValidationError):
        services.campaign_resume(campaign=campaign)


@pytest.mark.worker
def test_beat_scan_starts_a_due_campaign_once(celery_worker, esp, sender):
    contact = ContactFactory()
    campaign = _campaign()
    services.campaign_schedule(campaign=campaign, when=timezone.now() + timedelta(seconds=1))
    start_due_campaigns.delay()
    time.sleep(0.5)
    assert _status(campaign) == Campaign.Status.SCHEDULED

    time.sleep(0.7)
    start_due_campaigns.delay()
    start_due_campaigns.delay()
    assert _wait(lambda: _status(campaign) == Campaign.Status.SENT)
    assert esp.state.recipients == {contact.email: 1}
    assert Delivery.objects.filter(campaign=campaign).count() == 1


@pytest.mark.worker
def test_rate_limit_spreads_sends_across_the_second(celery_worker, esp, sender, settings):
    settings.CAMPAIGN_CHUNK_SIZE = 5
    SenderSettings.objects.filter(pk=1).update(rate_per_second=10)
    for _ in range(26):
        ContactFactory()
    started = time.monotonic()
    campaign = services.campaign_start(campaign=_campaign())
    assert _wait(lambda: _status(campaign) == Campaign.Status.SENT)
    elapsed = time.monotonic() - started
    # A one-second burst (11 messages) may go at once; the other 15 need 1.5 s at 10/s.
    assert elapsed >= 1.4
    assert esp.state.stats()["recipients"] == 26


def test_rate_limit_reservations_hold_across_concurrent_workers(sender, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    ratelimit.reset()
    # One frozen instant: every reservation races for the same slots, so the schedule
    # shows whether any two were handed the same one.
    monkeypatch.setattr(ratelimit.time, "time", lambda: 1_900_000_000.0)
    with ThreadPoolExecutor(8) as pool:
        waits = sorted(
            pool.map(lambda _: ratelimit.reserve(1, per_second=20, per_hour=0), range(60))
        )
    # 21 fit in the one-second burst; each later one starts 1/20 s after the one before.
    expected = [0.0] * 21 + [0.05 * k for k in range(1, 40)]
    assert waits == pytest.approx(expected, abs=1e-4)


@pytest.mark.worker
def test_provider_errors_are_retried_and_nobody_is_lost(celery_worker, esp, sender, settings):
    settings.CAMPAIGN_CHUNK_SIZE = 3
    contacts = [ContactFactory() for _ in range(7)]
    esp.state.control({"fail_next": 1, "status": 503})
    campaign = services.campaign_start(campaign=_campaign())
    assert _wait(lambda: esp.state.stats()["failures_served"] >= 1)
    esp.state.control({"fail_next": 1, "status": 429})
    assert _wait(lambda: _status(campaign) == Campaign.Status.SENT)

    assert esp.state.stats()["failures_served"] == 2
    assert sorted(esp.state.recipients) == sorted(c.email for c in contacts)
    assert set(esp.state.recipients.values()) == {1}
    campaign.refresh_from_db()
    assert campaign.sent_count == 7


@pytest.mark.worker
def test_provider_timeout_is_retried_in_batch_mode(celery_worker, esp, sender):
    contacts = [ContactFactory() for _ in range(5)]
    esp.state.control({"timeout_next": 1, "seconds": 1.5})
    campaign = services.campaign_start(campaign=_campaign(send_mode=Campaign.SendMode.BATCH))
    assert _wait(lambda: _status(campaign) == Campaign.Status.SENT)
    assert sorted(esp.state.recipients) == sorted(c.email for c in contacts)
    assert esp.state.stats()["requests"] == 1


@pytest.mark.worker
@pytest.mark.parametrize("mode", [Campaign.SendMode.PER_MESSAGE, Campaign.SendMode.BATCH])
def test_recipient_the_provider_rejects_is_marked_failed(celery_worker, esp, sender, mode):
    good = [ContactFactory() for _ in range(3)]
    bad = ContactFactory(email="nobody@invalid.example")
    esp.state.control({"reject": [bad.email]})
    campaign = services.campaign_start(campaign=_campaign(send_mode=mode))
    assert _wait(lambda: _status(campaign) == Campaign.Status.SENT)

    failed = Delivery.objects.get(campaign=campaign, contact=bad)
    assert failed.status == Delivery.Status.FAILED
    assert "not a valid address" in failed.error
    assert sorted(esp.state.recipients) == sorted(c.email for c in good)
    campaign.refresh_from_db()
    assert (campaign.sent_count, campaign.failed_count) == (3, 1)
    assert campaign_progress(campaign)["remaining"] == 0


@pytest.mark.worker
def test_consecutive_failed_chunks_pause_the_campaign_with_the_reason(
    celery_worker, esp, sender, settings
):
    settings.CAMPAIGN_CHUNK_SIZE = 2
    settings.CAMPAIGN_FAILURE_WINDOW = 0.5
    for _ in range(6):
        ContactFactory()
    esp.state.control({"fail_always": 500})
    campaign = services.campaign_start(campaign=_campaign())
    assert _wait(lambda: _status(campaign) == Campaign.Status.PAUSED)

    campaign.refresh_from_db()
    assert "chunks away" in campaign.status_reason
    assert "500" in campaign.status_reason
    assert campaign.pause_kind == Campaign.PauseKind.PROVIDER
    assert campaign.auto_resume_at > timezone.now()
    assert "resumes by itself" in campaign.status_reason
    time.sleep(0.5)
    statuses = set(Delivery.objects.filter(campaign=campaign).values_list("status", flat=True))
    assert statuses == {Delivery.Status.QUEUED}
    assert esp.state.stats()["recipients"] == 0

    esp.state.control({"reset": True})
    services.campaign_resume(campaign=campaign)
    assert _wait(lambda: _status(campaign) == Campaign.Status.SENT)
    assert esp.state.stats()["recipients"] == 6


def test_sweeper_requeues_a_dead_workers_claim_and_counts_the_resends(esp, sender, settings):
    settings.CAMPAIGN_CLAIM_TIMEOUT = 60
    for _ in range(5):
        ContactFactory()
    campaign = services.campaign_start(campaign=_campaign())
    # A worker claimed the chunk and died: the chunk sits claimed, long ago.
    DeliveryChunk.objects.filter(campaign=campaign).update(
        status="claimed", claim_token="dead", claimed_at=timezone.now() - timedelta(minutes=5)
    )
    assert sending.chunk_send(campaign_id=campaign.pk, chunk=0).claimed == 0
    assert esp.state.stats()["requests"] == 0

    assert sending.claims_sweep() == {campaign.pk: 1}
    sending.chunk_send(campaign_id=campaign.pk, chunk=0)
    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.SENT
    assert (campaign.sent_count, campaign.duplicate_count) == (5, 5)


def test_sweeper_leaves_fresh_claims_alone(esp, sender):
    ContactFactory()
    campaign = services.campaign_start(campaign=_campaign())
    DeliveryChunk.objects.filter(campaign=campaign).update(
        status="claimed", claim_token="alive", claimed_at=timezone.now()
    )
    assert sweep_stale_claims.apply().get() == {}
    assert DeliveryChunk.objects.get(campaign=campaign).status == "claimed"


def test_rows_sent_by_a_racing_task_are_not_sent_or_counted_twice(esp, sender):
    for _ in range(3):
        ContactFactory()
    campaign = services.campaign_start(campaign=_campaign())
    sending.chunk_send(campaign_id=campaign.pk, chunk=0)
    # A second task for the same chunk (a re-dispatch) finds nothing to claim.
    DeliveryChunk.objects.filter(campaign=campaign).update(status="queued")
    sending.chunk_send(campaign_id=campaign.pk, chunk=0)
    campaign.refresh_from_db()
    assert esp.state.stats()["recipients"] == 3
    assert campaign.sent_count == 3


def test_start_is_refused_without_postal_or_from_address(sender):
    SenderSettings.objects.filter(pk=1).update(postal_address="", from_email="")
    ContactFactory()
    campaign = _campaign()
    with pytest.raises(ValidationError) as excinfo:
        services.campaign_start(campaign=campaign)
    text = " ".join(excinfo.value.messages)
    assert "postal address" in text
    assert "From address" in text
    assert _status(campaign) == Campaign.Status.DRAFT
    assert services.sender_problems(SenderSettings.load())


def test_start_snapshots_recipients_in_numbered_chunks(sender, settings):
    settings.CAMPAIGN_CHUNK_SIZE = 2
    vip = TagFactory(name="vip")
    tagged = [ContactFactory() for _ in range(5)]
    for contact in tagged:
        contact.tags.add(vip, TagFactory(name="also"))
    ContactFactory()  # untagged
    ContactFactory(status=Contact.Status.PENDING).tags.add(vip)
    campaign = _campaign(audience=Campaign.Audience.TAGS)
    campaign.tags.add(vip, TagFactory(name="also"))
    assert campaign_recipients(campaign).count() == 5

    campaign = services.campaign_start(campaign=campaign)
    rows = list(Delivery.objects.filter(campaign=campaign).order_by("contact_id"))
    assert [r.contact_id for r in rows] == [c.pk for c in tagged]
    assert [r.chunk for r in rows] == [0, 0, 1, 1, 2]
    assert campaign.total_count == 5
    assert campaign.status == Campaign.Status.SENDING
    with pytest.raises(ValidationError):
        services.campaign_start(campaign=campaign)


def test_progress_comes_from_the_counters(sender):
    campaign = _campaign()
    Campaign.objects.filter(pk=campaign.pk).update(
        status=Campaign.Status.SENDING,
        total_count=1000,
        sent_count=400,
        failed_count=100,
        started_at=timezone.now() - timedelta(seconds=10),
    )
    campaign.refresh_from_db()
    progress = campaign_progress(campaign)
    assert progress["remaining"] == 500
    assert progress["rate_per_second"] == pytest.approx(50, rel=0.05)
    assert progress["eta_seconds"] == pytest.approx(10, abs=1)
    assert progress["status"] == "sending"


def test_test_send_goes_only_to_the_given_addresses(sender, settings, mailoutbox):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    contact = ContactFactory(first_name="Zed")
    campaign = _campaign()
    sent = services.campaign_send_test(
        campaign=campaign, emails=["owner@shop.example"], as_contact=contact
    )
    assert sent == 1
    [message] = mailoutbox
    assert message.to == ["owner@shop.example"]
    assert message.subject == "[Test] Hi Zed, we're still here"
    assert message.extra_headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert not Delivery.objects.exists()


def test_send_campaign_command_starts_the_campaign(sender, capsys, django_user_model):
    django_user_model.objects.create_superuser("owner", "owner@shop.example", "pw")
    ContactFactory()
    campaign = _campaign()
    call_command("send_campaign", str(campaign.pk), "--as", "owner")
    assert _status(campaign) == Campaign.Status.SENDING
    assert "1 recipients" in capsys.readouterr().out


def _dead_workers_campaign() -> tuple[Campaign, DeliveryChunk]:
    """A campaign whose only chunk was claimed by a worker that died ten minutes ago."""
    campaign = _campaign(name="Stuck")
    Campaign.objects.filter(pk=campaign.pk).update(
        status=Campaign.Status.SENDING, total_count=1, started_at=timezone.now()
    )
    Delivery.objects.create(campaign=campaign, contact=ContactFactory(), chunk=0)
    chunk = DeliveryChunk.objects.create(
        campaign=campaign,
        number=0,
        status="claimed",
        claim_token="dead",
        claimed_at=timezone.now() - timedelta(minutes=10),
    )
    return campaign, chunk


def test_housekeeping_has_its_own_queue_that_a_plain_worker_consumes():
    from config.celery import app

    route = app.amqp.router.route({}, "campaigns.tasks.sweep_stale_claims")
    assert route["queue"].name == "housekeeping"
    assert app.amqp.router.route({}, "campaigns.tasks.send_chunk")["queue"].name == "celery"
    # What `celery -A config worker` consumes when given no -Q: every configured queue.
    assert {"celery", "housekeeping"} <= set(app.amqp.queues)


@pytest.mark.worker
def test_a_sweep_is_not_stuck_behind_a_blasts_chunk_tasks(celery_worker, esp, sender, settings):
    settings.CAMPAIGN_CLAIM_TIMEOUT = 60
    settings.CAMPAIGN_CHUNK_SIZE = 1
    SenderSettings.objects.filter(pk=1).update(rate_per_second=2)
    stuck, chunk = _dead_workers_campaign()
    for _ in range(24):
        ContactFactory()
    blast = services.campaign_start(campaign=_campaign())  # 25 chunk tasks, ~12 s at 2/s
    assert _wait(lambda: esp.state.stats()["recipients"] >= 1)
    consumed = {queue.name for queue in celery_worker.consumer.task_consumer.queues}
    assert "housekeeping" in consumed

    sweep_stale_claims.delay()
    # In one FIFO queue the sweep would wait for the blast's remaining chunk tasks.
    assert _wait(lambda: DeliveryChunk.objects.get(pk=chunk.pk).requeued, timeout=4)
    assert esp.state.stats()["recipients"] < 15
    services.campaign_cancel(campaign=blast)
    services.campaign_cancel(campaign=stuck)


def _deliveries(campaign: Campaign) -> set[str]:
    return set(Delivery.objects.filter(campaign=campaign).values_list("status", flat=True))


@pytest.mark.worker
@pytest.mark.parametrize(
    ("status", "message", "mode"),
    [
        (401, "Invalid private key", Campaign.SendMode.PER_MESSAGE),
        (401, "Invalid private key", Campaign.SendMode.BATCH),
        (403, "Domain not allowed", Campaign.SendMode.PER_MESSAGE),
        (400, "'from' parameter is missing", Campaign.SendMode.PER_MESSAGE),
        (400, "'from' parameter is missing", Campaign.SendMode.BATCH),
    ],
)
def test_a_provider_refusing_the_account_or_request_pauses_and_fails_nobody(
    celery_worker, esp, sender, settings, status, message, mode
):
    settings.CAMPAIGN_CHUNK_SIZE = 10
    contacts = [ContactFactory() for _ in range(30)]
    esp.state.control({"fail_always": status, "message": message})
    campaign = services.campaign_start(campaign=_campaign(send_mode=mode))
    assert _wait(lambda: _status(campaign) == Campaign.Status.PAUSED)

    campaign.refresh_from_db()
    assert campaign.pause_kind == Campaign.PauseKind.SETUP
    assert message in campaign.status_reason
    assert "nobody was marked failed" in campaign.status_reason
    assert campaign.auto_resume_at is None  # a person has to fix the account
    assert (campaign.sent_count, campaign.failed_count) == (0, 0)
    assert _deliveries(campaign) == {Delivery.Status.QUEUED}
    # The first chunk tells (in batch mode after its one batch call); the provider is not
    # asked once per recipient of the campaign.
    assert esp.state.stats()["failures_served"] <= 11

    esp.state.control({"reset": True})
    services.campaign_resume(campaign=campaign)
    assert _wait(lambda: _status(campaign) == Campaign.Status.SENT)
    assert sorted(esp.state.recipients) == sorted(c.email for c in contacts)
    assert set(esp.state.recipients.values()) == {1}


@pytest.mark.worker
def test_recipients_rejected_side_by_side_fail_alone(celery_worker, esp, sender):
    bad = [ContactFactory(email=f"bad{n}@invalid.example") for n in range(4)]
    good = [ContactFactory() for _ in range(3)]
    esp.state.control({"reject": [c.email for c in bad]})
    campaign = services.campaign_start(campaign=_campaign())
    assert _wait(lambda: _status(campaign) == Campaign.Status.SENT)

    campaign.refresh_from_db()
    assert (campaign.sent_count, campaign.failed_count) == (3, 4)
    failed = Delivery.objects.filter(campaign=campaign, status=Delivery.Status.FAILED)
    assert {d.contact_id for d in failed} == {c.pk for c in bad}
    assert sorted(esp.state.recipients) == sorted(c.email for c in good)


@pytest.mark.worker
def test_retry_after_holds_every_chunk_off_the_provider(celery_worker, esp, sender, settings):
    settings.CAMPAIGN_CHUNK_SIZE = 2
    # One send at a time: with more slots, a send already in flight when the 429 comes
    # back still arrives (tests/campaigns/test_concurrency.py holds those to the rule).
    settings.CAMPAIGN_SEND_CONCURRENCY = 1
    contacts = [ContactFactory() for _ in range(6)]
    esp.state.control({"fail_next": 1, "status": 429, "retry_after": 2})
    campaign = services.campaign_start(campaign=_campaign())
    assert _wait(lambda: _status(campaign) == Campaign.Status.SENT)

    [(refused_at, _)] = [entry for entry in esp.state.log if entry[1] == 429]
    after = [at for at, code in esp.state.log if at > refused_at]
    # Not the chunk's own 0.2 s backoff, and not the other chunks either: nobody asked
    # the provider again before the two seconds it asked for had passed.
    assert min(after) - refused_at >= 1.9
    assert sorted(esp.state.recipients) == sorted(c.email for c in contacts)
    assert set(esp.state.recipients.values()) == {1}


@pytest.mark.worker
def test_a_short_burst_of_provider_errors_does_not_pause(celery_worker, esp, sender, settings):
    settings.CAMPAIGN_CHUNK_SIZE = 1
    contacts = [ContactFactory() for _ in range(8)]
    # Five chunks in a row turned away within a second: once three in a row paused.
    esp.state.control({"fail_next": 5, "status": 503})
    campaign = services.campaign_start(campaign=_campaign())
    assert _wait(lambda: _status(campaign) == Campaign.Status.SENT, timeout=20)

    campaign.refresh_from_db()
    assert campaign.provider_pause_count == 0
    assert esp.state.stats()["failures_served"] == 5
    assert sorted(esp.state.recipients) == sorted(c.email for c in contacts)
    assert set(esp.state.recipients.values()) == {1}


@pytest.mark.worker
def test_a_provider_pause_resumes_by_itself_and_loses_nobody(celery_worker, esp, sender, settings):
    settings.CAMPAIGN_CHUNK_SIZE = 2
    settings.CAMPAIGN_MAX_FAILED_CHUNKS = 2
    settings.CAMPAIGN_FAILURE_WINDOW = 0.3
    settings.CAMPAIGN_AUTO_RESUME_BACKOFF = 0.5
    contacts = [ContactFactory() for _ in range(6)]
    esp.state.control({"fail_always": 503})
    campaign = services.campaign_start(campaign=_campaign())
    assert _wait(lambda: _status(campaign) == Campaign.Status.PAUSED)
    campaign.refresh_from_db()
    assert campaign.pause_kind == Campaign.PauseKind.PROVIDER
    assert campaign.auto_resume_at is not None

    esp.state.control({"fail_always": 0})  # the provider is back; nobody presses Resume
    assert _wait(lambda: _status(campaign) == Campaign.Status.SENT)
    campaign.refresh_from_db()
    assert campaign.provider_pause_count >= 1
    assert (campaign.sent_count, campaign.failed_count, campaign.duplicate_count) == (6, 0, 0)
    assert sorted(esp.state.recipients) == sorted(c.email for c in contacts)
    assert set(esp.state.recipients.values()) == {1}


def test_automatic_resumes_back_off_and_stop_at_the_limit(sender, settings):
    settings.CAMPAIGN_AUTO_RESUME_MAX = 2
    settings.CAMPAIGN_AUTO_RESUME_BACKOFF = 10
    settings.CAMPAIGN_AUTO_RESUME_BACKOFF_MAX = 15
    ContactFactory()
    campaign = services.campaign_start(campaign=_campaign())
    delays = []
    for _ in range(3):
        before = timezone.now()
        assert lifecycle.campaign_pause_by_provider(
            campaign_id=campaign.pk, kind=Campaign.PauseKind.PROVIDER, why="503s", said="503"
        )
        campaign.refresh_from_db()
        if campaign.auto_resume_at is None:
            break
        delays.append(round((campaign.auto_resume_at - before).total_seconds()))
        Campaign.objects.filter(pk=campaign.pk).update(auto_resume_at=timezone.now())
        assert services.campaigns_resume_due() == [campaign.pk]
    assert delays == [10, 15]  # growing, capped
    assert campaign.status == Campaign.Status.PAUSED
    assert "press Resume" in campaign.status_reason
    assert services.campaigns_resume_due() == []


def test_a_provider_pause_never_resumes_sooner_than_its_retry_after(sender, settings):
    settings.CAMPAIGN_AUTO_RESUME_BACKOFF = 10
    ContactFactory()
    campaign = services.campaign_start(campaign=_campaign())
    before = timezone.now()
    assert lifecycle.campaign_pause_by_provider(
        campaign_id=campaign.pk, kind=Campaign.PauseKind.PROVIDER, why="429s", said="429",
        not_before=900,
    )  # fmt: skip
    campaign.refresh_from_db()
    assert (campaign.auto_resume_at - before).total_seconds() >= 900


def test_an_owners_pause_is_never_resumed_by_itself(sender, settings):
    settings.CAMPAIGN_AUTO_RESUME_BACKOFF = 0.1
    ContactFactory()
    by_owner = services.campaign_start(campaign=_campaign())
    services.campaign_pause(campaign=by_owner, actor="owner")
    # The provider paused this one, then the owner pressed Pause before it woke up.
    overruled = services.campaign_start(campaign=_campaign(name="Second"))
    lifecycle.campaign_pause_by_provider(
        campaign_id=overruled.pk, kind=Campaign.PauseKind.PROVIDER, why="503s", said="503"
    )
    services.campaign_pause(campaign=overruled, actor="owner")
    # A third, left alone, shows the sweep does wake provider pauses.
    left = services.campaign_start(campaign=_campaign(name="Third"))
    lifecycle.campaign_pause_by_provider(
        campaign_id=left.pk, kind=Campaign.PauseKind.PROVIDER, why="503s", said="503"
    )
    assert wait_for(lambda: services.campaigns_resume_due() == [left.pk], timeout=5)

    for campaign in (by_owner, overruled):
        campaign.refresh_from_db()
        assert campaign.status == Campaign.Status.PAUSED
        assert campaign.pause_kind == Campaign.PauseKind.OWNER
        assert campaign.auto_resume_at is None
    assert _status(left) == Campaign.Status.SENDING


@pytest.mark.worker
def test_a_send_whose_answer_never_came_counts_as_a_possible_duplicate(celery_worker, esp, sender):
    contacts = [ContactFactory() for _ in range(3)]
    # The provider takes the first message but answers after the client's 1 s timeout.
    esp.state.control({"deliver_late_next": 1, "seconds": 1.5})
    campaign = services.campaign_start(campaign=_campaign())
    assert _wait(lambda: _status(campaign) == Campaign.Status.SENT)

    assert esp.state.stats()["duplicates"] == 1
    campaign.refresh_from_db()
    assert campaign.sent_count == 3
    assert campaign.duplicate_count == 1
    assert sorted(esp.state.recipients) == sorted(c.email for c in contacts)


@pytest.mark.worker
def test_a_gateway_timeout_counts_as_a_possible_duplicate(celery_worker, esp, sender):
    """A 504 is a gateway that stopped waiting on the provider, which may have taken the
    message: what is sent again for it is counted, like a timeout of our own."""
    [ContactFactory() for _ in range(3)]
    esp.state.control({"fail_next": 1, "status": 504})
    campaign = services.campaign_start(campaign=_campaign())
    assert _wait(lambda: _status(campaign) == Campaign.Status.SENT)
    campaign.refresh_from_db()
    assert (campaign.sent_count, campaign.failed_count) == (3, 0)
    assert campaign.duplicate_count == 1


def test_email_timeout_reaches_every_provider_backend():
    import os
    import subprocess
    import sys

    code = "import django; django.setup(); from django.core.mail import get_connection; "
    code += "print(get_connection().timeout)"
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env |= {
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "EMAIL_PROVIDER": "mailgun",
        "EMAIL_API_KEY": "key-test",
        "MAILGUN_WEBHOOK_SIGNING_KEY": "signing-key-test",
        "EMAIL_TIMEOUT": "1",
    }
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "1"


def test_the_campaign_page_says_why_it_paused_and_when_it_tries_again(sender, admin_client):
    ContactFactory()
    campaign = services.campaign_start(campaign=_campaign())
    lifecycle.campaign_pause_by_provider(
        campaign_id=campaign.pk,
        kind=Campaign.PauseKind.PROVIDER,
        why="the provider kept failing",
        said="Mailgun API response 503",
    )
    campaign.refresh_from_db()
    page = admin_client.get(f"/admin/campaigns/campaign/{campaign.pk}/change/")
    text = page.content.decode()
    assert "Mailgun API response 503" in text
    assert 'id="auto-resume"' in text
    assert timezone.localtime(campaign.auto_resume_at).strftime("%H:%M:%S") in text
    assert 'id="pause-button"' in text  # to keep it paused


@pytest.mark.parametrize("ids", ["one per message", "one per batch"])
def test_marking_a_chunk_sent_writes_each_rows_message_id_once_and_only_in_that_chunk(
    sender, settings, ids
):
    """The one mark-sent path of each database (PostgreSQL's unnest, the portable CASE in
    slices): more rows than one slice, rows another task already marked, and rows of the
    next chunk named by mistake, which stay queued."""
    settings.CAMPAIGN_CHUNK_SIZE = 700
    Contact.objects.bulk_create(
        Contact(email=f"mark{i}@example.com", status=Contact.Status.SUBSCRIBED) for i in range(1000)
    )
    campaign = services.campaign_start(campaign=_campaign())
    rows = list(Delivery.objects.filter(campaign=campaign).order_by("chunk", "pk"))
    first = [row.pk for row in rows if row.chunk == 0]
    second = [row.pk for row in rows if row.chunk == 1]
    assert (len(first), len(second)) == (700, 300)
    # A racing task sent the first five; one contact was skipped (unsubscribed).
    Delivery.objects.filter(pk__in=first[:5]).update(status=Delivery.Status.SENT, message_id="x")
    Delivery.objects.filter(pk=first[5]).update(status=Delivery.Status.SKIPPED)

    def message_id(i: int) -> str:
        return f"<{i}@mg.example>" if ids == "one per message" else "<batch-7@mg.example>"

    result = sending.ChunkResult(
        sent=[(pk, message_id(i)) for i, pk in enumerate(first + second[:10])]
    )
    marked = sending._mark(campaign.pk, 0, result)

    assert marked.sent == 694
    got = {d.pk: d for d in Delivery.objects.filter(campaign=campaign)}
    assert [got[pk].message_id for pk in first[:5]] == ["x"] * 5
    assert got[first[5]].status == Delivery.Status.SKIPPED
    for i, pk in enumerate(first[6:], start=6):
        assert (got[pk].status, got[pk].message_id) == (Delivery.Status.SENT, message_id(i))
        assert got[pk].sent_at is not None
    assert {got[pk].status for pk in second} == {Delivery.Status.QUEUED}
    assert {got[pk].message_id for pk in second} == {""}


def _api_error(status: int):
    """What anymail raises for a provider's HTTP error answer."""
    import requests
    from anymail.exceptions import AnymailAPIError

    response = requests.models.Response()
    response.status_code, response.reason = status, "Error"
    response._content = b'{"message": "refused"}'
    return AnymailAPIError(
        "Mailgun API error", status_code=status, response=response, esp_name="Mailgun"
    )


@pytest.mark.parametrize(
    ("make", "failure", "transient", "halt"),
    [
        (lambda: _api_error(503), "TRANSIENT", True, False),
        (lambda: _api_error(429), "TRANSIENT", True, False),
        (lambda: _api_error(401), "SETUP", False, True),
        (lambda: _api_error(400), "REFUSAL", False, False),
        (lambda: __import__("smtplib").SMTPAuthenticationError(535, b"bad login"), "SETUP",
         False, True),
        (lambda: __import__("smtplib").SMTPRecipientsRefused({"a@x.example": (451, b"later")}),
         "TRANSIENT", True, False),
        (lambda: __import__("smtplib").SMTPRecipientsRefused({"a@x.example": (550, b"no")}),
         "REFUSAL", False, False),
    ],
)  # fmt: skip
def test_a_provider_failure_is_classified_alike_for_a_message_and_a_batch(
    make, failure, transient, halt
):
    """Both send paths call the same helper: for one row or a batch's rows, a provider's
    429/5xx or an SMTP 4xx waits and retries (the rows noted), bad credentials pause the
    campaign for a person, and a refusal is left to the caller's per-row policy."""
    for pks in ([7], [7, 8, 9]):
        result = sending.ChunkResult()
        assert sending._provider_failure(make(), pks, result).name == failure
        assert bool(result.transient) is transient
        assert bool(result.halt) is halt
        assert result.failed == []


def test_an_error_that_is_no_providers_answer_is_raised_not_blamed_on_recipients():
    result = sending.ChunkResult()
    with pytest.raises(KeyError):
        sending._provider_failure(KeyError("slot_values"), [1, 2], result)
    assert (result.transient, result.halt, result.failed) == ("", "", [])
