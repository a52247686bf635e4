"""The emergency blast in a real Chromium: from the admin index to sending, timed."""

from __future__ import annotations

import re
import time

import pytest

from audience.models import Segment
from campaigns.models import Campaign, SenderSettings
from tests.factories import ContactFactory, TagFactory

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PASSWORD = "a-long-test-password-42"


def _expect():
    from playwright.sync_api import expect

    return expect


@pytest.fixture
def owner(django_user_model):
    return django_user_model.objects.create_superuser("owner", "owner@corner.example", PASSWORD)


def _log_in(page, base_url: str) -> None:
    page.goto(base_url + "/admin/login/")
    page.fill("#id_username", "owner")
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    _expect()(page.locator("#emergency-link")).to_be_visible()


@pytest.mark.worker
def test_emergency_update_goes_out_from_the_admin_index_in_three_clicks(
    page, stillhere, owner, sender, mailoutbox, celery_worker
):
    expect = _expect()
    emails = [ContactFactory(email=f"customer{i}@example.com").email for i in range(5)]
    _log_in(page, stillhere.url)

    clicks = 0

    def click(locator) -> None:
        nonlocal clicks
        clicks += 1
        locator.click()

    started = time.monotonic()
    page.goto(stillhere.url + "/admin/")
    click(page.get_by_role("link", name="Send an emergency update"))
    click(page.get_by_role("button", name="Use “We're still here”"))
    # The confirmation page: who, how many, and the message as they will see it.
    expect(page.locator("#recipient-count")).to_have_text("5")
    frame = page.frame_locator("#preview-frame")
    expect(frame.get_by_text("https://corner.example/shop").first).to_be_visible()
    expect(frame.get_by_text("+1 415 555 0100")).to_be_visible()
    click(page.locator("#send-now"))
    # A handful of recipients may all be sent before the page has even loaded.
    expect(page.locator("#campaign-status")).to_have_text(re.compile("^(Sending|Sent)$"))
    elapsed = time.monotonic() - started

    print(f"emergency flow: admin index → sending in {elapsed:.2f} s, {clicks} clicks")
    assert clicks == 3
    assert elapsed < 60, f"index → sending took {elapsed:.1f} s"
    # The progress bar polls and the page shows the campaign finished.
    expect(page.locator("#campaign-status")).to_have_text("Sent", timeout=30_000)
    expect(page.locator("#p-sent")).to_have_text("5")
    campaign = Campaign.objects.get()
    assert campaign.is_emergency
    assert sorted(m.to[0] for m in mailoutbox) == sorted(emails)


def test_progress_bar_follows_the_campaign_live(page, stillhere, owner, sender):
    """The campaign page polls its progress endpoint and reloads when the status changes."""
    from django.utils import timezone

    expect = _expect()
    campaign = Campaign.objects.create(
        name="Live", subject="Hi", body="Hello", status=Campaign.Status.SENDING,
        total_count=10, started_at=timezone.now(),
    )  # fmt: skip
    _log_in(page, stillhere.url)
    page.goto(f"{stillhere.url}/admin/campaigns/campaign/{campaign.pk}/change/")
    expect(page.locator("#p-remaining")).to_have_text("10")
    expect(page.locator("#pause-button")).to_be_visible()

    Campaign.objects.filter(pk=campaign.pk).update(sent_count=4, failed_count=1)
    expect(page.locator("#p-sent")).to_have_text("4")
    expect(page.locator("#p-failed")).to_have_text("1")
    expect(page.locator("#p-remaining")).to_have_text("5")
    assert page.locator("#progress-sent").evaluate("el => el.style.width") == "40%"

    Campaign.objects.filter(pk=campaign.pk).update(
        sent_count=9, status=Campaign.Status.SENT, finished_at=timezone.now()
    )
    expect(page.locator("#campaign-status")).to_have_text("Sent")
    expect(page.locator("#pause-button")).to_have_count(0)  # reloaded: no more buttons


def test_emergency_send_is_blocked_until_the_postal_address_is_set(page, stillhere, owner):
    expect = _expect()
    sender = SenderSettings.load()
    sender.from_email = "hello@corner.example"
    sender.save()
    ContactFactory()
    _log_in(page, stillhere.url)
    page.click("#emergency-link")
    expect(page.locator("#sender-problems")).to_contain_text("postal address")
    page.get_by_role("button", name="Use “We're still here”").click()
    expect(page.locator("#send-now")).to_be_disabled()
    # The link in the warning leads to the settings and back to this page once saved.
    page.get_by_role("link", name="Fix the sender settings").click()
    page.fill("#id_postal_address", "1 High Street, Springfield")
    page.get_by_role("button", name="Save", exact=True).click()
    expect(page.locator("#send-now")).to_be_enabled()
    expect(page.locator("#sender-problems")).to_have_count(0)


def test_segment_rule_builder_writes_the_rules_and_counts_live(page, stillhere, owner):
    expect = _expect()
    vip = TagFactory(name="VIP")
    for i in range(3):
        contact = ContactFactory(email=f"vip{i}@example.com")
        if i < 2:
            contact.tags.add(vip)
    _log_in(page, stillhere.url)
    page.goto(stillhere.url + "/admin/audience/segment/add/")
    page.fill("#id_name", "VIPs")
    expect(page.locator("#segment-count")).to_contain_text("Reaches 3 subscribed people")
    page.click("#add-rule")  # a "has tag" rule, with the first tag filled in
    expect(page.locator("#segment-count")).to_contain_text("Reaches 2 subscribed people")
    page.locator("#rule-builder select[aria-label=condition]").select_option("lacks")
    expect(page.locator("#segment-count")).to_contain_text("Reaches 1 subscribed person")
    page.get_by_role("button", name="Save", exact=True).click()
    segment = Segment.objects.get(name="VIPs")
    assert segment.rules == [{"field": "tag", "op": "lacks", "value": "VIP"}]
