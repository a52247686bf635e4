"""The admin index's dashboard: the last campaigns' rates, and the page an owner sees."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from campaigns.models import Campaign, CampaignReport
from campaigns.selectors import campaign_dashboard_rates, campaigns_recent
from tests.dashboard_seed import seed_dashboard_audience
from tests.factories import ContactFactory

pytestmark = pytest.mark.django_db


def _sent_campaign(name: str, *, minutes_ago: int, recipients: int, sent: int, failed: int, **kw):
    started = timezone.now() - timedelta(minutes=minutes_ago)
    return Campaign.objects.create(
        name=name,
        subject=name,
        body="Hi",
        status=Campaign.Status.SENT,
        started_at=started,
        finished_at=started + timedelta(minutes=1),
        total_count=recipients,
        sent_count=sent,
        failed_count=failed,
        **kw,
    )


def _reported(campaign: Campaign, *, delivered: int, opened: int, clicked: int) -> None:
    # What campaigns.feedback counts as the provider's events arrive.
    CampaignReport.objects.create(
        campaign=campaign, delivered=delivered, opened=opened, clicked=clicked
    )


@pytest.fixture
def campaigns():
    ContactFactory.create_batch(10)  # the campaigns' recipients, subscribed contacts too
    outage = _sent_campaign(
        "Instagram is down", minutes_ago=5, recipients=10, sent=8, failed=2, is_emergency=True
    )
    _reported(outage, delivered=8, opened=4, clicked=1)
    older = _sent_campaign("Spring news", minutes_ago=60 * 24, recipients=10, sent=10, failed=0)
    _reported(older, delivered=0, opened=0, clicked=0)
    Campaign.objects.create(name="Draft", subject="x", body="x")  # never started: not listed
    return outage, older


def test_last_campaigns_are_the_started_ones_newest_first(campaigns):
    outage, older = campaigns
    assert campaigns_recent() == [outage, older]


def test_rates_come_from_the_sending_and_the_report_counters(campaigns):
    outage, older = campaigns
    first, second = campaign_dashboard_rates([outage, older])
    assert (first["recipients"], first["sent"], first["failed"]) == (10, 8, 2)
    assert (first["sent_rate"], first["failed_rate"]) == (80.0, 20.0)
    # Opens and clicks are rates of the messages sent.
    assert (first["opened"], first["open_rate"]) == (4, 50.0)
    assert (first["clicked"], first["click_rate"]) == (1, 12.5)
    assert (first["delivered"], first["delivered_rate"]) == (8, 100.0)
    assert (second["opened"], second["open_rate"], second["clicked"]) == (0, 0.0, 0)


def test_the_rates_read_no_delivery_rows_whatever_the_campaigns_size(campaigns):
    outage, older = campaigns
    with CaptureQueriesContext(connection) as queries:
        rows = campaign_dashboard_rates([outage, older])
    assert [(row["opened"], row["clicked"]) for row in rows] == [(4, 1), (0, 0)]
    assert len(queries) == 1  # the report counters of both
    assert not [q for q in queries if "campaigns_delivery" in q["sql"]]


def test_nothing_sent_has_no_rates_rather_than_a_division_by_zero():
    campaign = _sent_campaign("Empty", minutes_ago=1, recipients=0, sent=0, failed=0)
    (row,) = campaign_dashboard_rates([campaign])
    assert (row["sent_rate"], row["open_rate"], row["click_rate"]) == (None, None, None)


def _text(html: str, element_id: str) -> str:
    start = html.index(f'id="{element_id}"')
    start = html.index(">", start) + 1
    return html[start : html.index("<", start)].strip()


def test_the_admin_index_shows_the_owner_the_figures_above_the_app_list(admin_client, campaigns):
    expected = seed_dashboard_audience()
    response = admin_client.get("/admin/")
    html = response.content.decode()
    # The ten campaign recipients are subscribed contacts too.
    assert _text(html, "dash-reach-email") == str(expected["reachable_by_email"] + 10)
    assert _text(html, "dash-reach-phone") == str(expected["reachable_by_phone"])
    assert _text(html, "dash-status-bounced") == "1"
    assert _text(html, "dash-total") == str(expected["total"] + 10)
    assert html.index('id="emergency-entry"') < html.index('id="dashboard"')
    assert html.index('id="dashboard"') < html.index('id="content-main"')
    outage, _ = campaigns
    row = html[html.index(f'id="dash-campaign-{outage.pk}"') :]
    row = row[: row.index("</tr>")]
    assert "Instagram is down" in row and "Emergency" in row
    assert '8 <span class="dash-rate">(80.0%)</span>' in row
    assert '4 <span class="dash-rate">(50.0%)</span>' in row
    assert 'src="/static/vendor/chartjs/chart.umd.min.js"' in html
    assert response.context["signups"]["by_form"]["Footer form"][-1] == 3


def test_the_dashboard_page_stays_a_few_queries(admin_client, campaigns):
    seed_dashboard_audience()
    admin_client.get("/admin/")  # the session and the content types, once
    with CaptureQueriesContext(connection) as queries:
        admin_client.get("/admin/")
    dashboard = [
        q["sql"] for q in queries if "audience_contact" in q["sql"] or "campaigns_" in q["sql"]
    ]
    # Statuses; the chart comes from the cache; the campaigns and their opens and clicks.
    assert len(dashboard) <= 4, dashboard


def test_a_user_who_may_not_see_contacts_sees_no_audience_figures(client, django_user_model):
    ContactFactory()
    user = django_user_model.objects.create_user("clerk", password="x", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_campaign"))
    client.force_login(user)
    html = client.get("/admin/").content.decode()
    assert 'id="dash-campaigns"' in html
    assert 'id="dash-audience"' not in html
    assert "signups-data" not in html


def test_a_big_list_says_its_figures_are_estimates_and_which_are_exact(admin_client, monkeypatch):
    from audience import dashboard

    seed_dashboard_audience()
    monkeypatch.setattr(dashboard, "EXACT_COUNT_LIMIT", 10)
    monkeypatch.setattr(dashboard, "RARE_STATUS_LIMIT", 5)
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE audience_contact")
    html = admin_client.get("/admin/").content.decode()
    if connection.vendor == "postgresql":
        assert _text(html, "dash-total") == "about 16"
        assert _text(html, "dash-status-subscribed") == "about 12"
        assert _text(html, "dash-reach-email") == "about 12"
        # Rare statuses are counted, not estimated: no "about".
        assert _text(html, "dash-status-bounced") == "1"
        assert 'id="dash-estimated"' in html
    else:  # SQLite has no planner statistics: a one-machine list is always counted
        assert _text(html, "dash-total") == "16"
        assert 'id="dash-estimated"' not in html
