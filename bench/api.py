"""The ways in, side by side: API upserts, Shopify customer webhooks, form signups.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/bench_api \\
    REDIS_URL=redis://127.0.0.1:6379/4 .venv/bin/python bench/api.py

Starts gunicorn (DEBUG off, PostgreSQL, Redis as cache and rate-limit store) on a free
loopback port, then posts, closed loop over -c keep-alive connections, N each of:

- signup: a form signup as the script embed posts it (a new pending contact, owed its
  double opt-in mail), written in its request (SIGNUP_BUFFER=0) like the other two, so
  the three compare the same thing: a contact and its consent event committed to
  PostgreSQL before the 2xx;
- api upsert: POST /api/v1/contacts with a bearer token, a new contact with the consent
  the client states (subscribed, dated), through audience.sync;
- shopify: a signed customers/create webhook in Shopify's documented shape (HMAC over
  the body, a fresh X-Shopify-Webhook-Id), through audience.integrations.

The three run in alternating rounds (--rounds), so a shared machine's drift falls on all
alike. It prints each one's rate and p50/p99 latency and its rate as a share of the
signup's, then checks that every 2xx is in the database (a contact and a consent event
each, a receipt per webhook). Mail owed is queued to a queue nobody consumes
(bench/signup_settings.py) and purged. Exit status 1 if anything failed or was lost.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import os
import secrets
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.signup import (  # noqa: E402
    FORM_KEY,
    _bench_env,
    _ensure_database,
    _free_port,
    _load,
    _percentile,
    _purge_queue,
    _read_response,
    _signup_request,
    _wait_healthy,
    bench_form,
)

STORE_KEY = "bench-store-key"
STORE_SECRET = "bench-shopify-secret"
SHOP_DOMAIN = "bench-shop.myshopify.com"
FIXTURE = ROOT / "tests" / "fixtures" / "stores" / "shopify_customers_create.json"


def _http(host: str, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\n{head}Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def _upsert_request(host: str, token: str, email: str) -> bytes:
    body = json.dumps(
        {
            "email": email,
            "first_name": "Bench",
            "last_name": "Mark",
            "tags": ["bench"],
            "consent": {"status": "subscribed", "at": "2026-12-01T10:00:00Z"},
        }
    ).encode()
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
    return _http(host, "/api/v1/contacts", body, headers)


def _shopify_request(host: str, template: dict, i: int, email: str) -> bytes:
    payload = {**template, "id": 9_000_000_000 + i, "email": email}
    body = json.dumps(payload).encode()
    signature = base64.b64encode(hmac.new(STORE_SECRET.encode(), body, hashlib.sha256).digest())
    headers = {
        "Content-Type": "application/json",
        "X-Shopify-Topic": "customers/create",
        "X-Shopify-Hmac-Sha256": signature.decode(),
        "X-Shopify-Shop-Domain": SHOP_DOMAIN,
        "X-Shopify-Webhook-Id": secrets.token_hex(16),
    }
    return _http(host, f"/integrations/shopify/{STORE_KEY}/", body, headers)


async def _closed_loop(port: int, requests: list[bytes], connections: int) -> dict:
    """Each connection sends its next request as soon as its last one is answered."""
    loop = asyncio.get_running_loop()
    pending = iter(requests)
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    errors: Counter[str] = Counter()

    async def connection() -> None:
        reader = writer = None
        for request in pending:
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                sent = loop.time()
                writer.write(request)
                status, keep_alive = await _read_response(reader)
            except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                errors[type(exc).__name__] += 1
                writer = None
                continue
            latencies.append(loop.time() - sent)
            statuses[status] += 1
            if not keep_alive:
                writer.close()
                writer = None
        if writer is not None:
            writer.close()

    start = loop.time()
    await asyncio.gather(*(connection() for _ in range(connections)))
    elapsed = loop.time() - start
    latencies.sort()
    return {
        "n": len(requests),
        "elapsed": elapsed,
        "ok": sum(n for status, n in statuses.items() if 200 <= status < 300),
        "statuses": dict(statuses),
        "errors": dict(errors),
        "latencies": latencies,
    }


def _setup(run: str):
    from django.contrib.auth import get_user_model

    from audience.apitokens import api_token_create
    from audience.models import Store

    bench_form()
    Store.objects.update_or_create(
        key=STORE_KEY,
        defaults={
            "kind": Store.Kind.SHOPIFY,
            "name": "Benchmark shop",
            "domain": SHOP_DOMAIN,
            "secret": STORE_SECRET,
            "enabled": True,
        },
    )
    owner, _ = get_user_model().objects.get_or_create(username="bench-api")
    _, token = api_token_create(
        name=f"bench {run}",
        can_read_contacts=True,
        can_write_contacts=True,
        can_send_campaigns=False,
        created_by=owner,
    )
    return token


def _stored(domain: str) -> tuple[int, int]:
    from audience.models import ConsentEvent, Contact

    contacts = Contact.objects.filter(email__endswith="@" + domain)
    return contacts.count(), ConsentEvent.objects.filter(contact__in=contacts).count()


def _cleanup(domains: list[str], run: str) -> None:
    from audience.models import ApiToken, Contact, StoreWebhook

    for domain in domains:
        for contact in Contact.objects.filter(email__endswith="@" + domain).iterator():
            contact.delete()
    StoreWebhook.objects.filter(store__key=STORE_KEY).delete()
    ApiToken.objects.filter(name=f"bench {run}").delete()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--requests", type=int, default=6000, help="per way in")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("-c", "--connections", type=int, default=16)
    parser.add_argument("--workers", type=int, default=(os.cpu_count() or 1) + 1)
    parser.add_argument("--keep", action="store_true", help="keep this run's contacts")
    args = parser.parse_args()

    database_url = os.environ.get("DATABASE_URL", "")
    redis_url = os.environ.get("REDIS_URL", "")
    if not database_url.startswith(("postgres://", "postgresql://")) or not redis_url:
        raise SystemExit(
            "set DATABASE_URL=postgres://… and REDIS_URL=redis://… (see the docstring)"
        )
    _ensure_database(database_url)
    port = _free_port()
    var_dir = Path(tempfile.mkdtemp(prefix="stillhere-bench-api-"))
    env = _bench_env(argparse.Namespace(no_buffer=True), port, var_dir)
    # One loopback client makes every request: the limits still count in Redis on each
    # (that cost is part of every way in), raised only so they let N through.
    env["API_RATE"] = "100000000/m"
    python = sys.executable
    for command in (["migrate", "--noinput", "-v0"], ["collectstatic", "--noinput", "-v0"]):
        subprocess.run([python, "manage.py", *command], cwd=ROOT, env=env, check=True)
    os.environ.update(env)
    import django

    django.setup()
    from django.conf import settings

    from audience.forms import render_stamp
    from audience.models import StoreWebhook

    run = secrets.token_hex(4)
    token = _setup(run)
    stamp = render_stamp(bench_form())
    template = json.loads(FIXTURE.read_text())
    host = f"127.0.0.1:{port}"
    domains = {way: f"{way}-{run}.bench.example" for way in ("signup", "api", "shopify")}

    server = subprocess.Popen(
        [
            python, "-m", "gunicorn", "config.wsgi:application", "--bind", host,
            "--workers", str(args.workers), "--backlog", "2048", "--log-level", "warning",
            "--error-logfile", str(var_dir / "gunicorn.log"),
        ],
        cwd=ROOT, env=env, start_new_session=True,
    )  # fmt: skip
    results: dict[str, list[dict]] = {way: [] for way in domains}
    failures: list[str] = []
    try:
        _wait_healthy(f"http://{host}/healthz", server)
        print(
            f"gunicorn {args.workers} sync workers, {args.connections} connections, "
            f"{os.cpu_count()} CPUs, load {_load()}"
        )
        per_round = args.requests // args.rounds
        build = {
            "signup": lambda i, e: _signup_request(host, f"/f/{FORM_KEY}/submit", e, stamp),
            "api": lambda i, e: _upsert_request(host, token, e),
            "shopify": lambda i, e: _shopify_request(host, template, i, e),
        }
        # Warm each worker's code paths and connections first (not counted, not kept).
        warmed = {}
        for way, make in build.items():
            warm = [make(10**8 + i, f"warm{i}@{domains[way]}") for i in range(200)]
            warmed[way] = asyncio.run(_closed_loop(port, warm, args.connections))
            if warmed[way]["ok"] != len(warm):
                failures.append(f"{way} warm-up: {dict(warmed[way]['statuses'])}")
        for r in range(args.rounds):
            for way, make in build.items():
                offset = r * per_round
                batch = [
                    make(offset + i, f"c{offset + i}@{domains[way]}") for i in range(per_round)
                ]
                results[way].append(asyncio.run(_closed_loop(port, batch, args.connections)))
        print(f"\n{'way in':<10} {'requests':>8} {'rate/s':>8} {'p50 ms':>7} {'p99 ms':>7}"
              f" {'vs signup':>9}")  # fmt: skip
        rates = {}
        for way, rounds in results.items():
            n = sum(x["n"] for x in rounds)
            ok = sum(x["ok"] for x in rounds)
            elapsed = sum(x["elapsed"] for x in rounds)
            latencies = sorted(v for x in rounds for v in x["latencies"])
            rates[way] = ok / elapsed
            share = rates[way] / rates["signup"]
            print(
                f"{way:<10} {n:>8} {rates[way]:>8.0f} {_percentile(latencies, 50) * 1000:>7.1f}"
                f" {_percentile(latencies, 99) * 1000:>7.1f} {share:>8.0%}"
            )
            statuses = Counter()
            for x in rounds:
                statuses.update(x["statuses"])
                if x["errors"]:
                    failures.append(f"{way}: connection errors {x['errors']}")
            if ok != n:
                failures.append(f"{way}: {n - ok} not 2xx ({dict(statuses)})")
            by_round = ", ".join(f"{x['ok'] / x['elapsed']:.0f}" for x in rounds)
            print(f"{'':<10} by round: {by_round}")
        print("\nstored (contacts, consent events) for the 2xx answers:")
        for way, domain in domains.items():
            ok = sum(x["ok"] for x in results[way]) + warmed[way]["ok"]  # the warm-up's too
            contacts, events = _stored(domain)
            print(f"  {way:<8} {contacts} contacts, {events} events (of {ok} answered 2xx)")
            if contacts != ok or events < ok:
                failures.append(f"{way}: {ok} answered 2xx but {contacts} contacts stored")
        receipts = StoreWebhook.objects.filter(store__key=STORE_KEY).count()
        if receipts != sum(x["ok"] for x in results["shopify"]) + warmed["shopify"]["ok"]:
            failures.append(f"shopify: {receipts} receipts for the 2xx webhooks")
    finally:
        server.terminate()
        server.wait(timeout=30)
        _purge_queue(redis_url, settings.BENCH_CONFIRMATIONS_QUEUE)
        if not args.keep:
            _cleanup(list(domains.values()), run)
    for failure in failures:
        print(f"FAILED: {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
