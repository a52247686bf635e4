"""The campaign page in a real Chromium says when a campaign switched to the failover
provider, and why."""

from __future__ import annotations

import pytest
from django.utils import timezone

from campaigns import providers
from campaigns.models import Campaign

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PASSWORD = "a-long-test-password-42"


def test_the_campaign_page_shows_the_switch_to_the_failover(page, stillhere, settings,
                                                            django_user_model):  # fmt: skip
    from playwright.sync_api import expect

    settings.EMAIL_PROVIDER = "mailgun"
    settings.EMAIL_FAILOVER_PROVIDER = "postmark"
    settings.EMAIL_FAILOVER_BACKEND = "anymail.backends.postmark.EmailBackend"
    settings.EMAIL_FAILOVER_OPTIONS = {"server_token": "pm-test"}
    django_user_model.objects.create_superuser("owner", "owner@corner.example", PASSWORD)
    campaign = Campaign.objects.create(
        name="We're still here", subject="Still here", body="Hi",
        status=Campaign.Status.SENT, started_at=timezone.now(), finished_at=timezone.now(),
        total_count=5000, sent_count=5000,
    )  # fmt: skip
    reason = "mailgun turned 2 chunks in a row away; mailgun said: 500 Injected failure"
    assert providers.campaign_provider_switch(campaign_id=campaign.pk, reason=reason)
    campaign.refresh_from_db()

    page.goto(stillhere.url + "/admin/login/")
    page.fill("#id_username", "owner")
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.goto(f"{stillhere.url}/admin/campaigns/campaign/{campaign.pk}/change/")
    expect(page.get_by_text("Switched to the failover provider")).to_be_visible()
    expect(page.locator("#provider-label")).to_have_text("postmark (failover)")
    expect(page.locator("#provider-switch-reason")).to_have_text(reason)
    shown = timezone.localtime(campaign.provider_switched_at).strftime("%Y-%m-%d %H:%M:%S")
    expect(page.locator("#provider-switched-at")).to_have_text(shown)
    # Inside the campaign panel, where the owner looks, not off the page.
    box = page.locator("#campaign-provider").bounding_box()
    assert box is not None and box["width"] <= page.viewport_size["width"]
