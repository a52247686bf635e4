"""How long does marking a chunk sent take, in the sender's one PostgreSQL path?

    .venv/bin/python bench/mark_sent.py --deliveries 500000 --chunks 60

Creates its own database if needed (--database), gives one campaign N Delivery rows in
chunks of --chunk-size (once; re-runs reuse them), then marks chunks sent with
campaigns.sending._mark_sent_many as a blast's worker does: with one message id per
batch call (batch mode: a whole chunk shares it) and with one per message (per-message
mode). The floor is the least the database can do for the same rows: one
``UPDATE … WHERE campaign_id, chunk AND id = ANY(ids)`` setting a constant message id,
timed on the same chunks in the same run, taking turns with the real path (each goes
first as often) so the machine's drift falls on all. Prints the median and worst per
chunk and per row.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
os.environ.setdefault("SECRET_KEY", "bench-only-secret-key-0123456789-abcdefghijklmnop")

from bench.admin_list import ensure_database  # noqa: E402 (after ROOT is on the path)


def seed(n: int, chunk_size: int) -> int:
    """One campaign with `n` queued Delivery rows; returns its id."""
    from django.db import connection

    from campaigns.models import Campaign, Delivery

    campaign, _ = Campaign.objects.get_or_create(
        name="bench mark_sent", defaults={"subject": "Bench", "body": "Hi", "status": "sending"}
    )
    have = Delivery.objects.filter(campaign=campaign).count()
    if have != n:
        print(f"seeding {n:,} deliveries …", flush=True)
        Delivery.objects.filter(campaign=campaign).delete()
        with connection.cursor() as cursor:
            # contact has no database constraint (Delivery.contact), so no contacts needed.
            cursor.execute(
                f"""INSERT INTO {Delivery._meta.db_table}
                        (campaign_id, contact_id, chunk, status, message_id, error)
                    SELECT %s, g, (g - 1) / %s, 'queued', '', ''
                    FROM generate_series(1, %s) AS g""",  # noqa: S608 (table from the model)
                [campaign.pk, chunk_size, n],
            )
            cursor.execute(f"ANALYZE {Delivery._meta.db_table}")
    return campaign.pk


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--database", default="postgres://postgres@127.0.0.1:5432/stillhere_bench_mark"
    )
    parser.add_argument("--deliveries", type=int, default=500_000)
    parser.add_argument("--chunk-size", type=int, default=500)
    parser.add_argument("--chunks", type=int, default=60, help="chunks marked per path")
    args = parser.parse_args()
    if not args.database.startswith("postgres"):
        sys.exit("bench/mark_sent.py times the PostgreSQL path: give a postgres:// --database")
    os.environ["DATABASE_URL"] = args.database
    ensure_database(args.database)

    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection, transaction
    from django.utils import timezone

    from campaigns.models import Delivery
    from campaigns.sending import _mark_sent_many

    call_command("migrate", verbosity=0)
    campaign_id = seed(args.deliveries, args.chunk_size)
    table = Delivery._meta.db_table
    chunk_count = -(-args.deliveries // args.chunk_size)
    chunks = [round(i * (chunk_count - 1) / max(1, args.chunks - 1)) for i in range(args.chunks)]

    def ids_of(chunk: int) -> list[int]:
        return list(
            Delivery.objects.filter(campaign_id=campaign_id, chunk=chunk).values_list(
                "pk", flat=True
            )
        )

    def requeue(chunk: int) -> None:
        Delivery.objects.filter(campaign_id=campaign_id, chunk=chunk).update(
            status="queued", sent_at=None, message_id=""
        )

    def floor(chunk: int, ids: list[int]) -> int:
        with connection.cursor() as cursor:
            cursor.execute(
                f"""UPDATE {table} SET status = 'sent', sent_at = %s, message_id = %s
                    WHERE campaign_id = %s AND chunk = %s AND id = ANY(%s::bigint[])
                      AND status = 'queued'""",  # noqa: S608 (table from the model)
                [timezone.now(), "<floor@bench>", campaign_id, chunk, ids],
            )
            return cursor.rowcount

    paths = {
        "floor (one id, ANY)": lambda chunk, ids: floor(chunk, ids),
        "batch mode (one id)": lambda chunk, ids: _mark_sent_many(
            campaign_id, chunk, [(pk, "<batch@bench>") for pk in ids], timezone.now()
        ),
        "per-message (an id each)": lambda chunk, ids: _mark_sent_many(
            campaign_id, chunk, [(pk, f"<{pk}@bench>") for pk in ids], timezone.now()
        ),
    }
    times: dict[str, list[float]] = {name: [] for name in paths}
    rows = 0
    order = list(paths.items())
    for index, chunk in enumerate(chunks):
        ids = ids_of(chunk)
        rows += len(ids)
        # Each path goes first as often as the others (the first after a fetch may pay).
        shift = index % len(order)
        for name, mark in order[shift:] + order[:shift]:
            requeue(chunk)
            with transaction.atomic():  # as a chunk task marks: its own transaction
                started = time.perf_counter()
                changed = mark(chunk, ids)
                times[name].append(time.perf_counter() - started)
            if changed != len(ids):
                sys.exit(f"{name} marked {changed} of {len(ids)} rows")
        requeue(chunk)
    per_chunk = rows / len(chunks)
    load = os.getloadavg()[0]
    print(
        f"{args.deliveries:,} deliveries in one campaign, {len(chunks)} chunks of "
        f"{per_chunk:.0f} marked per path; load {load:.2f}"
    )
    base = statistics.median(times["floor (one id, ANY)"])
    for name, values in times.items():
        median = statistics.median(values)
        print(
            f"  {name:26} median {median * 1000:7.2f} ms/chunk = {median / per_chunk * 1e6:6.1f}"
            f" µs/row  |  worst {max(values) * 1000:7.2f} ms  |  {median / base:4.2f}x the floor"
        )


if __name__ == "__main__":
    main()
