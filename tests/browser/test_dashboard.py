"""The owner's dashboard on the admin index, in a real Chromium: figures and the chart."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from campaigns.models import Campaign, CampaignReport
from tests.dashboard_seed import seed_dashboard_audience

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PASSWORD = "a-long-test-password-42"


def _chart(page) -> dict:
    """What Chart.js itself holds for the signups canvas (None if no chart was made)."""
    return page.evaluate(
        """() => {
          const chart = Chart.getChart(document.getElementById("signups-chart"));
          if (!chart) return null;
          return {labels: chart.data.labels,
                  datasets: chart.data.datasets.map(d => ({label: d.label,
                    total: d.data.reduce((a, b) => a + b, 0)})),
                  width: chart.width, height: chart.height};
        }"""
    )


def test_the_owner_sees_the_audience_the_signups_chart_and_the_last_campaign(
    page, stillhere, django_user_model, tmp_path
):
    from playwright.sync_api import expect

    expected = seed_dashboard_audience()
    started = timezone.now() - timedelta(minutes=3)
    outage = Campaign.objects.create(
        name="Instagram is down",
        subject="We're still here",
        body="Hi",
        status=Campaign.Status.SENT,
        is_emergency=True,
        started_at=started,
        finished_at=started + timedelta(minutes=1),
        total_count=5,
        sent_count=4,
        failed_count=1,
    )
    # The provider's events, as campaigns.feedback counts them.
    CampaignReport.objects.create(campaign=outage, delivered=3, opened=2, clicked=1)
    django_user_model.objects.create_superuser("owner", "owner@corner.example", PASSWORD)

    page.goto(stillhere.url + "/admin/login/")
    page.fill("#id_username", "owner")
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")

    expect(page.locator("#emergency-link")).to_be_visible()
    expect(page.locator("#dash-reach-email")).to_have_text("12")
    expect(page.locator("#dash-reach-phone")).to_have_text("3")
    expect(page.locator("#dash-status-pending")).to_have_text("1")
    expect(page.locator("#dash-status-subscribed")).to_have_text("12")
    expect(page.locator("#dash-total")).to_have_text("16")

    chart = _chart(page)
    assert chart is not None, "Chart.js drew no chart on the signups canvas"
    assert chart["width"] > 0 and chart["height"] > 0
    assert len(chart["labels"]) == 30
    assert {d["label"]: d["total"] for d in chart["datasets"] if d["total"]} == {
        "Signup form": 3 + 1,
        "Import": 2,
        "Admin": 1,
    }
    expect(page.locator("#dash-signups-total")).to_have_text(str(expected["signups_30"]))

    page.get_by_role("button", name="90 days").click()
    expect(page.locator("#dash-signups-total")).to_have_text(str(expected["signups_90"]))
    expect(page.locator("#dash-signups-caption")).to_have_text("new contacts in the last 90 days")
    chart = _chart(page)
    assert len(chart["labels"]) == 90
    assert {d["label"]: d["total"] for d in chart["datasets"]} == expected["by_source_90"]

    page.get_by_role("button", name="By signup form").click()
    chart = _chart(page)
    assert {d["label"]: d["total"] for d in chart["datasets"]} == expected["by_form_90"]
    expect(page.get_by_role("button", name="By signup form")).to_have_attribute(
        "aria-pressed", "true"
    )

    row = page.locator(f"#dash-campaign-{outage.pk}")
    expect(row.get_by_role("link", name="Instagram is down")).to_be_visible()
    expect(row.locator(".dash-sent")).to_have_text("4 (80.0%)")
    expect(row.locator(".dash-failed")).to_have_text("1 (20.0%)")
    expect(row.locator(".dash-opened")).to_have_text("2 (50.0%)")
    expect(row.locator(".dash-clicked")).to_have_text("1 (25.0%)")
    expect(row.locator(".dash-delivered")).to_have_text("3 (75.0%)")
    # For a person to look at (pytest keeps the last runs' tmp_path).
    page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
    print(f"dashboard screenshot: {tmp_path / 'dashboard.png'}")
