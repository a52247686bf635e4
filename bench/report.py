"""How fast is the campaign report at a million recipients, and how fast do provider
events go in?

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/bench_report .venv/bin/python bench/report.py

Creates the database if needed and seeds (once; re-runs reuse it) N contacts and one sent
campaign with N Delivery rows, with COPY and one INSERT…SELECT. Then:

- ingestion: provider events applied through campaigns.feedback (the tracking signal's
  receiver), first-time events, the same events again (a provider's re-post), and a
  sample through the whole HTTP path (Mailgun's signed webhook, anymail's view);
- the report: each selector the campaign page calls, and the whole page through Django's
  test client, median and worst of several runs with their query counts, next to what
  the same figures cost counted from the Delivery rows (one aggregate query with FILTER:
  the alternative the maintained counters replace);
- the per-recipient CSV: rows per second and the process's memory growth while
  streaming the first rows.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import resource
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
os.environ.setdefault("SECRET_KEY", "bench-only-secret-key-0123456789-abcdefghijklmnop")
os.environ.setdefault("ALLOWED_HOSTS", "testserver")
os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/bench_report")

from bench.admin_list import ensure_database  # noqa: E402

T0 = datetime(2026, 12, 7, 10, 0, tzinfo=UTC)
CAMPAIGN_NAME = "bench report"
SIGNING_KEY = "bench-mailgun-signing-key"


def seed(n: int):
    from django.db import connection

    from audience.models import Contact
    from campaigns.models import Campaign, Delivery, DeliveryChunk

    campaign = Campaign.objects.filter(name=CAMPAIGN_NAME).first()
    if campaign and campaign.total_count >= n:
        print(f"reusing {campaign.total_count:,} deliveries", flush=True)
        return campaign
    started = time.perf_counter()
    have = Contact.objects.count()
    print(f"seeding {max(n - have, 0):,} contacts and {n:,} deliveries …", flush=True)
    with connection.cursor() as cursor:
        if have < n:
            with cursor.cursor.copy(
                "COPY audience_contact (email, first_name, last_name, phone, status, "
                "attributes, source, created_at, updated_at) FROM STDIN"
            ) as copy:
                for i in range(have, n):
                    copy.write_row((f"person{i}@example.com", "Ada", "Lovelace", "",
                                    "subscribed", "{}", "import", T0, T0))  # fmt: skip
        Campaign.objects.filter(name=CAMPAIGN_NAME).delete()
        campaign = Campaign.objects.create(
            name=CAMPAIGN_NAME, subject="We're still here", body="Hi", status="sent",
            started_at=T0, finished_at=T0 + timedelta(minutes=45), total_count=n, sent_count=n,
        )  # fmt: skip
        # Sent over 45 minutes, in chunks of 500, as a blast writes them.
        cursor.execute(
            f"""INSERT INTO {Delivery._meta.db_table}
                (campaign_id, contact_id, chunk, status, sent_at, message_id, error)
                SELECT %s, id, (ROW_NUMBER() OVER (ORDER BY id) - 1) / 500, 'sent',
                       %s::timestamptz + (ROW_NUMBER() OVER (ORDER BY id)) * interval '2.7 ms',
                       '<bench.' || id || '@mg.example.com>', ''
                FROM (SELECT id FROM audience_contact ORDER BY id LIMIT %s) AS c""",  # noqa: S608
            [campaign.pk, T0, n],
        )
        chunks = -(-n // 500)
        DeliveryChunk.objects.bulk_create(
            [DeliveryChunk(campaign=campaign, number=k, status="done") for k in range(chunks)],
            batch_size=5000,
        )
        cursor.execute("VACUUM ANALYZE audience_contact")
        cursor.execute(f"VACUUM ANALYZE {Delivery._meta.db_table}")
    from campaigns import tallies

    for minute in range(45):  # what the sender's counter leaves: sent per minute
        tallies.timeline_add(campaign_id=campaign.pk, kind="sent", when=T0 + timedelta(
            minutes=minute), count=n // 45)  # fmt: skip
    print(f"seeded in {time.perf_counter() - started:.1f} s", flush=True)
    return campaign


def reset_events(campaign) -> None:
    """Forget the events of an earlier run, so each run ingests from scratch."""
    from campaigns.models import CampaignLink, CampaignReport, CampaignTimeline, Delivery

    CampaignReport.objects.filter(campaign=campaign).delete()
    CampaignTimeline.objects.filter(campaign=campaign).exclude(kind="sent").delete()
    CampaignLink.objects.filter(campaign=campaign).delete()
    Delivery.objects.filter(campaign=campaign, chunk__lt=200).update(
        delivered_at=None, deferred_at=None, soft_bounced_at=None, hard_bounced_at=None,
        complained_at=None, unsubscribed_at=None, rejected_at=None, opened_at=None,
        clicked_at=None,
    )  # fmt: skip


def events(campaign, count: int, kind: str, *, start: int = 0):
    from anymail.signals import AnymailTrackingEvent

    from campaigns.models import Delivery

    rows = (
        Delivery.objects.filter(campaign=campaign, chunk__lt=200)
        .order_by("chunk", "pk")
        .values_list("contact__email", "message_id")[start : start + count]
    )
    for n, (email, mid) in enumerate(rows):
        yield AnymailTrackingEvent(
            event_type=kind, recipient=email, message_id=mid, event_id=uuid.uuid4().hex,
            metadata={"campaign": str(campaign.pk)}, timestamp=T0 + timedelta(seconds=n),
            click_url="https://shop.example.com/spring" if kind == "clicked" else None,
            esp_event={},
        )  # fmt: skip


def ingest(label: str, batch) -> None:
    from django.db import connection

    from campaigns.feedback import feedback_record

    statements = 0

    def count(execute, sql, params, many, context):
        nonlocal statements
        statements += 1
        return execute(sql, params, many, context)

    batch = list(batch)
    started = time.perf_counter()
    with connection.execute_wrapper(count):
        for event in batch:
            feedback_record(event=event, esp_name="Mailgun")
    elapsed = time.perf_counter() - started
    # SQL statements per event (savepoints included; BEGIN and COMMIT are not statements
    # Django executes): what the rate costs on a quiet machine, whatever this one did.
    per_event = statements / len(batch)
    print(
        f"  {label:40} {len(batch):7,} events  {len(batch) / elapsed:8,.0f} /s  "
        f"{1000 * elapsed / len(batch):6.1f} ms each, {per_event:4.1f} statements"
    )


def mailgun_body(email: str, mid: str, campaign_id: int) -> str:
    timestamp, token = str(int(time.time())), uuid.uuid4().hex
    signature = hmac.new(SIGNING_KEY.encode(), (timestamp + token).encode(), hashlib.sha256)
    return json.dumps({
        "signature": {"timestamp": timestamp, "token": token, "signature": signature.hexdigest()},
        "event-data": {"event": "delivered", "timestamp": time.time(), "id": token,
                       "recipient": email, "user-variables": {"campaign": str(campaign_id)},
                       "message": {"headers": {"message-id": mid.strip("<>")}},
                       "delivery-status": {"code": 250, "message": "OK"}},
    })  # fmt: skip


def timed(fn, runs: int) -> list[float]:
    fn()  # warm
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deliveries", type=int, default=1_000_000)
    parser.add_argument("--events", type=int, default=1_000)
    parser.add_argument("--http-events", type=int, default=300)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--csv-rows", type=int, default=100_000)
    args = parser.parse_args()

    ensure_database(os.environ["DATABASE_URL"])
    import django

    django.setup()
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import connection, transaction
    from django.db.models import Count, Q
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    from campaigns import reports
    from campaigns.models import Campaign, Delivery
    from tests.webhooks import mount_tracking

    call_command("migrate", verbosity=0)
    campaign = seed(args.deliveries)
    reset_events(campaign)
    n = args.events

    load = os.getloadavg()[0]
    print(f"\ningestion (campaigns.feedback, one event at a time, {connection.vendor}; "
          f"load average {load:.1f} on {os.cpu_count()} cores)")  # fmt: skip
    # The floor: the least a webhook could do per event, one indexed UPDATE of its
    # Delivery row in its own transaction, on the same rows, in the same run.
    floor_ids = list(
        Delivery.objects.filter(campaign=campaign, chunk__lt=200)
        .order_by("chunk", "pk")
        .values_list("pk", flat=True)[:n]
    )
    started = time.perf_counter()
    for pk in floor_ids:
        with transaction.atomic():
            Delivery.objects.filter(pk=pk).update(error="")
    floor = (time.perf_counter() - started) / len(floor_ids)
    label = "floor: one UPDATE per event, committed"
    print(
        f"  {label:40} {len(floor_ids):7,} events  {1 / floor:8,.0f} /s  "
        f"{1000 * floor:6.1f} ms each"
    )
    ingest("delivered, first time", events(campaign, n, "delivered"))
    ingest("delivered again (provider re-post)", events(campaign, n, "delivered"))
    ingest("opened, first time", events(campaign, n // 2, "opened"))
    ingest("clicked, first time (with link)", events(campaign, n // 5, "clicked"))
    ingest("clicked again (same link)", events(campaign, n // 5, "clicked"))

    settings.ANYMAIL = {**settings.ANYMAIL, "MAILGUN_WEBHOOK_SIGNING_KEY": SIGNING_KEY}

    mount_tracking(settings, "mailgun")  # as the tests do: what EMAIL_PROVIDER mounts
    from django.urls import clear_url_caches

    clear_url_caches()
    rows = list(
        Delivery.objects.filter(campaign=campaign, chunk__gte=100, chunk__lt=200)
        .order_by("chunk", "pk")
        .values_list("contact__email", "message_id")[: args.http_events]
    )
    bodies = [mailgun_body(email, mid, campaign.pk) for email, mid in rows]
    client = Client()
    started = time.perf_counter()
    for body in bodies:
        response = client.post("/anymail/mailgun/tracking/", body, content_type="application/json")
        if response.status_code != 200:
            raise SystemExit(f"webhook: HTTP {response.status_code}")
    elapsed = time.perf_counter() - started
    label = "delivered via Mailgun's signed webhook"
    print(f"  {label:40} {len(bodies):7,} posts   {len(bodies) / elapsed:8,.0f} /s")

    campaign.refresh_from_db()
    report = reports.campaign_report(campaign)
    print("\nreport figures: " + ", ".join(f"{f.key} {f.count:,}" for f in report.figures))
    expected_delivered = n + len(bodies)
    # Re-posts counted once; the clicks were on messages already opened.
    if (report.figure("delivered").count, report.figure("opened").count) != (
        expected_delivered,
        n // 2,
    ):
        raise SystemExit("the report's figures are not the events ingested once")

    user = get_user_model().objects.filter(username="bench").first()
    if user is None:
        user = get_user_model().objects.create_superuser("bench", "bench@localhost", "x")
    admin = Client()
    admin.force_login(user)
    page = f"/admin/campaigns/campaign/{campaign.pk}/change/"
    last_ten = list(Campaign.objects.order_by("-created_at")[:10])

    def scan():
        return Delivery.objects.filter(campaign=campaign).aggregate(
            delivered=Count("pk", filter=Q(delivered_at__isnull=False)),
            opened=Count("pk", filter=Q(opened_at__isnull=False)),
            clicked=Count("pk", filter=Q(clicked_at__isnull=False)),
            bounced=Count("pk", filter=Q(hard_bounced_at__isnull=False)),
        )

    def get_page():
        response = admin.get(page)
        if response.status_code != 200 or b'id="campaign-report"' not in response.content:
            raise SystemExit(f"campaign page: HTTP {response.status_code}, or no report")

    measures = [
        ("campaign_report (figures)", lambda: reports.campaign_report(campaign)),
        ("campaign_timeline (chart)", lambda: reports.campaign_timeline(campaign)),
        ("campaign_links (clicks per link)", lambda: reports.campaign_links(campaign)),
        ("campaign_summaries (10 campaigns)", lambda: reports.campaign_summaries(last_ten)),
        ("the whole campaign page (HTTP)", get_page),
        ("alternative: COUNT … FILTER over Delivery", scan),
    ]
    print(f"\nreport at {campaign.total_count:,} deliveries, {args.runs} runs each")
    print(f"  {'read':42} {'median ms':>10} {'worst ms':>9} {'queries':>8}")
    for label, fn in measures:
        samples = timed(fn, args.runs)
        with CaptureQueriesContext(connection) as queries:
            fn()
        print(
            f"  {label:42} {statistics.median(samples):10.2f} {max(samples):9.2f} "
            f"{len(queries.captured_queries):8d}"
        )

    print(f"\nper-recipient CSV, the first {args.csv_rows:,} rows")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    written = size = 0
    stream = reports.stream_delivery_csv(campaign)
    for piece in stream:
        size += len(piece)
        written += piece.count(b"\n")
        if written >= args.csv_rows:
            break
    elapsed = time.perf_counter() - started
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    print(f"  {written:,} rows, {size / 1e6:.1f} MB in {elapsed:.2f} s: {written / elapsed:,.0f} "
          f"rows/s; peak memory grew {grown:.1f} MiB")  # fmt: skip


if __name__ == "__main__":
    main()
