"""How fast is the admin index's dashboard with a million contacts?

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/bench_dashboard \\
        REDIS_URL=redis://127.0.0.1:6379/4 .venv/bin/python bench/dashboard.py

Creates the database if needed and seeds N contacts with COPY (once; re-runs reuse them),
spread over the last two years so the 90-day chart reads its share of them (~12%), 60%
with a phone; five sent campaigns, the newest with a Delivery row for every contact (a
million-recipient blast) and four of 10,000. Then it times, in the same run:

- the whole page (GET /admin/ through Django's test client, as a superuser): with the
  signups chart cached (every view within a minute of the last) and cold;
- each of the dashboard's reads alone, and what the contacts-by-status figure would cost
  counted exactly (the GROUP BY over the table that the planner estimate replaces);
- how far the estimates are from the exact counts.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# tests.settings: the product settings with plain static storage (no collectstatic needed)
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
os.environ.setdefault("SECRET_KEY", "bench-only-secret-key-0123456789-abcdefghijklmnop")
os.environ.setdefault("ALLOWED_HOSTS", "testserver")
os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/bench_dashboard")

from bench.admin_list import ensure_database  # noqa: E402

BIG_CAMPAIGN = "Bench blast (all contacts)"


def seed(n: int) -> None:
    from django.db import connection
    from django.utils import timezone

    from audience.models import Contact, SignupForm
    from campaigns.models import Campaign

    have = Contact.objects.count()
    if have < n:
        print(f"seeding {n - have:,} contacts with COPY …", flush=True)
        started = time.perf_counter()
        forms = [
            SignupForm.objects.get_or_create(public_key=f"bench{i}", defaults={"name": name})[0].pk
            for i, name in enumerate(["Footer", "Checkout popup", "Giveaway"])
        ]
        statuses = ["subscribed"] * 8 + ["pending", "unsubscribed"]
        sources = ["form", "form", "import", "admin"]
        now = timezone.now()
        step = timedelta(days=730) / n  # the newest contact signed up just now
        columns = (
            "email, first_name, last_name, phone, status, attributes, source, signup_form_id, "
            "created_at, updated_at"
        )
        with (
            connection.cursor() as cursor,
            cursor.cursor.copy(f"COPY audience_contact ({columns}) FROM STDIN") as copy,
        ):
            for i in range(have, n):
                created = now - step * (n - i)
                source = sources[i % len(sources)]
                copy.write_row(
                    (
                        f"person{i}@example{i % 97}.com",
                        "Ada",
                        "",
                        f"+1415{i % 10_000_000:07d}" if i % 5 < 3 else "",
                        # Bounced and complained are rare, as on a real list.
                        "bounced"
                        if i % 997 == 0
                        else "complained"
                        if i % 4999 == 0
                        else statuses[i % len(statuses)],
                        "{}",
                        source,
                        forms[i % len(forms)] if source == "form" else None,
                        created,
                        created,
                    )
                )
        print(f"seeded contacts in {time.perf_counter() - started:.1f} s", flush=True)
    if not Campaign.objects.filter(name=BIG_CAMPAIGN).exists():
        print("seeding campaigns and their deliveries …", flush=True)
        started = time.perf_counter()
        now = timezone.now()
        with connection.cursor() as cursor:
            for k, (name, limit) in enumerate(
                [(f"Bench news {k}", 10_000) for k in range(4, 0, -1)] + [(BIG_CAMPAIGN, n)]
            ):
                campaign = Campaign.objects.create(
                    name=name,
                    subject=name,
                    body="Hi",
                    status=Campaign.Status.SENT,
                    started_at=now - timedelta(days=5 - k),
                    finished_at=now - timedelta(days=5 - k) + timedelta(minutes=10),
                    total_count=limit,
                    sent_count=limit - limit // 100,
                    failed_count=limit // 100,
                )
                cursor.execute(
                    "INSERT INTO campaigns_delivery (campaign_id, contact_id, chunk, status, "
                    "sent_at, message_id, error, opened_at, clicked_at) "
                    "SELECT %s, id, id / 500, 'sent', %s, '', '', "
                    "CASE WHEN id %% 3 = 0 THEN %s::timestamptz END, "
                    "CASE WHEN id %% 11 = 0 THEN %s::timestamptz END "
                    "FROM audience_contact ORDER BY id LIMIT %s",
                    [campaign.pk, now, now, now, limit],
                )
        print(f"seeded deliveries in {time.perf_counter() - started:.1f} s", flush=True)
    # As autovacuum would soon after a big import: fresh statistics for the estimates,
    # and the visibility map for index-only scans.
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE audience_contact")
        cursor.execute("VACUUM ANALYZE campaigns_delivery")


def timed(fn, runs: int, *, before=None) -> list[float]:
    if before:
        before()
    fn()  # warm
    samples = []
    for _ in range(runs):
        if before:
            before()
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contacts", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()

    ensure_database(os.environ["DATABASE_URL"])
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.cache import cache
    from django.core.management import call_command
    from django.db import connection, reset_queries
    from django.db.models import Count
    from django.test import Client
    from django.test.utils import CaptureQueriesContext, setup_test_environment

    from audience import dashboard
    from audience.models import Contact
    from campaigns.selectors import (
        DASHBOARD_DELIVERY_SCAN_LIMIT,
        campaign_dashboard_rates,
        campaigns_recent,
    )

    setup_test_environment()
    call_command("migrate", verbosity=0)
    seed(args.contacts)
    user = get_user_model().objects.filter(username="bench").first()
    if user is None:
        user = get_user_model().objects.create_superuser("bench", "bench@localhost", "x")
    client = Client()
    client.force_login(user)

    def page() -> None:
        response = client.get("/admin/")
        if response.status_code != 200 or b'id="signups-chart"' not in response.content:
            raise SystemExit(f"/admin/: HTTP {response.status_code} without the dashboard")

    total = Contact.objects.count()
    print(f"\ncontacts: {total:,}  runs: {args.runs}  exact below {dashboard.EXACT_COUNT_LIMIT:,}")
    rows = []

    def row(label: str, samples: list[float], queries: int | str = "") -> None:
        rows.append((label, statistics.median(samples), max(samples), queries))

    def queries(fn) -> int:
        # request_started empties the query log: start from empty, or the slice is off.
        reset_queries()
        with CaptureQueriesContext(connection) as captured:
            fn()
        return len(captured.captured_queries)

    page()
    row("page /admin/, chart cached", timed(page, args.runs), queries(page))
    cache.clear()
    cold_queries = queries(page)
    row("page /admin/, chart cold", timed(page, args.runs, before=cache.clear), cold_queries)
    row("  contacts by status, as shown", timed(dashboard.audience_counts, args.runs))
    row("  (planner estimates and phone sample)", timed(dashboard._estimated_counts, args.runs))
    row(
        "  (exact GROUP BY status alone)",
        timed(
            lambda: list(Contact.objects.order_by().values("status").annotate(n=Count("pk"))),
            args.runs,
        ),
    )
    row(
        "  (exact, with the phone count)",
        timed(dashboard._exact_counts, max(3, args.runs // 2)),
    )
    today = django.utils.timezone.localdate()
    for days in dashboard.SIGNUP_WINDOWS:
        row(
            f"  signups per day, {days} days, all cold",
            timed(
                lambda days=days: dashboard.signups_per_day(days=days),
                args.runs,
                before=cache.clear,
            ),
        )
        row(
            f"  signups, {days} days, minute's refresh",
            timed(
                lambda days=days: dashboard.signups_per_day(days=days),
                args.runs,
                before=lambda days=days: cache.delete(
                    f"dashboard:signups:{days}:{today.isoformat()}"
                ),
            ),
        )
    # The once-a-day aggregate when the whole list is in the window (an import last week).
    row(
        "  (days before today, all 1M in window)",
        timed(
            lambda: dashboard._signup_counts(first=today - timedelta(days=731), until=today),
            max(3, args.runs // 2),
        ),
    )
    recent = campaigns_recent()
    row(
        "  last campaigns and their rates",
        timed(lambda: campaign_dashboard_rates(campaigns_recent()), args.runs),
    )
    print(f"{'what':38} {'median ms':>10} {'worst ms':>9} {'queries':>8}")
    for label, median, worst, queries in rows:
        print(f"{label:38} {median:10.1f} {worst:9.1f} {queries!s:>8}")

    in_window = Contact.objects.filter(
        created_at__gte=django.utils.timezone.now() - timedelta(days=90)
    ).count()
    print(f"\ncontacts in the 90-day window: {in_window:,}")
    print(
        "campaigns shown: "
        + ", ".join(
            f"{c.name} ({c.total_count:,} recipients, opens "
            f"{'counted' if c.total_count <= DASHBOARD_DELIVERY_SCAN_LIMIT else 'not read'})"
            for c in recent
        )
    )
    estimate = dashboard._estimated_counts()
    exact = dashboard._exact_counts()
    print(f"\n{'figure':22} {'estimate':>10} {'exact':>10} {'error':>8}")
    figures = [
        *[
            (status, estimate.by_status[status], exact.by_status[status])
            for status in exact.by_status
        ],
        ("total", estimate.total, exact.total),
        ("reachable by phone", estimate.reachable_by_phone, exact.reachable_by_phone),
    ]
    for label, guess, truth in figures:
        error = f"{100 * (guess - truth) / truth:+.1f}%" if truth else "-"
        print(f"{label:22} {guess:10,} {truth:10,} {error:>8}")


if __name__ == "__main__":
    main()
