"""The dashboard's audience figures on a seeded database (audience.dashboard)."""

from __future__ import annotations

import pytest
from django.core.cache import cache
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from audience import dashboard
from audience.dashboard import audience_counts, signups_per_day
from audience.models import Contact
from tests.dashboard_seed import seed_dashboard_audience

pytestmark = pytest.mark.django_db


def test_contacts_by_status_and_reach_are_counted_exactly_on_a_small_list():
    expected = seed_dashboard_audience()
    counts = audience_counts()
    assert counts.by_status == expected["by_status"]
    assert counts.total == expected["total"]
    assert counts.reachable_by_email == expected["reachable_by_email"]
    # An unsubscribed or pending contact's phone reaches nobody.
    assert counts.reachable_by_phone == expected["reachable_by_phone"]
    assert counts.estimated is False


def test_an_empty_list_shows_zeroes_for_every_status():
    counts = audience_counts()
    assert counts.by_status == dict.fromkeys(Contact.Status.values, 0)
    assert (counts.total, counts.reachable_by_email, counts.reachable_by_phone) == (0, 0, 0)


def _seed_bulk(n: int) -> None:
    statuses = ["subscribed"] * 7 + ["pending", "unsubscribed", "bounced"]
    Contact.objects.bulk_create(
        Contact(
            email=f"bulk{i}@example.com",
            status=statuses[i % len(statuses)],
            # Phones correlate with status (4 in 7 subscribed have one, 1 in 3 others), as
            # on a list whose phones came from one form.
            phone=f"+1415555{i:04d}" if i % 2 == 0 else "",
        )
        for i in range(n)
    )


def test_a_list_above_the_limit_is_estimated_on_postgresql_without_counting_it(monkeypatch):
    """Above EXACT_COUNT_LIMIT PostgreSQL's statistics answer (no COUNT over the table);
    SQLite, the one-machine quickstart, has none and keeps counting."""
    monkeypatch.setattr(dashboard, "EXACT_COUNT_LIMIT", 100)
    monkeypatch.setattr(dashboard, "RARE_STATUS_LIMIT", 150)
    _seed_bulk(1000)
    Contact.objects.filter(email__in=["bulk3@example.com", "bulk13@example.com"]).update(
        status=Contact.Status.COMPLAINED
    )
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE audience_contact")
    with CaptureQueriesContext(connection) as queries:
        counts = audience_counts()
    exact = {"subscribed": 698, "pending": 100, "unsubscribed": 100, "bounced": 100}
    if connection.vendor == "postgresql":
        assert counts.estimated is True
        # No count over the table: the rare statuses' are capped (LIMIT), the phone
        # share's reads a sample of the table's pages.
        counted = [q["sql"] for q in queries if "COUNT(" in q["sql"].upper()]
        assert all("LIMIT 151" in sql or "TABLESAMPLE" in sql for sql in counted), counted
        # ANALYZE read all 1,000 rows here, so the estimates are within rounding; the
        # statuses estimated at up to RARE_STATUS_LIMIT are counted exactly.
        assert abs(counts.by_status["subscribed"] - 698) <= 5, counts.by_status
        assert counts.exact_statuses == {"pending", "unsubscribed", "bounced", "complained"}
        assert {s: counts.by_status[s] for s in counts.exact_statuses} == {
            "pending": 100,
            "unsubscribed": 100,
            "bounced": 100,
            "complained": 2,
        }
        assert abs(counts.total - 1000) <= 5
        # Under the sample's size the sample is the whole table; the planner alone would
        # say 698 x 50% = 349, not knowing the two columns go together.
        assert counts.reachable_by_phone == 400
    else:
        assert counts.estimated is False
        assert counts.by_status == {**exact, "complained": 2}
        assert counts.reachable_by_phone == 400


def test_below_the_limit_the_list_is_counted_exactly(monkeypatch):
    # Before any ANALYZE, PostgreSQL's row estimate comes from the table's size: a margin.
    monkeypatch.setattr(dashboard, "EXACT_COUNT_LIMIT", 5000)
    _seed_bulk(1000)
    counts = audience_counts()
    assert counts.estimated is False
    assert counts.total == 1000


def test_signups_per_day_by_source_and_by_form_over_90_days():
    expected = seed_dashboard_audience()
    data = signups_per_day(days=90)
    assert len(data["days"]) == 90
    assert data["days"][-1] == timezone.localdate().isoformat()
    assert {label: sum(counts) for label, counts in data["by_source"].items()} == expected[
        "by_source_90"
    ]
    assert {name: sum(counts) for name, counts in data["by_form"].items()} == expected["by_form_90"]
    assert sum(sum(counts) for counts in data["by_source"].values()) == expected["signups_90"]
    # Today's column: the three footer signups and the popup one.
    assert {label: counts[-1] for label, counts in data["by_source"].items() if counts[-1]} == (
        expected["today"]
    )
    assert data["by_form"]["Footer form"][-1] == 3
    # The first day of the window is 89 days ago: the complaint from then is on it.
    assert data["by_source"]["Signup form"][0] == 1
    last_30 = sum(sum(counts[-30:]) for counts in data["by_source"].values())
    assert last_30 == expected["signups_30"]


def test_signups_chart_counts_the_past_days_once_and_today_again_after_a_minute():
    seed_dashboard_audience()
    with CaptureQueriesContext(connection) as first:
        data = signups_per_day(days=90)
    assert len(first) == 3  # the days before today, today, the names of the forms in it
    newcomer = Contact.objects.create(email="late@example.com", source=Contact.Source.ADMIN)
    with CaptureQueriesContext(connection) as cached:
        again = signups_per_day(days=90)
    assert len(cached) == 0
    assert again == data
    # A minute later (the chart's own key expired): today is counted again, the days
    # before come from their cache, and the newcomer is on today's bar.
    cache.delete(f"dashboard:signups:90:{timezone.localdate().isoformat()}")
    with CaptureQueriesContext(connection) as refreshed:
        later = signups_per_day(days=90)
    past_reads = [q for q in refreshed if "audience_contact" in q["sql"]]
    assert len(past_reads) == 1, past_reads
    assert later["by_source"]["Admin"][-1] == 1
    assert sum(later["by_source"]["Admin"]) == sum(data["by_source"]["Admin"]) + 1
    assert newcomer.created_at.date() == timezone.localdate()
