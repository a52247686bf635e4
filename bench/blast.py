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
5. rates, the ratio to the floor, and each worker's peak RSS (VmHWM);
6. with --failover 0.3: the same campaign again with a failover provider configured (a
   second fake Mailgun, another account: its own port, key and domain) and the primary
   answering 500 to everything from 30% of the recipients on; its rate is printed next
   to the plain run's, with who got what from which provider.

The floor sends each process's share of the N recipients from a pool of pre-rendered
payloads (real contacts' rendered values, real sizes) used round-robin, so memory stays
flat at a million; what it measures is the provider call path, which is the point.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import queue
import socket
import subprocess
import sys
import threading
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
        # The tracking webhook is mounted with the provider, and must have its key.
        "MAILGUN_WEBHOOK_SIGNING_KEY": "bench-signing-key",
        "LOG_LEVEL": "WARNING",
    }
    # The product's defaults unless asked otherwise: that is what a user gets.
    if args.chunk_size:
        env["CAMPAIGN_CHUNK_SIZE"] = str(args.chunk_size)
    if args.batch_size:
        env["CAMPAIGN_BATCH_SIZE"] = str(args.batch_size)
    if args.concurrency:
        env["CAMPAIGN_SEND_CONCURRENCY"] = str(args.concurrency)
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


def _esp(url: str, command: dict | None = None) -> dict:
    """Tell the fake provider something (POST /_control), or read its stats."""
    import json
    import urllib.request

    if command is not None:
        request = urllib.request.Request(
            f"{url}/_control", data=json.dumps(command).encode(), method="POST"
        )
        urllib.request.urlopen(request, timeout=10).read()
    return json.loads(urllib.request.urlopen(f"{url}/_stats", timeout=10).read())


def _recipients(url: str) -> dict:
    import json
    import urllib.request

    return json.loads(urllib.request.urlopen(f"{url}/_recipients", timeout=60).read())


def _failover_env(env: dict, backup_url: str) -> dict:
    return {
        **env,
        "EMAIL_FAILOVER_PROVIDER": "mailgun",
        "EMAIL_FAILOVER_API_KEY": "key-bench-failover",
        "EMAIL_FAILOVER_API_URL": f"{backup_url}/v3",
        "EMAIL_FAILOVER_DOMAIN": "mg2.shop.example",
    }


def _run_campaign(
    mode: str, n: int, k: int, env: dict, tag=None, esp_url="", backup_url="", fail_at=0.0
) -> dict:
    """One campaign through K workers; with `backup_url`, a failover provider there and
    the primary failing (500) once it has taken `fail_at` of the N recipients."""
    from django.db import connection

    from config.celery import app

    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE campaigns_delivery, campaigns_deliverychunk")
    app.control.purge()
    _esp(esp_url, {"reset": True})
    if backup_url:
        _esp(backup_url, {"reset": True})
        _esp(esp_url, {"fail_after": int(n * fail_at), "status": 500})
        env = _failover_env(env, backup_url)
    workers = _start_workers(k, env)
    try:
        return _timed_campaign(mode, n, k, tag, esp_url, backup_url, workers)
    except BaseException:
        _stop(workers)  # no worker outlives a failed run, sending to a fake that is gone
        raise


def _timed_campaign(mode, n, k, tag, esp_url, backup_url, workers) -> dict:
    from campaigns import services
    from campaigns.models import Campaign
    from config.celery import app

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
    stats = _esp(esp_url)
    result = {
        "elapsed": elapsed,
        "rate": n / elapsed,
        "cpu_us": cpu / n * 1e6,
        "duplicates": stats["duplicates"],
        "missed": n - stats["unique_recipients"],
        "over_capacity": stats["over_capacity"],
        "rss": rss,
        "snapshot": snapshot,
    }
    if backup_url:
        backup = _esp(backup_url)
        first, second = _recipients(esp_url), _recipients(backup_url)
        _esp(esp_url, {"reset": True})  # the primary is back for the next run
        everyone = {**first}
        for email, count in second.items():
            everyone[email] = everyone.get(email, 0) + count
        result.update(
            duplicates=sum(everyone.values()) - len(everyone),
            missed=n - len(everyone),
            counted=campaign.duplicate_count,
            by_primary=stats["recipients"],
            by_failover=backup["recipients"],
            switched=campaign.provider == "secondary",
            switched_after=(
                campaign.provider_switched_at.timestamp() - t0
                if campaign.provider_switched_at
                else None
            ),
        )
    return result


# --- the floor: raw anymail, no database ------------------------------------------------


def _floor_child(mode, share, pool_size, batch_size, slot_count, barrier, out) -> None:
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
            payloads.append((message, None, None, [contact.email]))
    # The same number of connections as a worker's slots, each in its own thread, each
    # taking the next send from one shared count.
    lock = threading.Lock()
    left = {"n": share, "i": 0}

    def take_next():
        with lock:
            if left["n"] <= 0:
                return None
            item = payloads[left["i"] % len(payloads)]
            take = min(len(item[3]), left["n"]) if mode == "batch" else 1
            left["n"] -= take
            left["i"] += 1
            return item, take

    def slot(ready) -> None:
        conn = get_connection()
        conn.open()
        ready.wait()
        while (job := take_next()) is not None:
            item, take = job
            if mode == "batch":
                subject, text, html, to, merge_data, merge_headers = item
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
            else:
                conn.send_messages([item[0]])
        conn.close()

    ready = threading.Event()
    threads = [threading.Thread(target=slot, args=(ready,)) for _ in range(slot_count)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.time()
    cpu_started = time.process_time()
    ready.set()
    for thread in threads:
        thread.join()
    finished = time.time()
    cpu = time.process_time() - cpu_started
    out.put((started, finished, share, cpu))


def _run_floor(mode: str, n: int, k: int, batch_size: int, connections: int) -> dict:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(k)
    out = ctx.Queue()
    shares = [n // k + (1 if i < n % k else 0) for i in range(k)]
    pool = 20 * batch_size if mode == "batch" else 2000
    procs = [
        ctx.Process(
            target=_floor_child,
            args=(mode, share, pool, batch_size, connections, barrier, out),
        )
        for share in shares
    ]
    for proc in procs:
        proc.start()
    results = []
    while len(results) < len(procs):
        try:
            results.append(out.get(timeout=5))
        except queue.Empty:
            dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
            if dead:
                raise SystemExit(f"a floor process died (exit {dead[0]}); see above") from None
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
        f"{floor['rate']:,.0f}/s  |  ratio {blast['rate'] / floor['rate']:.2f}  |  "
        f"duplicates {blast['duplicates']}, missed {blast['missed']}, 429s "
        f"{blast['over_capacity']}  |  client CPU/msg: workers {blast['cpu_us']:.0f} µs, "
        f"floor {floor['cpu_us']:.0f} µs  |  worker peak RSS MB: {rss}  |  "
        f"load {os.getloadavg()[0]:.1f}",
        flush=True,
    )


def _print_failover(mode: str, n: int, run: dict, plain: dict, fail_at: float) -> None:
    after = run["switched_after"]
    print(
        f"{mode:>11} failover (primary fails at {fail_at:.0%}): N={n:,}  blast "
        f"{run['elapsed']:.1f} s = {run['rate']:,.0f}/s, next to plain {plain['rate']:,.0f}/s "
        f"(ratio {run['rate'] / plain['rate']:.2f})  |  switched "
        f"{f'{after:.1f} s in' if after is not None else 'never'}  |  primary took "
        f"{run['by_primary']:,}, failover {run['by_failover']:,}  |  received twice "
        f"{run['duplicates']}, counted as possible duplicates {run['counted']}, missed "
        f"{run['missed']}",
        flush=True,
    )


def _latencies(text: str) -> list[tuple[float, float]]:
    """ "0:0,50:15,150:50" -> [(0, 0), (50, 15), (150, 50)] (milliseconds, ± jitter)."""
    out = []
    for part in text.split(","):
        latency, _, jitter = part.partition(":")
        out.append((float(latency), float(jitter or 0)))
    return out


def _check(failures: list, ok: bool, text: str) -> None:
    print(f"  {'ok  ' if ok else 'MISS'} {text}", flush=True)
    if not ok:
        failures.append(text)


def main() -> None:
    parser = argparse.ArgumentParser(description="Stillhere blast benchmark")
    parser.add_argument("--contacts", type=int, default=1_000_000)
    parser.add_argument(
        "--per-message-contacts",
        type=int,
        default=50_000,
        help="recipients for the per-message run (the first M contacts)",
    )
    parser.add_argument(
        "--peer-contacts",
        type=int,
        default=5_000,
        help="mails django-post-office sends per peer row (0: no peer rows)",
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--latencies",
        default="0:0,50:15,150:50",
        help="the fake provider's answer time, ms:jitter_ms, comma-separated",
    )
    parser.add_argument("--max-in-flight", type=int, default=0, help="the fake's 429 cap (0: none)")
    parser.add_argument("--repeat", type=int, default=1, help="blast/floor pairs per mode")
    parser.add_argument(
        "--failover",
        type=float,
        default=0.0,
        help="also run each mode with a failover provider and the primary failing from "
        "this share of the recipients on (0.3: at 30%%; 0: no failover run)",
    )
    parser.add_argument("--modes", default="per_message,batch")
    parser.add_argument("--chunk-size", type=int, help="default: CAMPAIGN_CHUNK_SIZE's default")
    parser.add_argument("--batch-size", type=int, help="default: CAMPAIGN_BATCH_SIZE's default")
    parser.add_argument(
        "--concurrency", type=int, help="default: CAMPAIGN_SEND_CONCURRENCY's default"
    )
    parser.add_argument(
        "--database", default="postgres://postgres@127.0.0.1:5432/stillhere_bench_send"
    )
    parser.add_argument("--redis", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/2"))
    args = parser.parse_args()

    port = _free_port()
    env = _configure_env(args, port)
    esp_url = f"http://127.0.0.1:{port}"
    esp = subprocess.Popen(
        [
            *(sys.executable, str(ROOT / "bench" / "fake_esp.py"), "--port", str(port)),
            *("--record", "recipients", "--max-in-flight", str(args.max_in_flight)),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    esp.stdout.readline()
    backup_url, backup = "", None
    if args.failover:
        backup_port = _free_port()
        backup_url = f"http://127.0.0.1:{backup_port}"
        backup = subprocess.Popen(
            [
                *(sys.executable, str(ROOT / "bench" / "fake_esp.py"), "--port", str(backup_port)),
                *("--record", "recipients", "--max-in-flight", str(args.max_in_flight)),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        backup.stdout.readline()
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
    slots = settings.CAMPAIGN_SEND_CONCURRENCY

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
        f"workers: {args.workers} (celery --pool solo), {slots} send slots each; "
        f"chunk {args.chunk_size}, batch {args.batch_size}; fake Mailgun on loopback port "
        f"{port}, 429 past {args.max_in_flight or 'no cap on'} sends in flight"
    )

    results: dict = {}
    failovers: dict = {}
    try:
        for latency, jitter in _latencies(args.latencies):
            _esp(esp_url, {"latency_ms": latency, "jitter_ms": jitter})
            if backup_url:
                _esp(backup_url, {"latency_ms": latency, "jitter_ms": jitter})
            print(f"--- provider latency {latency:g} ± {jitter:g} ms", flush=True)
            for mode in args.modes.split(","):
                n = (
                    args.contacts
                    if mode == "batch"
                    else min(args.per_message_contacts, args.contacts)
                )
                tag = _tag_first(n) if n < args.contacts else None
                # The floor uses as many connections as the workers keep calls in flight:
                # every slot per message; in batch mode, the batch calls a chunk holds.
                batches = -(-args.chunk_size // args.batch_size)
                connections = slots if mode != "batch" else min(slots, batches)
                blasts, floors = [], []
                for attempt in range(args.repeat):
                    # Alternate, so a neighbour's burst of load hits both sides alike.
                    blasts.append(_run_campaign(mode, n, args.workers, env, tag, esp_url))
                    floors.append(_run_floor(mode, n, args.workers, args.batch_size, connections))
                    _print(mode, n, blasts[-1], floors[-1], f"run {attempt + 1}/{args.repeat}")
                best_blast = max(blasts, key=lambda r: r["rate"])
                best_floor = max(floors, key=lambda r: r["rate"])
                if args.repeat > 1:
                    _print(mode, n, best_blast, best_floor, "best of each")
                results[(latency, mode)] = (best_blast, best_floor, blasts)
                if args.failover:
                    run = _run_campaign(
                        mode, n, args.workers, env, tag, esp_url, backup_url, args.failover
                    )
                    failovers[(latency, mode)] = run
                    _print_failover(mode, n, run, best_blast, args.failover)
            if args.peer_contacts and "per_message" in args.modes:
                from bench import postoffice_peer

                for threads in (5, 10):
                    peer = postoffice_peer.run(
                        args.peer_contacts,
                        threads=threads,
                        processes=args.workers,
                        esp_url=esp_url,
                        database_url=args.database + "_postoffice",
                    )
                    results[(latency, f"post_office_{threads}")] = peer
                    print(
                        f"acceptance: django-post-office send_queued_mail, {args.workers} "
                        f"processes x {threads} threads, N={args.peer_contacts:,}: "
                        f"{peer['elapsed']:.1f} s = {peer['rate']:,.0f}/s "
                        f"(sent {peer['sent']}, failed {peer['failed']})",
                        flush=True,
                    )
        print(f"load at end: {os.getloadavg()[0]:.2f}")
    finally:
        for server in (esp, backup):
            if server is not None:
                server.terminate()
                server.wait()
    _targets(results, args, failovers)


def _targets(results: dict, args, failovers: dict) -> None:
    """The issue's targets, each line ok or MISS; exit 2 if any is missed."""
    failures: list = []
    print("targets:")
    for (latency, mode), run in sorted(failovers.items()):
        where = f"{mode} failover at {latency:g} ms"
        _check(failures, run["switched"], f"{where}: the campaign switched to the failover")
        _check(failures, run["missed"] == 0, f"{where}: 0 missed")
        _check(
            failures,
            run["duplicates"] <= run["counted"] <= 2 * args.chunk_size,
            f"{where}: {run['duplicates']} received twice ≤ {run['counted']} counted ≤ "
            "the chunks in flight",
        )
    for (latency, mode), value in sorted(results.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        if mode.startswith("post_office"):
            continue
        blast, floor, runs = value
        ratio = blast["rate"] / floor["rate"]
        where = f"{mode} at {latency:g} ms"
        _check(
            failures,
            all(r["duplicates"] == 0 and r["missed"] == 0 for r in runs),
            f"{where}: 0 duplicates and 0 missed in every run",
        )
        _check(
            failures,
            max(max(r["rss"]) for r in runs) < 200,
            f"{where}: worker peak RSS {max(max(r['rss']) for r in runs):.0f} MB < 200 MB",
        )
        if latency == 0:
            share = 0.80 if mode == "per_message" else 0.63
            _check(failures, ratio >= share, f"{where}: {ratio:.2f} of the floor ≥ {share}")
        elif mode == "per_message" and latency < 150:
            # The per-message share of the floor is set at 150 ms.
            print(f"  info {where}: {ratio:.2f} of the floor", flush=True)
        else:
            _check(failures, ratio >= 0.8, f"{where}: {ratio:.2f} of the floor ≥ 0.8")
        if mode == "per_message" and latency >= 150:
            _check(failures, blast["rate"] >= 300, f"{where}: {blast['rate']:,.0f}/s ≥ 300/s")
            peer = results.get((latency, "post_office_5"))
            if peer:
                times = blast["rate"] / peer["rate"]
                _check(
                    failures,
                    times >= 2,
                    f"{where}: {times:.1f}x django-post-office at its default 5 threads, ≥ 2x",
                )
    if failures:
        print(f"{len(failures)} target(s) missed")
        raise SystemExit(2)


if __name__ == "__main__":
    main()
