"""Import and export throughput against PostgreSQL, with the floors measured in the same run.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/bench_import .venv/bin/python bench/import.py
    ... bench/import.py --rows 100000 --no-export   # a quick run (~1 min)
    ... bench/import.py --xlsx                      # 100k and 1M rows, CSV and XLSX export

For each size it writes a Mailchimp audience export (80% new addresses, 20% already in
the database of which a tenth unsubscribed, a quarter with unique phone numbers, half
tagged, OPTIN/CONFIRM times on every row), imports it through the same code path as the
admin (audience.importing: job_create → job_start → run_job, "subscribed with consent
evidence", in a fresh child process so its peak RSS and CPU are the import's own), and
prints two floors:

* COPY floor: the same file COPYed into a bare table (no index): what no import beats;
* schema floor: the same rows inserted in pure SQL as new contacts with one consent
  event each (all of audience_contact's indexes, foreign keys checked), rolled back:
  the least PostgreSQL must do for this schema, before tags, lookups or any Python.

For comparison it also runs the first 20,000 rows through django-import-export's bulk
Resource (names only, no consent rules), the library the issue suggested first; that
figure is why the upsert path (audience/importing/upsert.py) is written by hand.
Then it exports all contacts as CSV (and XLSX with --xlsx) in a child process.

Targets (2 cores): import ≥ 25,000 rows/s at 1M rows and ≥ 1/4 of COPY's rate under
300 MB; export ≥ 100,000 rows/s under 200 MB. The machine's load average is printed
first: on a shared machine every figure moves with it.

The database named in DATABASE_URL is created if missing, migrated, and emptied: give
the benchmark its own database.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
os.environ.setdefault("SECRET_KEY", "bench-only-secret-key-0123456789-0123456789")
os.environ.setdefault("LOG_LEVEL", "WARNING")
# Uploaded copies of the generated files land here, not in the project's var/.
os.environ.setdefault("STILLHERE_VAR_DIR", str(Path(tempfile.gettempdir()) / "stillhere-bench"))

HEADER = [
    "Email Address", "First Name", "Last Name", "Address", "Phone Number", "MEMBER_RATING",
    "OPTIN_TIME", "OPTIN_IP", "CONFIRM_TIME", "CONFIRM_IP", "LATITUDE", "LONGITUDE", "GMTOFF",
    "DSTOFF", "TIMEZONE", "CC", "REGION", "LAST_CHANGED", "LEID", "EUID", "NOTES", "TAGS",
]  # fmt: skip
FIRST = ["Ada", "Grace", "Linus", "Margaret", "Alan", "Barbara", "Ken", "Radia", "Tim", "Frances"]
LAST = ["Lovelace", "Hopper", "Torvalds", "Hamilton", "Turing", "Liskov", "Thompson", "Perlman"]


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cpu_s(who: int = resource.RUSAGE_SELF) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def _children_peak_mb() -> float:
    """The import's parser process (large files are parsed in a child of the import)."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def _setup_django():
    import django

    django.setup()


def _ensure_database(url: str) -> None:
    import psycopg
    from psycopg import sql

    from config.env import parse_database_url

    conf = parse_database_url(url, base_dir=ROOT)
    if not conf["ENGINE"].endswith("postgresql"):
        sys.exit("bench/import.py measures PostgreSQL: set DATABASE_URL=postgres://…")
    params = {"host": conf["HOST"], "port": conf["PORT"] or 5432, "user": conf["USER"],
              "password": conf["PASSWORD"] or None}  # fmt: skip
    with psycopg.connect(dbname="postgres", autocommit=True, **params) as conn:
        exists = conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", [conf["NAME"]]
        ).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(conf["NAME"])))


def _reset() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "TRUNCATE audience_consentevent, audience_contact_tags, audience_contact, "
            "audience_tag, audience_importjob RESTART IDENTITY CASCADE"
        )
        cursor.execute("VACUUM ANALYZE audience_contact")


def _generate(path: Path, rows: int, seed: int, phone_every: int = 4) -> list[str]:
    """Write the Mailchimp CSV; return the addresses that must already exist (20%)."""
    rnd = random.Random(seed)
    existing = []
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(HEADER)
        for i in range(rows):
            email = f"{rnd.choice(FIRST).lower()}.{i}.{seed}@example{i % 97}.com"
            if i % 5 == 0:
                existing.append(email)
            # Unique numbers, so no cache anywhere could flatter the figure.
            phone = (
                f"+1415{2000000 + i % 8000000:07d}" if phone_every and i % phone_every == 0 else ""
            )
            tags = '"Customers"' if i % 2 else ""
            stamp = f"2023-{1 + i % 12:02d}-{1 + i % 28:02d} 10:{i % 60:02d}:00"
            writer.writerow(
                [email.title() if i % 10 == 3 else email, rnd.choice(FIRST), rnd.choice(LAST),
                 "", phone, "2", stamp, "203.0.113.7", stamp, "203.0.113.7", "", "", "", "",
                 "", "", "", stamp, str(i), f"e{i}", "", tags]
            )  # fmt: skip
    return existing


def _seed_existing(emails: list[str]) -> None:
    from django.db import connection
    from django.utils import timezone

    now = timezone.now()
    with connection.cursor() as cursor:
        with cursor.copy(
            "COPY audience_contact (email, first_name, last_name, phone, status, attributes, "
            "source, created_at, updated_at) FROM STDIN"
        ) as copy:
            for i, email in enumerate(emails):
                status = "unsubscribed" if i % 10 == 0 else "subscribed"
                copy.write_row((email, "", "", "", status, "{}", "form", now, now))
        cursor.execute("ANALYZE audience_contact")


def _copy_floor(path: Path) -> tuple[float, float]:
    """Two floors, both in SQL with no Python per row:

    * bare: COPY of the file into a bare, logged table (no index, no constraint), the
      raw cost of getting the same rows into PostgreSQL;
    * schema: the same rows as new contacts in audience_contact (all its indexes) with
      one consent event each and their foreign keys checked, i.e. the least any import
      must make PostgreSQL do for this schema. Rolled back afterwards.
    """
    from django.db import connection, transaction

    cols = ", ".join(f"c{i} text" for i in range(len(HEADER)))
    with connection.cursor() as cursor:
        cursor.execute("DROP TABLE IF EXISTS bench_copy_floor")
        cursor.execute(f"CREATE TABLE bench_copy_floor ({cols})")
        started = time.perf_counter()
        copy_sql = "COPY bench_copy_floor FROM STDIN WITH (FORMAT csv, HEADER true)"
        with cursor.copy(copy_sql) as copy, path.open("rb") as f:
            while block := f.read(1 << 20):
                copy.write(block)
        bare = time.perf_counter() - started
        started = time.perf_counter()
        try:
            with transaction.atomic():
                cursor.execute("SET LOCAL synchronous_commit TO OFF")
                cursor.execute(
                    "WITH new AS (INSERT INTO audience_contact (email, first_name, last_name, "
                    "phone, status, attributes, source, created_at, updated_at) "
                    "SELECT 'floor.' || lower(c0), coalesce(c1, ''), coalesce(c2, ''), "
                    "coalesce(c4, ''), 'subscribed', '{}', 'import', "
                    "now(), now() FROM bench_copy_floor RETURNING id) "
                    "INSERT INTO audience_consentevent (contact_id, created_at, kind, method, "
                    "status_before, status_after, user_agent, consent_text, actor, detail) "
                    "SELECT id, now(), 'import', 'import', '', 'subscribed', '', '', '', '{}' "
                    "FROM new"
                )
                cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")  # the FK checks, now
                schema = time.perf_counter() - started
                raise _Rollback
        except _Rollback:
            pass
        cursor.execute("DROP TABLE bench_copy_floor")
    return bare, schema


class _Rollback(Exception):
    pass


def child_import(path: str, add_tag: str = "") -> None:
    """Run one import the way the admin does, and report time and peak memory."""
    _setup_django()
    from audience import importing

    started = time.perf_counter()
    cpu_started = _cpu_s()
    with open(path, "rb") as f:
        job = importing.job_create(f=f, name=Path(path).name, size=os.path.getsize(path))
    inspected = time.perf_counter()
    cpu_inspected = _cpu_s()
    job = importing.job_start(
        job=job,
        options={"new_status": "consent", "tags": add_tag, "source": "mailchimp"},
        dispatch=False,
    )
    job = importing.run_job(job.pk)
    finished = time.perf_counter()
    job.file.delete(save=False)
    print(json.dumps({"status": job.status, "counts": job.counts, "rows": job.rows_done,
                      "upload_s": inspected - started, "run_s": finished - inspected,
                      "python_cpu_s": _cpu_s() - cpu_inspected, "peak_mb": _peak_mb(),
                      "parser_cpu_s": _cpu_s(resource.RUSAGE_CHILDREN),
                      "parser_peak_mb": _children_peak_mb(),
                      "upload_cpu_s": cpu_inspected - cpu_started}))  # fmt: skip


def child_import_export(path: str, rows: int) -> None:
    """The same file's first rows through django-import-export's Resource (bulk mode,
    email as the import id): what the issue suggested first, measured for comparison.
    It does none of the consent work (no events, no status rules, no tags)."""
    _setup_django()
    import tablib
    from import_export import fields, resources

    from audience.models import Contact

    class ContactResource(resources.ModelResource):
        email = fields.Field(attribute="email", column_name="Email Address")
        first_name = fields.Field(attribute="first_name", column_name="First Name")
        last_name = fields.Field(attribute="last_name", column_name="Last Name")

        class Meta:
            model = Contact
            fields = ("email", "first_name", "last_name")
            import_id_fields = ("email",)
            use_bulk = True
            batch_size = 1000
            skip_diff = True

        def before_import_row(self, row, **kwargs):
            row["Email Address"] = (row.get("Email Address") or "").strip().lower()

    with open(path, encoding="utf-8") as f:
        lines = [next(f) for _ in range(rows + 1)]
    dataset = tablib.Dataset().load("".join(lines), format="csv")
    started = time.perf_counter()
    result = ContactResource().import_data(dataset, dry_run=False, raise_errors=True)
    elapsed = time.perf_counter() - started
    print(json.dumps({"seconds": elapsed, "rows": rows, "errors": result.has_errors(),
                      "peak_mb": _peak_mb()}))  # fmt: skip


def child_export(fmt: str) -> None:
    _setup_django()
    from audience import exporting
    from audience.models import Contact

    started = time.perf_counter()
    size = 0
    with open(os.devnull, "wb") as out:
        for piece in exporting.FORMATS[fmt][1](Contact.objects.all()):
            size += len(piece)
            out.write(piece)
    elapsed = time.perf_counter() - started
    print(json.dumps({"seconds": elapsed, "bytes": size, "peak_mb": _peak_mb()}))


def _child(*args: str) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, check=False
    )
    if out.returncode:
        sys.exit(f"child {args} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="100000,1000000", help="comma-separated sizes")
    parser.add_argument("--no-export", action="store_true")
    parser.add_argument("--xlsx", action="store_true", help="also time an XLSX export")
    parser.add_argument("--add-tag", default="", help="a tag the import adds to every row")
    parser.add_argument(
        "--phone-every", type=int, default=4, help="a phone number on every Nth row (0: none)"
    )
    parser.add_argument("--child-import")
    parser.add_argument("--child-export")
    parser.add_argument("--child-import-export")
    parser.add_argument(
        "--import-export-rows",
        type=int,
        default=20_000,
        help="rows to time through django-import-export for comparison (0: skip)",
    )
    args = parser.parse_args()
    if args.child_import:
        return child_import(args.child_import, args.add_tag)
    if args.child_export:
        return child_export(args.child_export)
    if args.child_import_export:
        return child_import_export(args.child_import_export, args.import_export_rows)

    url = os.environ.get("DATABASE_URL", "")
    _ensure_database(url)
    _setup_django()
    from django.core.management import call_command
    from django.db import connection

    call_command("migrate", verbosity=0)
    with connection.cursor() as cursor:
        cursor.execute("SELECT version()")
        version = cursor.fetchone()[0].split(" on ")[0]
    print(f"{version}; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    sizes = [int(s) for s in args.rows.split(",") if s.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        for rows in sizes:
            _reset()
            path = Path(tmp) / f"mailchimp-{rows}.csv"
            existing = _generate(path, rows, seed=rows, phone_every=args.phone_every)
            _seed_existing(existing)
            connection.close()
            size_mb = path.stat().st_size / 1_048_576
            result = _child("--child-import", str(path), "--add-tag", args.add_tag)
            if result["status"] != "done":
                sys.exit(f"import failed: {result}")
            rate = rows / result["run_s"]
            copy_s, schema_s = _copy_floor(path)
            copy_rate = rows / copy_s
            c = result["counts"]
            print(
                f"import {rows:>9,} rows ({size_mb:.0f} MB): {rate:>9,.0f} rows/s "
                f"({result['run_s']:.1f} s; Python CPU {result['python_cpu_s']:.1f} s "
                f"+ parser {result['parser_cpu_s']:.1f} s; "
                f"upload check {result['upload_s']:.1f} s), "
                f"peak {result['peak_mb']:.0f} MB + parser {result['parser_peak_mb']:.0f} MB "
                f"| COPY floor {copy_rate:>9,.0f} rows/s "
                f"({copy_s:.1f} s) | import/COPY = 1/{copy_rate / rate:.1f} | "
                f"schema floor {rows / schema_s:>7,.0f} rows/s (import = "
                f"{100 * rate * schema_s / rows:.0f}% of it) | "
                f"new {c.get('new', 0):,}, updated {c.get('updated', 0):,}, "
                f"suppressed {c.get('suppressed', 0):,}, unchanged {c.get('unchanged', 0):,} | "
                f"load average now {os.getloadavg()[0]:.2f}"
            )
            if args.import_export_rows and rows == sizes[0]:
                # Same file, same database state as before our import ran.
                _reset()
                _seed_existing(existing)
                connection.close()
                n = min(rows, args.import_export_rows)
                ie = _child("--child-import-export", str(path), "--import-export-rows", str(n))
                print(
                    f"django-import-export on the first {n:,} rows (bulk Resource, names "
                    f"only, no consent events or tags): {n / ie['seconds']:>7,.0f} rows/s "
                    f"({ie['seconds']:.1f} s)"
                )
            path.unlink()
        if not args.no_export:
            connection.close()
            from audience.models import Contact

            total = Contact.objects.count()
            connection.close()
            for fmt in ["csv", "xlsx"] if args.xlsx else ["csv"]:
                result = _child("--child-export", fmt)
                print(
                    f"export {total:>9,} contacts as {fmt}: "
                    f"{total / result['seconds']:>9,.0f} rows/s ({result['seconds']:.1f} s, "
                    f"{result['bytes'] / 1_048_576:.0f} MB), peak {result['peak_mb']:.0f} MB"
                )


if __name__ == "__main__":
    main()
