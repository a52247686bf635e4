"""The campaign admin, driven like an owner would with Django's test client."""

import json
import re
import time
from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse
from django.utils import timezone

from audience.models import Contact, Segment
from campaigns.models import Campaign, Delivery, SenderSettings
from tests.factories import ContactFactory, TagFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def audience():
    vip = TagFactory(name="VIP")
    people = [
        ContactFactory(email="ann@example.com", first_name="Ann"),
        ContactFactory(email="bob@example.com", first_name="Bob"),
        ContactFactory(email="cat@example.com", first_name="Cat"),
    ]
    people[0].tags.add(vip)
    ContactFactory(email="gone@example.com", status=Contact.Status.UNSUBSCRIBED)
    ContactFactory(email="wait@example.com", status=Contact.Status.PENDING)
    return people


def _campaign(**fields):
    values = {
        "name": "Spring news",
        "subject": "Hello {{ first_name|default:'friend' }}",
        "body": "Hi **{{ first_name }}**, our spring range is in.",
    }
    values.update(fields)
    return Campaign.objects.create(**values)


def _url(name, *args):
    return reverse(f"admin:campaigns_campaign_{name}", args=args)


# --- index, sender settings ---------------------------------------------------------


def test_admin_index_leads_with_the_emergency_entry(admin_client):
    page = admin_client.get(reverse("admin:index")).content.decode()
    assert "Send an emergency update" in page
    assert _url("emergency") in page
    # At the top: before the list of apps.
    assert page.index("Send an emergency update") < page.index('id="content-main"')


def test_admin_index_hides_the_emergency_entry_from_staff_who_cannot_send(
    client, django_user_model
):
    user = django_user_model.objects.create_user("viewer", password="pw-123456", is_staff=True)
    client.force_login(user)
    assert "Send an emergency update" not in client.get(reverse("admin:index")).content.decode()


def test_sender_settings_list_goes_straight_to_the_single_row(admin_client):
    response = admin_client.get(reverse("admin:campaigns_sendersettings_changelist"))
    assert response.status_code == 302
    assert response.url == reverse("admin:campaigns_sendersettings_change", args=[1])
    assert admin_client.get(response.url).status_code == 200
    assert SenderSettings.objects.count() == 1
    index = admin_client.get(reverse("admin:index")).content.decode()
    assert reverse("admin:campaigns_sendersettings_add") not in index


def test_sender_settings_save_returns_to_the_page_that_sent_us(admin_client, sender):
    back = _url("send", _campaign().pk)
    url = reverse("admin:campaigns_sendersettings_change", args=[sender.pk]) + f"?next={back}"
    data = {
        "from_name": "Corner Shop", "from_email": "new@corner.example", "reply_to": "",
        "postal_address": "2 Low Road", "shop_url": "", "phone": "", "logo_url": "",
        "accent_color": "#112233", "rate_per_second": 0, "rate_per_hour": 0, "_save": "Save",
    }  # fmt: skip
    response = admin_client.post(url, data)
    assert response.status_code == 302
    assert response.url == back
    sender.refresh_from_db()
    assert sender.from_email == "new@corner.example"


# --- segments -------------------------------------------------------------------------


def test_segment_is_saved_with_valid_rules_and_shows_its_count(admin_client, audience):
    rules = [{"field": "tag", "op": "has", "value": "vip"}]
    response = admin_client.post(
        reverse("admin:audience_segment_add"),
        {"name": "VIPs", "match": "all", "rules": json.dumps(rules), "_continue": "1"},
    )
    assert response.status_code == 302, response.content.decode()
    segment = Segment.objects.get(name="VIPs")
    assert segment.rules == rules
    page = admin_client.get(reverse("admin:audience_segment_change", args=[segment.pk]))
    assert page.status_code == 200
    assert page.context["adminform"].form.instance == segment
    html = page.content.decode()
    assert "Subscribed recipients now" in html
    assert '<div class="readonly">1</div>' in html  # Ann: the one subscribed VIP
    assert 'id="rule-vocabulary"' in html


def test_segment_with_bad_rules_is_refused_with_the_reason(admin_client):
    rules = [{"field": "tag", "op": "has", "value": "nobody-has-this"}]
    response = admin_client.post(
        reverse("admin:audience_segment_add"),
        {"name": "Broken", "match": "all", "rules": json.dumps(rules)},
    )
    assert response.status_code == 200
    assert "Rule 1: there is no tag named" in response.content.decode()
    assert not Segment.objects.exists()


def test_segment_live_count_counts_subscribed_matches(admin_client, audience):
    url = reverse("admin:audience_segment_count")
    rules = [{"field": "tag", "op": "lacks", "value": "VIP"}]
    response = admin_client.get(url, {"match": "all", "rules": json.dumps(rules)})
    assert response.json() == {"count": 2}  # bob and cat; not the unsubscribed or pending
    response = admin_client.get(url, {"rules": json.dumps([{"field": "status", "op": "x"}])})
    assert response.status_code == 400
    assert response.json()["errors"][0].startswith("Rule 1:")
    assert admin_client.get(url, {"rules": "{not json"}).status_code == 400


# --- composing ---------------------------------------------------------------------------


def _compose_data(**fields):
    data = {
        "name": "Spring news",
        "subject": 'Spring is here, {{ first_name|default:"friend" }}',
        "preheader": "",
        "body": "Hello **{{ first_name }}**",
        "audience": "everyone",
        "segment": "",
        "send_mode": "per_message",
    }
    data.update(fields)
    return data


def test_composing_a_campaign_saves_a_draft_and_opens_its_page(admin_client, audience, sender):
    assert admin_client.get(reverse("admin:campaigns_campaign_add")).status_code == 200
    response = admin_client.post(reverse("admin:campaigns_campaign_add"), _compose_data())
    campaign = Campaign.objects.get()
    assert response.status_code == 302
    assert response.url == reverse("admin:campaigns_campaign_change", args=[campaign.pk])
    assert campaign.status == Campaign.Status.DRAFT
    assert campaign.created_by == "admin"
    page = admin_client.get(response.url).content.decode()
    assert _url("send", campaign.pk) in page
    assert _url("preview", campaign.pk) in page
    assert 'id="test-send-form"' in page


def test_bad_merge_syntax_is_refused_when_composing(admin_client):
    response = admin_client.post(
        reverse("admin:campaigns_campaign_add"), _compose_data(body="Hello {{ first_name ")
    )
    assert response.status_code == 200
    assert "Merge field" in response.content.decode()
    assert not Campaign.objects.exists()


def test_segment_audience_needs_a_segment(admin_client):
    response = admin_client.post(
        reverse("admin:campaigns_campaign_add"), _compose_data(audience="segment")
    )
    assert response.status_code == 200
    assert "Choose the segment to send to." in response.content.decode()


def test_audience_live_count(admin_client, audience):
    vip = audience[0].tags.get()
    url = _url("audience_count")
    assert admin_client.get(url, {"audience": "everyone"}).json() == {"count": 3}
    assert admin_client.get(url, {"audience": "tags", "tags": [vip.pk]}).json() == {"count": 1}
    segment = Segment.objects.create(
        name="Not VIP", rules=[{"field": "tag", "op": "lacks", "value": "VIP"}]
    )
    response = admin_client.get(url, {"audience": "segment", "segment": segment.pk})
    assert response.json() == {"count": 2}


def test_a_sent_campaign_is_read_only(admin_client):
    campaign = _campaign(status=Campaign.Status.SENT)
    page = admin_client.get(reverse("admin:campaigns_campaign_change", args=[campaign.pk]))
    assert page.status_code == 200
    assert "body" not in page.context["adminform"].form.fields
    assert 'id="progress-block"' in page.content.decode()


# --- preview and test send ----------------------------------------------------------


def test_preview_renders_the_message_as_the_chosen_contact(admin_client, audience, sender):
    campaign = _campaign()
    response = admin_client.get(_url("preview", campaign.pk), {"contact": "bob@example.com"})
    assert response.status_code == 200
    assert response.context["contact"].email == "bob@example.com"
    assert "<strong>Bob</strong>" in response.context["message"].html
    assert "Hello Bob" in response.content.decode()
    assert 'sandbox srcdoc="' in response.content.decode()


def test_preview_without_a_contact_uses_the_first_recipient(admin_client, audience, sender):
    campaign = _campaign()
    response = admin_client.get(_url("preview", campaign.pk))
    assert response.context["contact"].email == "ann@example.com"


def test_test_send_mails_the_given_addresses(admin_client, audience, sender, mailoutbox):
    campaign = _campaign()
    response = admin_client.post(
        _url("test_send", campaign.pk),
        {"emails": "me@corner.example, partner@corner.example", "as_contact": "cat@example.com"},
        follow=True,
    )
    assert response.status_code == 200
    assert sorted(m.to[0] for m in mailoutbox) == ["me@corner.example", "partner@corner.example"]
    assert all("Cat" in m.subject for m in mailoutbox)
    assert "Sent 2 test message(s)" in response.content.decode()
    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.DRAFT
    assert not Delivery.objects.exists()


def test_test_send_refuses_a_bad_address(admin_client, sender, mailoutbox):
    campaign = _campaign()
    response = admin_client.post(
        _url("test_send", campaign.pk), {"emails": "not-an-address"}, follow=True
    )
    assert "Test not sent" in response.content.decode()
    assert mailoutbox == []


# --- scheduling, confirmation, sending ------------------------------------------------


def test_scheduling_sets_the_time(admin_client, sender):
    campaign = _campaign()
    when = timezone.now() + timedelta(days=1)
    admin_client.post(_url("schedule", campaign.pk), {"when": when.strftime("%Y-%m-%dT%H:%M")})
    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.SCHEDULED
    assert campaign.scheduled_at.strftime("%Y-%m-%d %H:%M") == when.strftime("%Y-%m-%d %H:%M")


def test_unscheduling_returns_the_campaign_to_draft(admin_client, sender):
    campaign = _campaign()
    when = timezone.now() + timedelta(hours=3)
    admin_client.post(_url("schedule", campaign.pk), {"when": when.strftime("%Y-%m-%dT%H:%M")})
    page = admin_client.get(reverse("admin:campaigns_campaign_change", args=[campaign.pk]))
    assert 'id="unschedule-button"' in page.content.decode()
    admin_client.post(_url("unschedule", campaign.pk))
    campaign.refresh_from_db()
    assert (campaign.status, campaign.scheduled_at) == (Campaign.Status.DRAFT, None)


def test_scheduling_in_the_past_is_refused(admin_client, sender):
    campaign = _campaign()
    response = admin_client.post(
        _url("schedule", campaign.pk), {"when": "2001-01-01T10:00"}, follow=True
    )
    assert "Choose a time in the future" in response.content.decode()
    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.DRAFT


def test_confirmation_page_shows_count_subject_sender_and_preview(admin_client, audience, sender):
    campaign = _campaign(audience=Campaign.Audience.TAGS)
    campaign.tags.add(audience[0].tags.get())
    response = admin_client.get(_url("send", campaign.pk))
    page = response.content.decode()
    assert response.context["count"] == 1
    assert 'id="recipient-count">1<' in page
    assert "Corner Shop &lt;hello@corner.example&gt;" in page
    assert campaign.subject.replace("'", "&#x27;") in page
    assert "Send now to 1 person" in page
    assert "Hello Ann" in page  # the rendered preview, as the first recipient


def test_confirmation_counts_everyone_subscribed(admin_client, audience, sender):
    response = admin_client.get(_url("send", _campaign().pk))
    assert response.context["count"] == 3
    assert "Send now to 3 people" in response.content.decode()


def test_sending_is_refused_without_postal_address(admin_client, audience, sender):
    sender.postal_address = ""
    sender.save()
    campaign = _campaign()
    page = admin_client.get(_url("send", campaign.pk)).content.decode()
    assert 'id="sender-problems"' in page
    assert "postal address" in page.lower()
    assert reverse("admin:campaigns_sendersettings_change", args=[sender.pk]) in page
    assert 'id="send-now" disabled' in page

    response = admin_client.post(_url("send", campaign.pk), follow=True)
    assert "Not sent" in response.content.decode()
    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.DRAFT
    assert not Delivery.objects.exists()


def test_sending_is_refused_without_from_address(admin_client, audience, sender):
    sender.from_email = ""
    sender.save()
    campaign = _campaign()
    page = admin_client.get(reverse("admin:campaigns_campaign_change", args=[campaign.pk]))
    assert 'id="sender-problems"' in page.content.decode()
    admin_client.post(_url("send", campaign.pk))
    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.DRAFT


def test_send_now_snapshots_recipients_and_starts_sending(
    admin_client, audience, sender, django_capture_on_commit_callbacks
):
    campaign = _campaign()
    # The chunk tasks are dispatched on commit; here we look only at what starting did.
    with django_capture_on_commit_callbacks(execute=False):
        response = admin_client.post(_url("send", campaign.pk))
    assert response.status_code == 302
    assert response.url == reverse("admin:campaigns_campaign_change", args=[campaign.pk])
    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.SENDING
    assert campaign.total_count == 3
    assert set(Delivery.objects.values_list("contact__email", flat=True)) == {
        "ann@example.com", "bob@example.com", "cat@example.com"}  # fmt: skip


def test_pause_resume_and_cancel_buttons(
    admin_client, audience, sender, django_capture_on_commit_callbacks
):
    campaign = _campaign()
    with django_capture_on_commit_callbacks(execute=False):
        admin_client.post(_url("send", campaign.pk))
        admin_client.post(_url("pause", campaign.pk))
    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.PAUSED
    page = admin_client.get(reverse("admin:campaigns_campaign_change", args=[campaign.pk]))
    assert 'id="resume-button"' in page.content.decode()

    with django_capture_on_commit_callbacks(execute=False):
        admin_client.post(_url("resume", campaign.pk))
    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.SENDING

    with django_capture_on_commit_callbacks(execute=False):
        admin_client.post(_url("cancel", campaign.pk))
    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.CANCELLED


def test_progress_endpoint_reports_the_counters(admin_client):
    started = timezone.now() - timedelta(seconds=5)
    campaign = _campaign(status=Campaign.Status.SENDING, total_count=10, sent_count=4,
                         failed_count=1, started_at=started)  # fmt: skip
    data = admin_client.get(_url("progress", campaign.pk)).json()
    assert data["status"] == "sending"
    assert (data["total"], data["sent"], data["failed"], data["remaining"]) == (10, 4, 1, 5)
    assert data["rate_per_second"] > 0
    assert data["eta_seconds"] is not None


def test_views_need_a_staff_login(client):
    campaign = _campaign()
    for url in (_url("send", campaign.pk), _url("progress", campaign.pk), _url("emergency")):
        response = client.get(url)
        assert response.status_code == 302
        assert "/admin/login/" in response.url


# --- the emergency flow --------------------------------------------------------------------


def test_emergency_page_offers_the_starters(admin_client, audience, sender):
    page = admin_client.get(_url("emergency")).content.decode()
    for title in ("We&#x27;re still here", "We&#x27;re back", "Your order during the outage"):
        assert title in page
    assert "Everyone subscribed (3)" in page


def test_choosing_a_starter_makes_a_prefilled_emergency_campaign_and_asks_to_confirm(
    admin_client, audience, sender
):
    response = admin_client.post(_url("emergency"), {"starter": "still-here", "segment": ""})
    campaign = Campaign.objects.get()
    assert response.status_code == 302
    assert response.url == _url("send", campaign.pk)
    assert campaign.is_emergency
    assert campaign.status == Campaign.Status.DRAFT
    assert campaign.audience == Campaign.Audience.EVERYONE
    assert campaign.subject == "We're still here"
    assert "https://corner.example/shop" in campaign.body
    assert "+1 415 555 0100" in campaign.body
    assert "Reply to this email" in campaign.body

    confirm = admin_client.get(response.url)
    assert confirm.context["count"] == 3
    assert "https://corner.example/shop" in confirm.context["message"].html


def test_a_starter_can_go_to_a_segment(admin_client, audience, sender):
    segment = Segment.objects.create(
        name="VIPs", rules=[{"field": "tag", "op": "has", "value": "VIP"}]
    )
    admin_client.post(_url("emergency"), {"starter": "order-during-outage", "segment": segment.pk})
    campaign = Campaign.objects.get()
    assert (campaign.audience, campaign.segment) == (Campaign.Audience.SEGMENT, segment)
    assert admin_client.get(_url("send", campaign.pk)).context["count"] == 1


def test_starter_leaves_out_what_the_sender_has_not_set(admin_client, audience, sender):
    sender.phone = ""
    sender.shop_url = ""
    sender.save()
    admin_client.post(_url("emergency"), {"starter": "still-here"})
    body = Campaign.objects.get().body
    assert "Call or text" not in body
    assert "website" not in body
    assert "Reply to this email" in body


@pytest.mark.worker
def test_emergency_flow_sends_to_every_subscribed_contact(
    admin_client, audience, sender, mailoutbox, celery_worker
):
    response = admin_client.post(_url("emergency"), {"starter": "still-here"})
    campaign = Campaign.objects.get()
    admin_client.post(response.url)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        campaign.refresh_from_db()
        if campaign.status == Campaign.Status.SENT:
            break
        time.sleep(0.1)
    assert campaign.status == Campaign.Status.SENT
    assert sorted(m.to[0] for m in mailoutbox) == [
        "ann@example.com", "bob@example.com", "cat@example.com"]  # fmt: skip
    assert all(m.subject == "We're still here" for m in mailoutbox)
    progress = admin_client.get(_url("progress", campaign.pk)).json()
    assert (progress["sent"], progress["remaining"]) == (3, 0)


def test_a_failed_campaign_is_sent_again_as_a_duplicate_draft(admin_client):
    vip = TagFactory(name="Regulars")
    failed = Campaign.objects.create(
        name="Still here", subject="We're still here", body="Hi {{ first_name }}",
        audience=Campaign.Audience.TAGS, status=Campaign.Status.FAILED, is_emergency=True,
        status_reason="The postal address is missing",
    )  # fmt: skip
    failed.tags.add(vip)
    response = admin_client.post(
        "/admin/campaigns/campaign/",
        {"action": "duplicate_selected", "_selected_action": [str(failed.pk)]},
    )
    copy = Campaign.objects.exclude(pk=failed.pk).get()
    assert response.status_code == 302
    assert response["Location"] == f"/admin/campaigns/campaign/{copy.pk}/change/"
    assert (copy.status, copy.subject, copy.body, copy.audience, copy.is_emergency) == (
        "draft", "We're still here", "Hi {{ first_name }}", "tags", True)  # fmt: skip
    assert list(copy.tags.all()) == [vip]
    assert copy.created_by == "admin"
    failed.refresh_from_db()
    assert failed.status == "failed"


# --- what a role may see and do ------------------------------------------------------------


def _staff(client, django_user_model, *codenames, username="clerk"):
    user = django_user_model.objects.create_user(username, password="pw-123456", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    client.force_login(user)
    return user


def _page(response) -> str:
    """The page without what differs between two renders of the same thing: the CSRF
    token and the time stamp in signed links."""
    page = response.content.decode()
    page = re.sub(r'name="csrfmiddlewaretoken" value="[^"]*"', "", page)
    return re.sub(r"(/[up]/[\w-]+):\w+:[\w-]+/", r"\1/", page)


def _link_stem(url: str) -> str:
    return url.rsplit(":", 2)[0]  # the signed payload, without time stamp and signature


def test_preview_without_view_contact_shows_a_sample_and_never_tells_if_an_address_exists(
    client, django_user_model, audience, sender
):
    from campaigns.rendering import contact_links

    _staff(client, django_user_model, "view_campaign")
    campaign = _campaign()
    url = _url("preview", campaign.pk)
    known = client.get(url, {"contact": "bob@example.com"})
    unknown = client.get(url, {"contact": "nobody@example.com"})
    plain = client.get(url)
    assert known.status_code == unknown.status_code == plain.status_code == 200
    assert _page(known) == _page(unknown) == _page(plain)
    assert known.context["contact"].pk == 0
    page = known.content.decode()
    assert "Hello Ada" in page
    assert "made-up sample contact" in page
    assert 'id="preview-as"' not in page
    for person in audience:
        assert person.first_name not in page.replace("Ada Lovelace", "")
        assert person.email not in page
        for link in contact_links(person):
            assert _link_stem(link) not in page


def test_preview_with_view_contact_shows_the_chosen_contact(
    client, django_user_model, audience, sender
):
    _staff(client, django_user_model, "view_campaign", "view_contact")
    response = client.get(_url("preview", _campaign().pk), {"contact": "bob@example.com"})
    assert response.context["contact"].email == "bob@example.com"
    assert "Hello Bob" in response.content.decode()


def test_confirmation_page_without_view_contact_previews_a_sample(
    client, django_user_model, audience, sender
):
    _staff(client, django_user_model, "view_campaign", "send_campaign")
    response = client.get(_url("send", _campaign().pk))
    assert response.context["contact"].pk == 0
    assert "Hello Ann" not in response.content.decode()
    assert "Send now to 3 people" in response.content.decode()


def test_test_send_as_a_contact_without_view_contact_uses_the_sample_whatever_was_typed(
    client, django_user_model, audience, sender, mailoutbox
):
    from campaigns.rendering import contact_links

    _staff(client, django_user_model, "view_campaign", "change_campaign")
    campaign = _campaign()
    page = client.get(reverse("admin:campaigns_campaign_change", args=[campaign.pk]))
    assert 'name="as_contact"' not in page.content.decode()
    answers = []
    for as_contact in ("cat@example.com", "nobody@example.com"):
        response = client.post(
            _url("test_send", campaign.pk),
            {"emails": "me@corner.example, bob@example.com", "as_contact": as_contact},
            follow=True,
        )
        answers.append([str(m) for m in response.context["messages"]])
    assert answers[0] == answers[1]
    assert "Sent 2 test message(s)" in answers[0][0]
    assert len(mailoutbox) == 4
    for message in mailoutbox:
        assert "Ada" in message.subject
        html = message.alternatives[0][0]
        for person in audience:  # Bob's own address gets the sample too, not his links
            assert person.first_name not in message.subject
            for link in contact_links(person):
                assert _link_stem(link) not in message.body
                assert _link_stem(link) not in html


def test_test_send_with_view_contact_still_refuses_an_unknown_contact(
    client, django_user_model, audience, sender, mailoutbox
):
    _staff(client, django_user_model, "view_campaign", "change_campaign", "view_contact")
    response = client.post(
        _url("test_send", _campaign().pk),
        {"emails": "me@corner.example", "as_contact": "nobody@example.com"},
        follow=True,
    )
    assert "There is no contact nobody@example.com" in response.content.decode()
    assert mailoutbox == []


def test_editing_a_campaign_does_not_allow_sending_it(
    client, django_user_model, audience, sender, django_capture_on_commit_callbacks
):
    _staff(client, django_user_model, "view_campaign", "change_campaign", "add_campaign")
    campaign = _campaign()
    page = client.get(reverse("admin:campaigns_campaign_change", args=[campaign.pk]))
    html = page.content.decode()
    assert 'id="send-link"' not in html
    assert 'id="schedule-form"' not in html
    assert 'id="no-send-permission"' in html

    confirm = client.get(_url("send", campaign.pk))
    assert confirm.status_code == 200
    assert 'id="send-form"' not in confirm.content.decode()
    assert 'id="no-send-permission"' in confirm.content.decode()

    when = (timezone.now() + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M")
    with django_capture_on_commit_callbacks(execute=True):
        assert client.post(_url("send", campaign.pk)).status_code == 403
        assert client.post(_url("schedule", campaign.pk), {"when": when}).status_code == 403
    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.DRAFT
    assert campaign.scheduled_at is None
    assert not Delivery.objects.exists()

    paused = _campaign(name="Paused", status=Campaign.Status.PAUSED)
    page = client.get(reverse("admin:campaigns_campaign_change", args=[paused.pk]))
    assert 'id="resume-button"' not in page.content.decode()
    assert 'id="cancel-button"' in page.content.decode()  # stopping needs no more
    assert client.post(_url("resume", paused.pk)).status_code == 403
    paused.refresh_from_db()
    assert paused.status == Campaign.Status.PAUSED

    assert "Send an emergency update" not in client.get(reverse("admin:index")).content.decode()
    assert client.get(_url("emergency")).status_code == 403
    assert client.post(_url("emergency"), {"starter": "still-here"}).status_code == 403
    assert Campaign.objects.count() == 2


def test_the_send_permission_starts_schedules_and_resumes(
    client, django_user_model, audience, sender, django_capture_on_commit_callbacks
):
    # An approver: may look at campaigns and send them, not edit them.
    _staff(client, django_user_model, "view_campaign", "send_campaign")
    campaign = _campaign()
    when = (timezone.now() + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M")
    client.post(_url("schedule", campaign.pk), {"when": when})
    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.SCHEDULED

    with django_capture_on_commit_callbacks(execute=False):
        response = client.post(_url("send", campaign.pk))
    assert response.status_code == 302
    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.SENDING
    assert Delivery.objects.filter(campaign=campaign).count() == 3

    paused = _campaign(name="Paused", status=Campaign.Status.PAUSED)
    with django_capture_on_commit_callbacks(execute=False):
        client.post(_url("resume", paused.pk))
    paused.refresh_from_db()
    assert paused.status != Campaign.Status.PAUSED


def test_the_emergency_entry_needs_both_adding_and_sending(client, django_user_model, sender):
    _staff(client, django_user_model, "view_campaign", "add_campaign", "send_campaign")
    page = client.get(reverse("admin:index")).content.decode()
    assert "Send an emergency update" in page
    response = client.post(_url("emergency"), {"starter": "still-here"})
    assert response.status_code == 302
    assert Campaign.objects.get().is_emergency
