"""Blast benchmark: a campaign to N contacts through K worker processes, against the floor.

    .venv/bin/python bench/blast.py --contacts 1000000 --per-message-contacts 50000 --workers 2

What it does, all in one run:
1. a fake Mailgun (bench/fake_esp.py) in its own process on loopback, Nagle off;
2. N contacts in PostgreSQL (COPY), in a database of its own (--database, created if
   missing, migrated);
3. for each mode (batch, per-message): K `celery worker --pool solo` processes; a
   campaign started with campaigns.services.campaign_start; timed from that call to the
   campaign's `finished_at` (set when the last Delivery is final);
4. the floor, in the same run: K processes doing raw anymail sends of pre-rendered
   messages in the same mode (same backend, same fake provider, same batch size, one
   reused connection each, no database), timed over the sends alone;
5. rates, the ratio to the floor, and each worker's peak RSS (VmHWM).

The floor sends each process's share of the N recipients from a pool of pre-rendered
payloads (real contacts' rendered values, real sizes) used round-robin, so memory stays
flat at a million; what it measures is the provider call path, which is the point.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _configure_env(args, port: int) -> dict:
    env = {
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "SECRET_KEY": "bench-only-secret-key-0123456789-abcdefghijklmnop",
        "DEBUG": "0",
        "SITE_URL": "https://news.shop.example",
        "DATABASE_URL": args.database,
        "REDIS_URL": args.redis,
        "EMAIL_PROVIDER": "mailgun",
        "EMAIL_API_KEY": "key-bench",
        "EMAIL_API_URL": f"http://127.0.0.1:{port}/v3",
        "MAILGUN_SENDER_DOMAIN": "mg.shop.example",
        "LOG_LEVEL": "WARNING",
    }
    # The product's defaults unless asked otherwise: that is what a user gets.
    if args.chunk_size:
        env["CAMPAIGN_CHUNK_SIZE"] = str(args.chunk_size)
    if args.batch_size:
        env["CAMPAIGN_BATCH_SIZE"] = str(args.batch_size)
    os.environ.update(env)
    return {**os.environ, **env}


def _ensure_database(url: str) -> None:
    name = url.rsplit("/", 1)[-1]
    result = subprocess.run(
        ["createdb", "-h", "127.0.0.1", "-U", "postgres", name],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode and "already exists" not in result.stderr:
        raise SystemExit(f"createdb {name} failed: {result.stderr}")


def _seed(n: int) -> None:
    from django.db import connection

    from audience.models import Contact

    have = Contact.objects.filter(status="subscribed").count()
    if have == n and Contact.objects.count() == n:
        print(f"contacts: {n:,} already seeded")
        return
    started = time.monotonic()
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE audience_contact RESTART IDENTITY CASCADE")
        names = ["Ann", "Bo", "Chloé", "Dev", "", "O'Neil & Sons", "<Zed>"]
        columns = "email, first_name, last_name, phone, status, attributes, source, created_at"
        with cursor.cursor.copy(
            f"COPY audience_contact ({columns}, updated_at) FROM STDIN"
        ) as copy:
            for i in range(n):
                copy.write_row(
                    (
                        f"c{i}@example.com",
                        names[i % len(names)],
                        "Lovelace",
                        "",
                        "subscribed",
                        '{"city": "Leeds"}',
                        "import",
                        "2026-01-01T00:00:00Z",
                        "2026-01-01T00:00:00Z",
                    )
                )
        cursor.execute("ANALYZE audience_contact")
    print(f"contacts: seeded {n:,} with COPY in {time.monotonic() - started:.1f} s")


def _tag_first(m: int):
    from django.db import connection

    from audience.models import Tag

    tag, _ = Tag.objects.get_or_create(name=f"bench-first-{m}")
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM audience_contact_tags WHERE tag_id = %s", [tag.pk])
        cursor.execute(
            "INSERT INTO audience_contact_tags (contact_id, tag_id) "
            "SELECT id, %s FROM audience_contact ORDER BY id LIMIT %s",
            [tag.pk, m],
        )
    return tag


def _campaign(mode: str, tag=None):
    from campaigns.models import Campaign

    campaign = Campaign.objects.create(
        name=f"bench {mode}",
        subject="We're still here, {{ first_name|default:'friend' }}",
        preheader="Instagram is down; we are not",
        body=(
            'Hi **{{ first_name|default:"friend" }}**,\n\nInstagram is down, but we are '
            "still here. Order at [our shop](https://shop.example) or reply to this email."
            "\n\n{% if attributes.city %}See you in {{ attributes.city }}!{% endif %}"
        ),
        send_mode=mode,
        audience=Campaign.Audience.TAGS if tag else Campaign.Audience.EVERYONE,
    )
    if tag:
        campaign.tags.add(tag)
    return campaign


def _start_workers(k: int, env: dict) -> list[subprocess.Popen]:
    procs = []
    for i in range(k):
        procs.append(
            subprocess.Popen(
                [
                    *(sys.executable, "-m", "celery", "-A", "config", "worker"),
                    *("--pool", "solo", "--loglevel", "WARNING", "--without-gossip"),
                    *("--without-mingle", "--without-heartbeat", "-n", f"bench{i}@%h"),
                ],
                cwd=ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=open(ROOT / "var" / f"bench-worker-{i}.log", "w"),  # noqa: SIM115
            )
        )
    return procs


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _stop(procs) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def _run_campaign(mode: str, n: int, k: int, env: dict, tag=None) -> dict:
    from django.db import connection

    from campaigns import services
    from campaigns.models import Campaign
    from config.celery import app

    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE campaigns_delivery, campaigns_deliverychunk")
    app.control.purge()
    workers = _start_workers(k, env)
    # Let them connect and import everything before the clock starts (and before their
    # CPU counter is read: start-up is not per-message work). A fixed sleep was too
    # short on a loaded machine; wait until every worker answers a ping.
    deadline = time.time() + 60
    while len(app.control.ping(timeout=1.0) or []) < k and time.time() < deadline:
        time.sleep(0.5)
    time.sleep(1)
    cpu_before = sum(_cpu_seconds(p.pid) for p in workers)
    campaign = _campaign(mode, tag)
    t0 = time.time()
    campaign = services.campaign_start(campaign=campaign)
    snapshot = time.time() - t0
    if campaign.total_count != n:
        raise SystemExit(f"snapshot has {campaign.total_count} recipients, expected {n}")
    while True:
        time.sleep(0.25)
        campaign.refresh_from_db()
        if campaign.status != Campaign.Status.SENDING:
            break
    elapsed = campaign.finished_at.timestamp() - t0
    rss = [_peak_rss_mb(p.pid) for p in workers]
    cpu = sum(_cpu_seconds(p.pid) for p in workers) - cpu_before
    _stop(workers)
    if campaign.status != Campaign.Status.SENT or campaign.sent_count != n:
        raise SystemExit(
            f"campaign ended {campaign.status} with {campaign.sent_count}/{n} sent: "
            f"{campaign.status_reason}"
        )
    return {
        "elapsed": elapsed,
        "rate": n / elapsed,
        "rss": rss,
        "snapshot": snapshot,
        "cpu_us": cpu / n * 1e6,
    }


# --- the floor: raw anymail, no database ------------------------------------------------


def _floor_child(mode, share, pool_size, batch_size, barrier, out) -> None:
    import django

    django.setup()
    from anymail.message import AnymailMessage
    from django.core.mail import EmailMultiAlternatives, get_connection

    from audience.models import Contact
    from campaigns.models import Campaign, SenderSettings
    from campaigns.rendering import UNSUBSCRIBE, Skeleton, compile_campaign, unsubscribe_headers
    from campaigns.sending import _placeholder_style

    sender = SenderSettings.load()
    campaign = Campaign.objects.filter(name=f"bench {mode}").order_by("-pk").first()
    skeleton = compile_campaign(campaign, sender)
    contacts = list(Contact.objects.order_by("pk")[: max(pool_size, batch_size)])
    from django.db import connections

    connections.close_all()  # no database from here on
    payloads = []
    if mode == "batch":
        ph = _placeholder_style("anymail.backends.mailgun.EmailBackend")
        keys = [f"v{k}" for k in range(len(skeleton.slots))]
        subject = Skeleton.fill_placeholders(skeleton.subject, lambda k: ph(f"v{k}"))
        text = Skeleton.fill_placeholders(skeleton.text, lambda k: ph(f"v{k}"))
        html = Skeleton.fill_placeholders(skeleton.html, lambda k: ph(f"v{k}"))
        for start in range(0, max(pool_size, batch_size), batch_size):
            group = contacts[start : start + batch_size]
            merge_data, merge_headers = {}, {}
            for contact in group:
                values, urls = skeleton.values(contact, sender)
                merge_data[contact.email] = dict(zip(keys, values, strict=True))
                merge_headers[contact.email] = {
                    "List-Unsubscribe": unsubscribe_headers(urls[UNSUBSCRIBE])["List-Unsubscribe"]
                }
            payloads.append(
                (subject, text, html, [c.email for c in group], merge_data, merge_headers)
            )
    else:
        for contact in contacts[:pool_size]:
            values, urls = skeleton.values(contact, sender)
            message = EmailMultiAlternatives(
                subject=Skeleton.fill(skeleton.subject, values),
                body=Skeleton.fill(skeleton.text, values),
                from_email=skeleton.from_email,
                to=[contact.email],
                headers=unsubscribe_headers(urls[UNSUBSCRIBE]),
            )
            message.attach_alternative(Skeleton.fill(skeleton.html, values), "text/html")
            payloads.append(message)
    conn = get_connection()
    conn.open()
    barrier.wait()
    started = time.time()
    cpu_started = time.process_time()
    sent = 0
    i = 0
    while sent < share:
        if mode == "batch":
            subject, text, html, to, merge_data, merge_headers = payloads[i % len(payloads)]
            take = min(len(to), share - sent)
            message = AnymailMessage(
                subject=subject,
                body=text,
                from_email=skeleton.from_email,
                to=to[:take],
                headers={"List-Unsubscribe-Post": "List-Unsubscribe=One-Click"},
                merge_data=merge_data,
                merge_global_data={},
                merge_headers=merge_headers,
            )
            message.attach_alternative(html, "text/html")
            conn.send_messages([message])
            sent += take
        else:
            conn.send_messages([payloads[i % len(payloads)]])
            sent += 1
        i += 1
    finished = time.time()
    cpu = time.process_time() - cpu_started
    conn.close()
    out.put((started, finished, sent, cpu))


def _run_floor(mode: str, n: int, k: int, batch_size: int) -> dict:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(k)
    out = ctx.Queue()
    shares = [n // k + (1 if i < n % k else 0) for i in range(k)]
    pool = 20 * batch_size if mode == "batch" else 2000
    procs = [
        ctx.Process(target=_floor_child, args=(mode, share, pool, batch_size, barrier, out))
        for share in shares
    ]
    for proc in procs:
        proc.start()
    results = [out.get() for _ in procs]
    for proc in procs:
        proc.join()
    started = min(r[0] for r in results)
    finished = max(r[1] for r in results)
    total = sum(r[2] for r in results)
    elapsed = finished - started
    cpu = sum(r[3] for r in results)
    return {"elapsed": elapsed, "rate": total / elapsed, "cpu_us": cpu / total * 1e6}


def _print(mode: str, n: int, blast: dict, floor: dict, label: str) -> None:
    rss = ", ".join(f"{r:.0f}" for r in blast["rss"])
    print(
        f"{mode:>11} {label}: N={n:,}  blast {blast['elapsed']:.1f} s = {blast['rate']:,.0f}/s "
        f"(snapshot {blast['snapshot']:.1f} s)  |  floor {floor['elapsed']:.1f} s = "
        f"{floor['rate']:,.0f}/s  |  ratio {blast['rate'] / floor['rate']:.0%}  |  "
        f"client CPU/msg: workers {blast['cpu_us']:.0f} µs, floor {floor['cpu_us']:.0f} µs  |  "
        f"worker peak RSS MB: {rss}  |  load {os.getloadavg()[0]:.1f}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description="Stillhere blast benchmark")
    parser.add_argument("--contacts", type=int, default=1_000_000)
    parser.add_argument(
        "--per-message-contacts",
        type=int,
        default=50_000,
        help="recipients for the per-message run (the first M contacts)",
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=1, help="blast/floor pairs per mode")
    parser.add_argument("--modes", default="batch,per_message")
    parser.add_argument("--chunk-size", type=int, help="default: CAMPAIGN_CHUNK_SIZE's default")
    parser.add_argument("--batch-size", type=int, help="default: CAMPAIGN_BATCH_SIZE's default")
    parser.add_argument(
        "--database", default="postgres://postgres@127.0.0.1:5432/stillhere_bench_send"
    )
    parser.add_argument("--redis", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/2"))
    args = parser.parse_args()

    port = _free_port()
    env = _configure_env(args, port)
    esp = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "bench" / "fake_esp.py"),
            "--port",
            str(port),
            "--record",
            "count",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    esp.stdout.readline()
    _ensure_database(args.database)

    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command

    from campaigns import ratelimit
    from campaigns.models import SenderSettings

    args.chunk_size = settings.CAMPAIGN_CHUNK_SIZE
    # A batch never spans two chunks: the floor sends batches of the size the worker can.
    args.batch_size = min(settings.CAMPAIGN_BATCH_SIZE, args.chunk_size)

    call_command("migrate", verbosity=0)
    SenderSettings.objects.update_or_create(
        pk=1,
        defaults={
            "from_name": "Bench Shop",
            "from_email": "news@shop.example",
            "postal_address": "1 Harbour Road, Portsmouth",
            "rate_per_second": 0,
            "rate_per_hour": 0,
        },
    )
    ratelimit.reset()
    _seed(args.contacts)
    load = os.getloadavg()[0]
    print(
        f"machine: {os.cpu_count()} cores, load {load:.2f} at start; "
        f"workers: {args.workers} (celery --pool solo); chunk {args.chunk_size}, "
        f"batch {args.batch_size}; fake Mailgun on loopback port {port}"
    )

    try:
        for mode in args.modes.split(","):
            n = args.contacts if mode == "batch" else min(args.per_message_contacts, args.contacts)
            tag = _tag_first(n) if n < args.contacts else None
            blasts, floors = [], []
            for attempt in range(args.repeat):
                # Alternate, so a neighbour's burst of load hits both sides alike.
                blasts.append(_run_campaign(mode, n, args.workers, env, tag))
                floors.append(_run_floor(mode, n, args.workers, args.batch_size))
                _print(mode, n, blasts[-1], floors[-1], f"run {attempt + 1}/{args.repeat}")
            if args.repeat > 1:
                best_blast = max(blasts, key=lambda r: r["rate"])
                best_floor = max(floors, key=lambda r: r["rate"])
                _print(mode, n, best_blast, best_floor, "best of each")
        print(f"load at end: {os.getloadavg()[0]:.2f}")
    finally:
        esp.terminate()
        esp.wait()


if __name__ == "__main__":
    main()
