"""The campaign report, from the webhooks each provider really posts (tests/provider_events.py)
through anymail's tracking views, signed or authenticated as config/webhooks.py mounts
them: figures, duplicates, strangers, the soft-bounce rule, the recipients' CSV."""

import csv
import io

import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse
from django.utils import timezone

from audience.models import Contact
from campaigns import reports
from campaigns.models import Campaign, CampaignTimeline, Delivery, DeliveryChunk
from tests import provider_events
from tests.factories import ContactFactory
from tests.provider_events import PROVIDERS, at
from tests.webhooks import mount_tracking

pytestmark = pytest.mark.django_db

SHOP = "https://shop.example.com/spring?utm_source=stillhere"
PHONE = "https://shop.example.com/call"


def _sent_campaign(provider, emails, *, name="Still here", first=0):
    """A sent campaign whose deliveries carry the message ids the provider's API gave."""
    campaign = Campaign.objects.create(
        name=name, subject="We're still here", body="Hi", status=Campaign.Status.SENT,
        started_at=at(-1), finished_at=at(0), total_count=len(emails), sent_count=len(emails),
    )  # fmt: skip
    DeliveryChunk.objects.create(campaign=campaign, number=0, status="done")
    deliveries = {}
    for n, email in enumerate(emails):
        contact = Contact.objects.filter(email=email).first() or ContactFactory(email=email)
        deliveries[email] = Delivery.objects.create(
            campaign=campaign, contact=contact, status="sent", sent_at=at(0),
            message_id=provider.message_id(first + n),
        )  # fmt: skip
    return campaign, deliveries


@pytest.fixture
def webhooks(settings):
    settings.ANYMAIL = {**settings.ANYMAIL, **provider_events.anymail_settings()}

    def mount(provider):
        mount_tracking(settings, provider.name)

    return mount


def _post(client, provider, kind, delivery, when, url=None, *, mid=None):
    posted = provider.event(
        kind, delivery.contact.email, mid or delivery.message_id, delivery.campaign_id, when, url
    )
    response = posted.post(client)
    assert response.status_code == 200, response.content
    return posted


def _figures(campaign) -> dict:
    campaign.refresh_from_db()
    return {f.key: f.count for f in reports.campaign_report(campaign).figures}


@pytest.mark.parametrize("provider", PROVIDERS, ids=lambda p: p.name)
def test_report_counts_each_providers_events_once(client, webhooks, provider):
    webhooks(provider)
    people = ["ann@example.com", "bob@example.com", "cat@example.com", "dan@example.com",
              "eve@example.com"]  # fmt: skip
    campaign, d = _sent_campaign(provider, people)
    ann, bob, cat, dan, eve = (d[e] for e in people)

    # Ann: delivered (the provider posts it twice), opens, clicks the shop link twice
    # (once re-posted) and the phone link once.
    _post(client, provider, "delivered", ann, at(1)).post(client)
    _post(client, provider, "opened", ann, at(75))
    _post(client, provider, "clicked", ann, at(76), SHOP).post(client)
    _post(client, provider, "clicked", ann, at(80), SHOP)
    _post(client, provider, "clicked", ann, at(81), PHONE)
    # Bob: soft bounce, posted twice: one soft bounce, one in Bob's row.
    _post(client, provider, "soft_bounce", bob, at(2)).post(client)
    # Cat: hard bounce. Dan: delayed, then delivered, then opens (images on).
    _post(client, provider, "hard_bounce", cat, at(2))
    if provider.has_deferred:
        _post(client, provider, "deferred", dan, at(1)).post(client)
    _post(client, provider, "delivered", dan, at(3))
    _post(client, provider, "opened", dan, at(130))
    # Eve: an event whose message id is not the one we sent her: counted nowhere.
    _post(client, provider, "delivered", eve, at(3), mid=provider.message_id(999))
    # Someone we never mailed.
    stranger = provider.event("delivered", "nobody@example.net", ann.message_id,
                              campaign.pk, at(3))  # fmt: skip
    assert stranger.post(client).status_code == 200

    figures = _figures(campaign)
    assert figures == {
        "sent": 5, "delivered": 2, "deferred": 1 if provider.has_deferred else 0,
        "bounced": 2, "hard_bounced": 1, "soft_bounced": 1, "complained": 0,
        "unsubscribed": 0, "opened": 2, "clicked": 1, "failed": 0,
    }  # fmt: skip
    report = reports.campaign_report(campaign)
    assert report.figure("delivered").percent == "40.0%"
    assert report.figure("clicked").rate == pytest.approx(0.2)

    links = {link["url"]: link["clickers"] for link in reports.campaign_links(campaign)}
    assert links == {SHOP: 1, PHONE: 1}

    timeline = reports.campaign_timeline(campaign)
    assert [(t[:16], n) for t, n in timeline["delivered"]] == [
        ("2026-12-07T10:01", 1), ("2026-12-07T10:03", 1)]  # fmt: skip
    assert [(t[:13], n) for t, n in timeline["opened"]] == [
        ("2026-12-07T11", 1), ("2026-12-07T12", 1)]  # fmt: skip
    assert [(t[:13], n) for t, n in timeline["clicked"]] == [("2026-12-07T11", 1)]

    for delivery in d.values():
        delivery.refresh_from_db()
    assert eve.delivered_at is None
    assert ann.delivered_at == at(1) and ann.clicked_at == at(76)
    # What it means for the people: Cat is suppressed, Bob has one soft bounce in a row.
    statuses = dict(Contact.objects.values_list("email", "status"))
    assert statuses["cat@example.com"] == "bounced"
    assert statuses["bob@example.com"] == "subscribed"
    assert Contact.objects.get(email="bob@example.com").soft_bounce_count == 1
    assert not Contact.objects.filter(email="nobody@example.net").exists()


@pytest.mark.parametrize("provider", PROVIDERS, ids=lambda p: p.name)
def test_a_complaint_is_counted_once_and_suppresses(client, webhooks, provider):
    webhooks(provider)
    campaign, d = _sent_campaign(provider, ["angry@example.com", "fine@example.com"])
    angry = d["angry@example.com"]
    _post(client, provider, "complained", angry, at(5)).post(client)
    assert _figures(campaign)["complained"] == 1
    angry.contact.refresh_from_db()
    assert angry.contact.status == "complained"
    assert angry.contact.consent_events.get().method == f"provider-{provider.name}"


def test_a_soft_bounce_then_a_hard_one_counts_once_as_hard(client, webhooks):
    provider = provider_events.Postmark
    webhooks(provider)
    campaign, d = _sent_campaign(provider, ["full@example.com"])
    _post(client, provider, "soft_bounce", d["full@example.com"], at(1))
    _post(client, provider, "hard_bounce", d["full@example.com"], at(30))
    figures = _figures(campaign)
    assert (figures["bounced"], figures["hard_bounced"], figures["soft_bounced"]) == (1, 1, 0)


def test_events_before_the_first_post_create_the_report_and_the_page_shows_it(
    admin_client, webhooks
):
    provider = provider_events.Mailgun
    webhooks(provider)
    campaign, d = _sent_campaign(provider, ["ann@example.com", "bob@example.com"])
    page = admin_client.get(reverse("admin:campaigns_campaign_change", args=[campaign.pk]))
    assert 'id="campaign-report"' in page.content.decode()  # zeros before any event
    _post(admin_client, provider, "delivered", d["ann@example.com"], at(1))
    html = admin_client.get(
        reverse("admin:campaigns_campaign_change", args=[campaign.pk])
    ).content.decode()
    assert 'id="report-delivered"' in html
    assert "50.0% of sent" in html
    assert "vendor/chartjs/chart.umd.min.js" in html


def test_a_draft_has_no_report(admin_client):
    campaign = Campaign.objects.create(name="Draft", subject="S", body="B")
    html = admin_client.get(
        reverse("admin:campaigns_campaign_change", args=[campaign.pk])
    ).content.decode()
    assert 'id="campaign-report"' not in html


# --- Soft bounces in a row ---------------------------------------------------------------


def _soft_bounce_campaigns(client, n, email="full@example.com", kind="soft_bounce"):
    provider = provider_events.Postmark
    deliveries = []
    for i in range(n):
        _, d = _sent_campaign(provider, [email], name=f"News {i}", first=100 * i)
        _post(client, provider, kind, d[email], at(10 * i))
        deliveries.append(d[email])
    return deliveries


def test_three_soft_bounces_in_a_row_suppress_the_contact(client, webhooks):
    webhooks(provider_events.Postmark)
    _soft_bounce_campaigns(client, 2)
    contact = Contact.objects.get(email="full@example.com")
    assert (contact.status, contact.soft_bounce_count) == ("subscribed", 2)
    assert not contact.consent_events.exists()

    third = _soft_bounce_campaigns(client, 1)[0]
    # The provider's retry of the third one changes nothing more.
    _post(client, provider_events.Postmark, "soft_bounce", third, at(50))
    contact.refresh_from_db()
    assert (contact.status, contact.soft_bounce_count) == ("bounced", 3)
    event = contact.consent_events.get()
    assert (event.kind, event.method, event.status_before) == (
        "bounce", "provider-postmark", "subscribed")  # fmt: skip
    assert event.detail["soft_bounces"] == 3
    assert "SOFT_BOUNCE_LIMIT=3" in event.detail["reason"]


def test_a_delivered_message_resets_the_soft_bounce_row(client, webhooks):
    provider = provider_events.Postmark
    webhooks(provider)
    _soft_bounce_campaigns(client, 2)
    _, d = _sent_campaign(provider, ["full@example.com"], name="Delivered", first=900)
    _post(client, provider, "delivered", d["full@example.com"], at(40))
    contact = Contact.objects.get(email="full@example.com")
    assert contact.soft_bounce_count == 0
    _soft_bounce_campaigns(client, 2)
    contact.refresh_from_db()
    assert (contact.status, contact.soft_bounce_count) == ("subscribed", 2)


def test_one_message_deferred_many_times_is_one_soft_bounce(client, webhooks):
    # Mailgun reports each failed retry of one message as a temporary failure.
    provider = provider_events.Mailgun
    webhooks(provider)
    _, d = _sent_campaign(provider, ["slow@example.com"])
    for minute in (1, 15, 60, 240):
        _post(client, provider, "soft_bounce", d["slow@example.com"], at(minute))
    assert Contact.objects.get(email="slow@example.com").soft_bounce_count == 1


def test_soft_bounce_limit_is_a_setting(client, webhooks, settings):
    settings.SOFT_BOUNCE_LIMIT = 2
    webhooks(provider_events.Postmark)
    _soft_bounce_campaigns(client, 2)
    assert Contact.objects.get(email="full@example.com").status == "bounced"


def test_a_deferral_is_not_a_soft_bounce(client, webhooks):
    webhooks(provider_events.Postmark)
    _soft_bounce_campaigns(client, 3, kind="deferred")
    contact = Contact.objects.get(email="full@example.com")
    assert (contact.status, contact.soft_bounce_count) == ("subscribed", 0)


def test_a_soft_bounce_of_a_mail_we_did_not_send_counts_nowhere(client, webhooks):
    provider = provider_events.Postmark
    webhooks(provider)
    ContactFactory(email="full@example.com")
    for n in range(4):
        posted = provider.event("soft_bounce", "full@example.com", provider.message_id(500 + n),
                                "", at(n))  # fmt: skip
        assert posted.post(client).status_code == 200
    contact = Contact.objects.get(email="full@example.com")
    assert (contact.status, contact.soft_bounce_count) == ("subscribed", 0)


# --- The recipients' CSV -----------------------------------------------------------------


def _csv_url(campaign):
    return reverse("admin:campaigns_campaign_report_csv", args=[campaign.pk])


@pytest.fixture
def viewer(client, django_user_model):
    user = django_user_model.objects.create_user("viewer", password="pw-123456", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_campaign"))
    client.force_login(user)
    return user


def test_the_csv_needs_the_export_permission(client, viewer, webhooks):
    campaign, _ = _sent_campaign(provider_events.Postmark, ["ann@example.com"])
    page = client.get(reverse("admin:campaigns_campaign_change", args=[campaign.pk]))
    assert page.status_code == 200
    html = page.content.decode()
    assert 'id="report-csv-needs-permission"' in html and _csv_url(campaign) not in html
    assert client.get(_csv_url(campaign)).status_code == 403

    viewer.user_permissions.add(Permission.objects.get(codename="export_contact"))
    viewer = type(viewer).objects.get(pk=viewer.pk)  # fresh permission cache
    client.force_login(viewer)
    assert (
        _csv_url(campaign)
        in client.get(
            reverse("admin:campaigns_campaign_change", args=[campaign.pk])
        ).content.decode()
    )
    assert client.get(_csv_url(campaign)).status_code == 200


def test_the_csv_lists_every_recipient_and_what_happened(admin_client, webhooks, settings):
    provider = provider_events.Postmark
    webhooks(provider)
    people = ["ann@example.com", "bob@example.com", "cat@example.com"]
    campaign, d = _sent_campaign(provider, people)
    ContactFactory(email="not-mailed@example.com")
    Contact.objects.filter(email="bob@example.com").update(first_name='=HYPERLINK("x")')
    _post(admin_client, provider, "delivered", d["ann@example.com"], at(1))
    _post(admin_client, provider, "clicked", d["ann@example.com"], at(70), SHOP)
    _post(admin_client, provider, "hard_bounce", d["cat@example.com"], at(2))
    failed = ContactFactory(email="dora@example.com")
    Delivery.objects.create(campaign=campaign, contact=failed, status="failed",
                            error="550 rejected by provider")  # fmt: skip

    response = admin_client.get(_csv_url(campaign))
    assert response.status_code == 200
    assert response.streaming
    assert response["Content-Type"].startswith("text/csv")
    text = b"".join(response.streaming_content).decode("utf-8-sig")
    rows = {r["email"]: r for r in csv.DictReader(io.StringIO(text))}
    assert set(rows) == {*people, "dora@example.com"}
    ann, bob, cat = (rows[e] for e in people)
    assert ann["status"] == "sent" and ann["delivered_at"] == "2026-12-07T10:01:00+00:00"
    assert ann["opened_at"] == ann["clicked_at"] == "2026-12-07T11:10:00+00:00"
    assert (cat["bounced"], cat["bounced_at"]) == ("hard", "2026-12-07T10:02:00+00:00")
    assert bob["delivered_at"] == "" and bob["bounced"] == ""
    assert bob["first_name"] == '\'=HYPERLINK("x")'  # the formula guard of the export
    assert rows["dora@example.com"]["status"] == "failed"
    assert rows["dora@example.com"]["error"] == "550 rejected by provider"
    assert ann["message_id"] == d["ann@example.com"].message_id


def test_the_csv_reads_the_campaign_chunk_by_chunk(admin_client, settings, monkeypatch):
    # Several queries of a few chunks each: memory stays flat however big the campaign.
    monkeypatch.setattr(reports, "CSV_CHUNKS_PER_QUERY", 2)
    campaign = Campaign.objects.create(name="Big", subject="S", body="B", status="sent",
                                       started_at=timezone.now())  # fmt: skip
    for number in range(5):
        DeliveryChunk.objects.create(campaign=campaign, number=number, status="done")
        for i in range(3):
            contact = ContactFactory(email=f"p{number}-{i}@example.com")
            Delivery.objects.create(campaign=campaign, contact=contact, chunk=number, status="sent")
    batches = list(reports.delivery_rows(campaign))
    assert [len(b) for b in batches] == [6, 6, 3]
    emails = [row[0] for batch in batches for row in batch]
    assert emails == [f"p{n}-{i}@example.com" for n in range(5) for i in range(3)]


# --- The dashboard's summaries -----------------------------------------------------------


def test_campaign_summaries_give_each_campaigns_rates(
    client, webhooks, django_assert_max_num_queries
):
    provider = provider_events.Brevo
    webhooks(provider)
    first, d1 = _sent_campaign(provider, ["a@example.com", "b@example.com"], name="One")
    second, _ = _sent_campaign(provider, ["c@example.com"], name="Two", first=10)
    _post(client, provider, "delivered", d1["a@example.com"], at(1))
    _post(client, provider, "opened", d1["a@example.com"], at(61))
    _post(client, provider, "hard_bounce", d1["b@example.com"], at(1))
    draft = Campaign.objects.create(name="Draft", subject="S", body="B")
    campaigns = list(Campaign.objects.filter(pk__in=[first.pk, second.pk, draft.pk]).order_by("pk"))
    with django_assert_max_num_queries(1):
        summaries = reports.campaign_summaries(campaigns)
    one, two, three = summaries
    assert one["campaign"] == first and one["sent"] == 2
    assert (one["delivered_rate"], one["open_rate"], one["click_rate"], one["bounce_rate"]) == (
        0.5, 0.5, 0.0, 0.5)  # fmt: skip
    assert two["sent"] == 1 and two["delivered_rate"] == 0.0
    assert three["sent"] == 0 and three["delivered_rate"] is None


def test_sending_fills_the_sent_per_minute_line(db):
    from campaigns import tallies

    campaign = Campaign.objects.create(name="T", subject="S", body="B")
    tallies.timeline_add(campaign_id=campaign.pk, kind="sent", when=at(0.2), count=500)
    tallies.timeline_add(campaign_id=campaign.pk, kind="sent", when=at(0.9), count=500)
    tallies.timeline_add(campaign_id=campaign.pk, kind="sent", when=at(1.1), count=120)
    buckets = CampaignTimeline.objects.filter(campaign=campaign, kind="sent").order_by("start")
    assert [(b.start, b.count) for b in buckets] == [(at(0), 1000), (at(1), 120)]


# --- From a real send --------------------------------------------------------------------


def test_a_real_send_then_the_providers_webhooks_make_the_report(client, esp, sender, settings):
    """The sender (through the fake Mailgun) stores message ids and the sent-per-minute
    line; Mailgun's webhooks for those very messages fill in the rest."""
    from campaigns import sending, services

    settings.ANYMAIL = {**settings.ANYMAIL, **provider_events.anymail_settings()}
    mount_tracking(settings, "mailgun")
    settings.CAMPAIGN_CHUNK_SIZE = 2
    for n in range(5):
        ContactFactory(email=f"buyer{n}@example.com")
    campaign = services.campaign_start(
        campaign=Campaign.objects.create(name="Still here", subject="Hi", body="Hello")
    )
    for chunk in range(3):  # no worker here: the tasks wait for a commit that never comes
        sending.chunk_send(campaign_id=campaign.pk, chunk=chunk)
    campaign.refresh_from_db()
    assert campaign.sent_count == 5
    sent_line = reports.campaign_timeline(campaign)["sent"]
    assert sum(n for _, n in sent_line) == 5

    deliveries = list(Delivery.objects.filter(campaign=campaign).order_by("pk"))
    assert all(d.message_id for d in deliveries)
    mailgun = provider_events.Mailgun
    for delivery in deliveries[:4]:
        _post(client, mailgun, "delivered", delivery, timezone.now())
    _post(client, mailgun, "hard_bounce", deliveries[4], timezone.now())
    _post(client, mailgun, "clicked", deliveries[0], timezone.now(), SHOP).post(client)
    figures = _figures(campaign)
    assert (figures["sent"], figures["delivered"], figures["hard_bounced"]) == (5, 4, 1)
    assert (figures["opened"], figures["clicked"]) == (1, 1)
    assert reports.campaign_report(campaign).figure("delivered").percent == "80.0%"


def test_erasing_a_contact_takes_their_clicks_and_keeps_the_campaigns_figures(client, webhooks):
    from audience.services import contact_erase
    from campaigns.models import LinkClick

    provider = provider_events.Postmark
    webhooks(provider)
    campaign, d = _sent_campaign(provider, ["gone@example.com", "stay@example.com"])
    _post(client, provider, "clicked", d["gone@example.com"], at(61), SHOP)
    _post(client, provider, "clicked", d["stay@example.com"], at(62), SHOP)
    contact_erase(contact=d["gone@example.com"].contact, actor="owner")
    assert not Delivery.objects.filter(pk=d["gone@example.com"].pk).exists()
    assert list(LinkClick.objects.values_list("delivery_id", flat=True)) == [
        d["stay@example.com"].pk
    ]
    # The counts are anonymous: what the campaign reached does not change.
    assert _figures(campaign)["clicked"] == 2
    assert reports.campaign_links(campaign)[0]["clickers"] == 2


def test_failed_counts_the_senders_failures_and_the_providers_refusals(client, webhooks):
    provider = provider_events.Mailgun
    webhooks(provider)
    campaign, d = _sent_campaign(provider, ["a@example.com", "b@example.com", "c@example.com"])
    Campaign.objects.filter(pk=campaign.pk).update(failed_count=1)  # as the sender counts it
    _post(client, provider, "rejected", d["a@example.com"], at(1)).post(client)
    figures = _figures(campaign)
    assert figures["failed"] == 2
    assert reports.campaign_report(campaign).figure("failed").percent == "66.7%"
    d["a@example.com"].contact.refresh_from_db()
    assert d["a@example.com"].contact.status == "subscribed"  # a refusal is not a bounce
