"""A sent campaign's report in a real Chromium: sent by a real worker through the fake
Mailgun, the provider's webhooks posted through anymail's view, then the owner opens it."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.test import Client
from django.utils import timezone

from campaigns import services
from campaigns.models import Campaign, Delivery
from tests import provider_events
from tests.factories import ContactFactory
from tests.polling import wait_for
from tests.webhooks import mount_tracking

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PASSWORD = "a-long-test-password-42"
SHOP = "https://corner.example/shop/spring"


def _expect():
    from playwright.sync_api import expect

    return expect


@pytest.mark.worker
def test_owner_sees_what_the_blast_reached(
    page, stillhere, django_user_model, sender, esp, settings, celery_worker, tmp_path
):
    expect = _expect()
    django_user_model.objects.create_superuser("owner", "owner@corner.example", PASSWORD)
    settings.ANYMAIL = {**settings.ANYMAIL, **provider_events.anymail_settings()}
    mount_tracking(settings, "mailgun")
    for n in range(8):
        ContactFactory(email=f"customer{n}@example.com", first_name=f"C{n}")
    campaign = services.campaign_start(
        campaign=Campaign.objects.create(name="Still here", subject="Hi", body="We're open.")
    )
    assert wait_for(lambda: Campaign.objects.get(pk=campaign.pk).status == "sent", timeout=60)

    # The provider reports back: 6 delivered (one re-posted), 1 soft and 1 hard bounce,
    # 3 opens, 2 clicks on the shop link.
    client = Client()
    mailgun = provider_events.Mailgun
    deliveries = list(Delivery.objects.filter(campaign=campaign).select_related("contact"))
    assert len(deliveries) == 8 and all(d.message_id for d in deliveries)

    def post(kind, delivery, url=None):
        posted = mailgun.event(
            kind, delivery.contact.email, delivery.message_id, campaign.pk, timezone.now(), url
        )
        assert posted.post(client).status_code == 200
        return posted

    for delivery in deliveries[:6]:
        post("delivered", delivery)
    post("delivered", deliveries[0]).post(client)
    post("soft_bounce", deliveries[6])
    post("hard_bounce", deliveries[7])
    post("opened", deliveries[0])
    post("clicked", deliveries[1], SHOP)
    post("clicked", deliveries[2], SHOP)

    page.goto(stillhere.url + "/admin/login/")
    page.fill("#id_username", "owner")
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.goto(f"{stillhere.url}/admin/campaigns/campaign/{campaign.pk}/change/")

    report = page.locator("#campaign-report")
    expect(report).to_be_visible()
    shown = {
        "sent": ("8", None),
        "delivered": ("6", "75.0% of sent"),
        "bounced": ("2", "25.0% of sent"),
        "hard_bounced": ("1", "12.5% of sent"),
        "soft_bounced": ("1", "12.5% of sent"),
        "opened": ("3", "37.5% of sent"),
        "clicked": ("2", "25.0% of sent"),
        "complained": ("0", "0.0% of sent"),
        "failed": ("0", "0.0% of sent"),
    }
    for key, (count, rate) in shown.items():
        figure = page.locator(f"#report-{key}")
        expect(figure.locator(".count")).to_have_text(count)
        if rate:
            expect(figure.locator(".rate")).to_have_text(rate)
    expect(page.locator("#report-links td.url")).to_have_text(SHOP)
    expect(page.locator("#report-links td.clickers")).to_have_text("2")
    expect(page.locator("#report-csv")).to_be_visible()

    # Both charts were drawn by Chart.js, with the figures' own totals.
    totals = page.evaluate(
        """() => ["report-chart-sending", "report-chart-engagement"].map(id => {
            const chart = Chart.getChart(document.getElementById(id));
            if (!chart) return null;
            return chart.data.datasets.map(d => [d.label, d.data.reduce((a, b) => a + b, 0)]);
        })"""
    )
    assert totals == [[["Sent", 8], ["Delivered", 6]], [["Opened", 3], ["Clicked", 2]]]
    box = page.locator("#report-chart-sending").bounding_box()
    assert box and box["width"] > 200 and box["height"] > 100
    # For a person to look at (pytest keeps the last runs' tmp_path).
    page.screenshot(path=str(tmp_path / "report.png"), full_page=True)

    # The CSV the button leads to: every recipient, with what happened.
    with page.expect_download() as download:
        page.click("#report-csv")
    text = Path(download.value.path()).read_text(encoding="utf-8-sig")
    assert text.splitlines()[0].startswith("email,first_name,last_name,status,sent_at")
    assert len(text.splitlines()) == 9
    assert f"{deliveries[7].contact.email}," in text and ",hard," in text
