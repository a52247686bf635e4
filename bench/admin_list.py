"""How fast is the contact list in the admin with a million contacts?

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/bench_admin .venv/bin/python bench/admin_list.py

Creates the database if needed, seeds N contacts with COPY (once; re-runs reuse them),
then times the admin changelist through Django's test client (the whole request: URL
routing, admin, templates, queries) for each filter and kind of search, and prints the
median and worst of several runs with the number of queries. The floor is the same
page's bare SELECT of 50 rows, timed in the same run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# tests.settings: the product settings with plain static storage (no collectstatic needed)
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
os.environ.setdefault("SECRET_KEY", "bench-only-secret-key-0123456789-abcdefghijklmnop")
os.environ.setdefault("ALLOWED_HOSTS", "testserver")
os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/bench_admin")


def ensure_database(url: str) -> None:
    import psycopg

    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    admin_url = parts._replace(path="/postgres").geturl()
    with psycopg.connect(admin_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{name}"')


def seed(n: int) -> None:
    from django.db import connection

    from audience.models import Contact, SignupForm, Tag

    have = Contact.objects.count()
    if have >= n:
        print(f"reusing {have:,} contacts")
        return
    print(f"seeding {n - have:,} contacts with COPY …", flush=True)
    started = time.perf_counter()
    form, _ = SignupForm.objects.get_or_create(public_key="bench", defaults={"name": "Bench"})
    statuses = ["subscribed"] * 8 + ["pending", "unsubscribed"]
    sources = ["form", "import", "import", "admin"]
    first = ["Anna", "Bo", "Chen", "Dara", "Emil", "Fatima", "Gus", "Hana", "Ivo", "Jun"]
    last = ["Smith", "Lee", "Garcia", "Müller", "Rossi", "Kim", "Nowak", "Silva"]
    base = datetime(2024, 1, 1, tzinfo=UTC)
    columns = (
        "email, first_name, last_name, phone, status, attributes, source, signup_form_id, "
        "created_at, updated_at"
    )
    with connection.cursor() as cursor:
        with cursor.cursor.copy(f"COPY audience_contact ({columns}) FROM STDIN") as copy:
            for i in range(have, n):
                created = base + timedelta(seconds=i * 60)
                copy.write_row(
                    (
                        f"person{i}@example{i % 97}.com",
                        first[i % len(first)],
                        last[(i // 10) % len(last)],
                        f"+1415{i % 10_000_000:07d}",
                        statuses[i % len(statuses)],
                        "{}",
                        sources[i % len(sources)],
                        form.pk if i % 4 == 0 else None,
                        created,
                        created,
                    )
                )
        for name in ["vip", "wholesale", "newsletter", "outage-2024", "rare"]:
            Tag.objects.get_or_create(name=name)
        vip = Tag.objects.get(name="vip").pk
        rare = Tag.objects.get(name="rare").pk
        cursor.execute(
            "INSERT INTO audience_contact_tags (contact_id, tag_id) "
            "SELECT id, %s FROM audience_contact WHERE id %% 5 = 0 "
            "UNION ALL SELECT id, %s FROM audience_contact WHERE id %% 10007 = 0 "
            "ON CONFLICT DO NOTHING",
            [vip, rare],
        )
    print(f"seeded in {time.perf_counter() - started:.1f} s", flush=True)
    # As autovacuum would soon after a big import: the visibility map lets the bounded
    # count run as an index-only scan.
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE audience_contact")
        cursor.execute("VACUUM ANALYZE audience_contact_tags")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contacts", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()

    ensure_database(os.environ["DATABASE_URL"])
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import connection, reset_queries
    from django.test import Client
    from django.test.utils import CaptureQueriesContext, setup_test_environment

    from audience.models import Contact, SignupForm, Tag

    setup_test_environment()  # lets the client see the template context (rows shown)
    call_command("migrate", verbosity=0)
    seed(args.contacts)
    user = get_user_model().objects.filter(username="bench").first()
    if user is None:
        user = get_user_model().objects.create_superuser("bench", "bench@localhost", "x")
    client = Client()
    client.force_login(user)

    vip = Tag.objects.get(name="vip").pk
    rare = Tag.objects.get(name="rare").pk
    form = SignupForm.objects.get(public_key="bench").pk
    pages = [
        ("all contacts", {}),
        ("status = subscribed", {"status__exact": "subscribed"}),
        ("tag = vip (20%)", {"tag": vip}),
        ("tag = rare (0.01%)", {"tag": rare}),
        ("source = import", {"source__exact": "import"}),
        ("signup form", {"signup_form__id__exact": form}),
        (
            "signed up this month",
            {
                "created_at__gte": "2025-06-01 00:00:00+00:00",
                "created_at__lt": "2025-07-01 00:00:00+00:00",
            },
        ),
        ("search email prefix", {"q": "person12345@"}),
        ("search name", {"q": "Fatima"}),
        ("search first + last", {"q": "Hana Rossi"}),
        ("search phone", {"q": "+1415000123"}),
        ("last page (page 200)", {"p": "200"}),
        # Past the bounded count (10,000 rows): the pages go on by OFFSET, never a count.
        ("past the count (page 201)", {"p": "201"}),
        ("far past it (page 900)", {"p": "900"}),
    ]

    def timed(fn) -> list[float]:
        fn()  # warm
        samples = []
        for _ in range(args.runs):
            started = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - started) * 1000)
        return samples

    floor = timed(lambda: list(Contact.objects.order_by("-id")[:50]))
    total = Contact.objects.count()
    print(f"\ncontacts: {total:,}  runs per page: {args.runs}")
    print(f"floor: bare SELECT of 50 rows  median {statistics.median(floor):7.1f} ms")
    print(f"{'page':28} {'median ms':>10} {'worst ms':>9} {'queries':>8} {'rows':>6}")
    worst_overall = 0.0
    for label, params in pages:
        response = None

        def get(params=params, label=label):
            nonlocal response
            response = client.get("/admin/audience/contact/", params)
            if response.status_code != 200:
                raise SystemExit(f"{label}: HTTP {response.status_code}")

        samples = timed(get)
        reset_queries()
        with CaptureQueriesContext(connection) as queries:
            get()
        rows = len(response.context["cl"].result_list)
        worst_overall = max(worst_overall, max(samples))
        print(
            f"{label:28} {statistics.median(samples):10.1f} {max(samples):9.1f} "
            f"{len(queries.captured_queries):8d} {rows:6d}"
        )
    print(f"\nworst page load over all pages and runs: {worst_overall:.1f} ms")


if __name__ == "__main__":
    main()
