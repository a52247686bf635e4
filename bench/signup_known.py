"""Does the signup's answer take longer for an address that is already on the list?

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/bench_known \\
    .venv/bin/python bench/signup_known.py

With the signup buffer off (signups written in their request, the default wherever Redis
does not persist to disk), a visitor, or a bot, could time the public form to learn
whether an address is a contact: that is what "public endpoints leak nothing" forbids.
This posts what the script embed posts through Django's WSGI handler, in one process,
alternating an address never seen with one already subscribed, and prints each kind's
median and 90th percentile and their difference. The same process, database and
moment serve both kinds, so the machine's drift falls on both alike.

The database is created if missing and this run's contacts are deleted afterwards.
"""

from __future__ import annotations

import argparse
import io
import os
import secrets
import statistics
import sys
import time
from pathlib import Path
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FORM_KEY = "bench-known"
ORIGIN = "https://shop.bench.example"


def _environ(body: bytes) -> dict:
    return {
        "REQUEST_METHOD": "POST", "PATH_INFO": f"/f/{FORM_KEY}/submit",
        "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(body),
        "CONTENT_LENGTH": str(len(body)),
        "CONTENT_TYPE": "application/x-www-form-urlencoded;charset=UTF-8",
        "HTTP_HOST": "127.0.0.1", "HTTP_ACCEPT": "application/json", "HTTP_ORIGIN": ORIGIN,
        "HTTP_USER_AGENT": "bench", "REMOTE_ADDR": "127.0.0.1",
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="of each kind")
    args = parser.parse_args()
    if not os.environ.get("DATABASE_URL", "").startswith("postgres"):
        raise SystemExit("Set DATABASE_URL to a PostgreSQL database (it is created if missing)")
    os.environ.update(
        DJANGO_SETTINGS_MODULE="config.settings", DEBUG="0",
        SECRET_KEY=secrets.token_urlsafe(50), ALLOWED_HOSTS="127.0.0.1",
        SITE_URL="http://127.0.0.1", SIGNUP_BUFFER="0", SIGNUP_MIN_SECONDS="0",
        SIGNUP_RATE_PER_IP="100000000/m", SIGNUP_RATE_PER_FORM="100000000/m",
        # One confirmation task per minute, not one per signup: as in production, where
        # each web process queues at most one per CONFIRMATION_BATCH_SECONDS.
        CONFIRMATION_BATCH_SECONDS="60", LOG_LEVEL="WARNING",
    )  # fmt: skip
    os.environ.pop("REDIS_URL", None)  # no buffer, the rate limits in local memory
    _ensure_database(os.environ["DATABASE_URL"])

    import django

    django.setup()
    from django.core.management import call_command
    from django.core.wsgi import get_wsgi_application

    from audience.forms import render_stamp
    from audience.models import Contact, SignupForm

    call_command("migrate", verbosity=0)
    form, _ = SignupForm.objects.update_or_create(
        public_key=FORM_KEY,
        defaults={"name": "bench", "allowed_origins": ORIGIN, "consent_text": "Yes."},
    )
    run = secrets.token_hex(4)
    domain = f"known-{run}.bench.example"
    Contact.objects.bulk_create(
        Contact(email=f"k{i}@{domain}", status=Contact.Status.SUBSCRIBED)
        for i in range(args.requests + 50)
    )
    application = get_wsgi_application()
    stamp = render_stamp(form)
    times: dict[str, list[float]] = {"new": [], "known": []}

    def post(email: str) -> float:
        body = urlencode({"email": email, "consent": "on", "ts": stamp}).encode()
        statuses: list[str] = []
        started = time.perf_counter()
        response = application(_environ(body), lambda status, headers: statuses.append(status))
        b"".join(response)
        response.close()
        elapsed = time.perf_counter() - started
        if not statuses[0].startswith("200"):
            raise SystemExit(f"the signup answered {statuses[0]}")
        return elapsed

    try:
        for i in range(args.requests + 50):
            new = post(f"n{i}@new-{run}.bench.example")
            known = post(f"k{i}@{domain}")
            if i >= 50:  # warmed up: connections open, statements prepared
                times["new"].append(new)
                times["known"].append(known)
    finally:
        Contact.objects.filter(email__endswith=f"-{run}.bench.example").delete()

    print(f"{args.requests} signups of each kind, alternating, buffer off (written in the request)")
    for kind, values in times.items():
        values.sort()
        p50 = statistics.median(values) * 1000
        p90 = values[int(len(values) * 0.9)] * 1000
        print(f"  {kind:>5}: p50 {p50:.2f} ms, p90 {p90:.2f} ms")
    gap = (statistics.median(times["known"]) - statistics.median(times["new"])) * 1000
    print(f"  known - new at the median: {gap:+.2f} ms")


def _ensure_database(url: str) -> None:
    import psycopg

    name = url.rsplit("/", 1)[1].split("?")[0]
    admin_url = url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{name}"')


if __name__ == "__main__":
    main()
