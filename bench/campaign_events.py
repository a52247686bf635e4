"""How fast is a campaign's status history when the events table is large?

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/bench_events .venv/bin/python \
        bench/campaign_events.py --campaigns 100 --events 2000

Creates the database if needed, migrates, seeds CAMPAIGNS campaigns with EVENTS events
each (once; re-runs reuse them), then times, for the campaign with the most history:
the last 50 events through campaigns.selectors.campaign_events (the list the page
shows), and the whole campaign page through Django's test client. The floor is a bare
SELECT of any 50 CampaignEvent rows (no filter, no order), timed in the same run.
Prints medians, the worst run, the page's query count and PostgreSQL's plan for the list.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
os.environ.setdefault("SECRET_KEY", "bench-only-secret-key-0123456789-abcdefghijklmnop")
os.environ.setdefault("ALLOWED_HOSTS", "testserver")
os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/bench_events")

from bench.admin_list import ensure_database  # noqa: E402 (after the environment is set)


def seed(campaigns: int, events: int) -> int:
    from campaigns.models import Campaign, CampaignEvent

    have = CampaignEvent.objects.count()
    if have >= campaigns * events:
        print(f"reusing {have:,} events")
        return Campaign.objects.order_by("pk").values_list("pk", flat=True).last()
    print(f"seeding {campaigns:,} campaigns x {events:,} events …", flush=True)
    started = time.perf_counter()
    base = datetime(2026, 1, 1, tzinfo=UTC)
    made = Campaign.objects.bulk_create(
        Campaign(name=f"Bench {n}", subject="Hi", body="Hello.") for n in range(campaigns)
    )
    steps = ["draft", "sending", "paused", "sending"]
    for campaign in made:
        CampaignEvent.objects.bulk_create(
            (
                CampaignEvent(
                    campaign=campaign,
                    created_at=base + timedelta(seconds=n),
                    actor="" if n % 3 else "owner",
                    from_status=steps[n % 4],
                    to_status=steps[(n + 1) % 4],
                    reason="Paused: the provider kept failing. The provider said: HTTP 503",
                )
                for n in range(events)
            ),
            batch_size=5000,
        )
    print(f"seeded in {time.perf_counter() - started:.1f} s")
    return made[-1].pk


def timed(fn, runs: int) -> tuple[float, float]:
    fn()  # warm
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples), max(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--campaigns", type=int, default=100)
    parser.add_argument("--events", type=int, default=2000, help="events per campaign")
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()

    ensure_database(os.environ["DATABASE_URL"])
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    call_command("migrate", verbosity=0)
    from django.contrib.auth import get_user_model

    from campaigns.models import Campaign, CampaignEvent
    from campaigns.selectors import campaign_events

    pk = seed(args.campaigns, args.events)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE campaigns_campaignevent")
    campaign = Campaign.objects.get(pk=pk)
    total = CampaignEvent.objects.count()
    user, _ = get_user_model().objects.get_or_create(
        username="bench", defaults={"is_staff": True, "is_superuser": True}
    )
    client = Client()
    client.force_login(user)
    url = f"/admin/campaigns/campaign/{pk}/change/"

    floor = timed(lambda: list(CampaignEvent.objects.order_by()[:50]), args.runs)
    listed = timed(lambda: campaign_events(campaign), args.runs)

    def page():
        response = client.get(url)
        rows = response.content.count(b'class="campaign-event"')
        if response.status_code != 200 or rows != 50:
            raise SystemExit(f"the page answered {response.status_code} with {rows} events")

    whole = timed(page, max(5, args.runs // 3))
    with CaptureQueriesContext(connection) as queries:
        page()
    sql, params = (
        CampaignEvent.objects.filter(campaign=campaign).order_by("-created_at", "-id")[:50]
    ).query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN {sql}", params)
        plan = [row[0] for row in cursor.fetchall()]

    print(f"events in the table: {total:,}; this campaign's: {args.events:,}")
    print(f"floor (any 50 rows):          median {floor[0]:7.2f} ms, worst {floor[1]:7.2f} ms")
    print(f"last 50 events (selector):    median {listed[0]:7.2f} ms, worst {listed[1]:7.2f} ms")
    print(f"  ratio to the floor: {listed[0] / floor[0]:.1f}x")
    print(f"campaign page (whole request): median {whole[0]:6.1f} ms, worst {whole[1]:6.1f} ms,")
    print(f"  {len(queries.captured_queries)} queries")
    print("plan of the list:")
    for line in plan:
        print("  " + line)


if __name__ == "__main__":
    main()
