"""django-post-office as a peer row for bench/blast.py: its own queue, its own sender.

    .venv/bin/python bench/postoffice_peer.py --n 5000 --threads 5 --processes 2 \\
        --latency-ms 150 --jitter-ms 50

django-post-office is not a project dependency. It runs in a throwaway venv
(var/bench-postoffice-venv, built once and reused while its stamp matches) with the same
Django, django-anymail and psycopg versions as the project's .venv, in a tiny standalone
Django project written to a temporary directory, against a PostgreSQL database of its own.

What `run()` does, as a user of post_office would:
1. migrate that database and empty post_office's tables (TRUNCATE);
2. run `manage.py send_queued_mail` once on the empty queue (not timed: it warms the
   imports and reports the command's start-up cost as `idle_command_s`);
3. queue N pre-rendered emails (subject, text, ~3 KB HTML, a List-Unsubscribe header per
   recipient) to c{i}@example.com with `post_office.mail.send_many` at the default
   priority (medium: queued, not sent now); not timed;
4. time `manage.py send_queued_mail --processes P` from its start until it exits, which it
   does when nothing is left queued. post_office's defaults hold except THREADS_PER_PROCESS:
   BATCH_SIZE 100 (each batch split over P forked processes, each with its threads),
   LOG_LEVEL 2 (a Log row per mail), MAX_RETRIES 0 (a failed send is final). The lock file
   is one of its own (`--lockfile`), so two runs at once do not skip each other silently.

The backend is anymail's Mailgun backend pointed at `esp_url` (bench/fake_esp.py).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

ROOT = Path(__file__).resolve().parent.parent

POST_OFFICE_VERSION = "3.12.0"
# The project's own versions are used when this runs in its venv; these otherwise.
FALLBACK_VERSIONS = {"Django": "5.2.20", "django-anymail": "15.2", "psycopg": "3.3.9"}
VENV_DIR = Path("var") / "bench-postoffice-venv"
STAMP = ".bench-stamp.json"
# post_office itself imports only with settings configured: find it, import the rest.
IMPORT_CHECK = (
    "import importlib.util, django, anymail, psycopg; "
    "assert importlib.util.find_spec('post_office'), 'no post_office'"
)


# --- the throwaway venv -------------------------------------------------------------------


def _requirements() -> list[str]:
    from importlib import metadata

    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return FALLBACK_VERSIONS[name]

    return [
        f"django-post-office=={POST_OFFICE_VERSION}",
        f"Django=={version('Django')}",
        f"django-anymail=={version('django-anymail')}",
        f"psycopg[binary]=={version('psycopg')}",
    ]


def _venv_works(python: Path, stamp: Path, requirements: list[str]) -> bool:
    if not python.exists() or not stamp.exists():
        return False
    try:
        if json.loads(stamp.read_text()).get("requirements") != requirements:
            return False
    except ValueError:
        return False
    check = subprocess.run(
        [str(python), "-c", IMPORT_CHECK],
        capture_output=True,
        check=False,
    )
    return check.returncode == 0


def _tail(text: str, lines: int = 40) -> str:
    # pip's noise, and the lines naming the configured index (kept out of any log).
    noise = ("is ignored: it is neither", "Looking in indexes", "Looking in links")
    kept = [line for line in text.splitlines() if not any(bit in line for bit in noise)]
    return "\n".join(kept[-lines:])


def ensure_venv(root: Path = ROOT) -> Path:
    """The throwaway venv's python, built once (nothing is downloaded when it already works)."""
    venv = Path(root) / VENV_DIR
    python = venv / "bin" / "python"
    stamp = venv / STAMP
    requirements = _requirements()
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / "bench-postoffice-venv.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two callers at once: one builds, one reuses
        if _venv_works(python, stamp, requirements):
            return python
        started = time.perf_counter()
        shutil.rmtree(venv, ignore_errors=True)
        made = subprocess.run(
            [sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True, check=False
        )
        if made.returncode:
            raise RuntimeError(f"python -m venv {venv} failed:\n{_tail(made.stderr)}")
        pip = subprocess.run(
            [str(python), "-m", "pip", "install", "--disable-pip-version-check", *requirements],
            capture_output=True,
            text=True,
            check=False,
        )
        if pip.returncode:
            shutil.rmtree(venv, ignore_errors=True)
            raise RuntimeError(
                f"pip install {' '.join(requirements)} into {venv} failed "
                f"(exit {pip.returncode}):\n{_tail(pip.stdout + pip.stderr)}"
            )
        check = subprocess.run(
            [str(python), "-c", IMPORT_CHECK],
            capture_output=True,
            text=True,
            check=False,
        )
        if check.returncode:
            raise RuntimeError(f"{venv} installed but does not import:\n{_tail(check.stderr)}")
        stamp.write_text(
            json.dumps(
                {"requirements": requirements, "built_s": round(time.perf_counter() - started, 1)}
            )
        )
        return python


# --- the standalone Django project ----------------------------------------------------------


def _database_settings(url: str) -> dict:
    parts = urlsplit(url)
    if parts.scheme not in ("postgres", "postgresql"):
        raise ValueError(f"database_url must be a PostgreSQL URL, not {url!r}")
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": unquote(parts.path.lstrip("/")),
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": parts.hostname or "",
        "PORT": str(parts.port or ""),
    }


def _ensure_database(url: str) -> None:
    db = _database_settings(url)
    command = ["createdb", "-h", db["HOST"] or "127.0.0.1", "-U", db["USER"] or "postgres"]
    if db["PORT"]:
        command += ["-p", db["PORT"]]
    env = {**os.environ, "PGPASSWORD": db["PASSWORD"]} if db["PASSWORD"] else None
    result = subprocess.run(
        [*command, db["NAME"]], capture_output=True, text=True, check=False, env=env
    )
    if result.returncode and "already exists" not in result.stderr:
        raise RuntimeError(f"createdb {db['NAME']} failed: {result.stderr.strip()}")


def _settings_module(*, threads: int, esp_url: str, database_url: str) -> str:
    values = {
        "SECRET_KEY": "bench-only-postoffice-secret-key-0123456789-abcdefghij",
        "DEBUG": False,
        "USE_TZ": True,
        "ALLOWED_HOSTS": ["*"],
        "INSTALLED_APPS": ["django.contrib.contenttypes", "post_office", "anymail"],
        "DATABASES": {"default": _database_settings(database_url)},
        "DEFAULT_AUTO_FIELD": "django.db.models.BigAutoField",
        "DEFAULT_FROM_EMAIL": "Shop News <news@mg.shop.example>",
        "EMAIL_BACKEND": "post_office.EmailBackend",
        # post_office renders subject and bodies as Django templates when queueing.
        "TEMPLATES": [
            {"BACKEND": "django.template.backends.django.DjangoTemplates", "APP_DIRS": True}
        ],
        # post_office's defaults otherwise (BATCH_SIZE 100, LOG_LEVEL 2, MAX_RETRIES 0, ...).
        "POST_OFFICE": {
            "BACKENDS": {"default": "anymail.backends.mailgun.EmailBackend"},
            "THREADS_PER_PROCESS": threads,
        },
        "ANYMAIL": {
            "MAILGUN_API_KEY": "key-bench",
            "MAILGUN_API_URL": esp_url.rstrip("/") + "/v3",
            "MAILGUN_SENDER_DOMAIN": "mg.shop.example",
        },
        # post_office logs every batch at INFO to stderr unless its logger is configured.
        "LOGGING": {
            "version": 1,
            "disable_existing_loggers": False,
            "handlers": {"stderr": {"class": "logging.StreamHandler"}},
            "loggers": {"post_office": {"handlers": ["stderr"], "level": "WARNING"}},
        },
    }
    return "".join(f"{name} = {value!r}\n" for name, value in values.items())


MANAGE_PY = """\
import os
import sys

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "po_bench_settings")
from django.core.management import execute_from_command_line

execute_from_command_line(sys.argv)
"""

# Runs in the throwaway venv: prepares the queue, times send_queued_mail, prints JSON.
DRIVER_PY = r"""
import json
import os
import resource
import subprocess
import sys
import time

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, here)
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "po_bench_settings")

import django

django.setup()
from django.core.management import call_command
from django.db import connection

from post_office import mail
from post_office.models import STATUS, Email

n, processes = int(sys.argv[1]), int(sys.argv[2])
with open(os.path.join(here, "pool.json")) as f:
    pool = json.load(f)

call_command("migrate", verbosity=0, interactive=False)
with connection.cursor() as cursor:
    cursor.execute(
        "TRUNCATE post_office_log, post_office_email, post_office_attachment_emails "
        "RESTART IDENTITY CASCADE"
    )
connection.close()

manage = [sys.executable, os.path.join(here, "manage.py"), "send_queued_mail"]
lock = ["--lockfile", os.path.join(here, "post_office")]


def timed(command):
    started = time.perf_counter()
    proc = subprocess.Popen(command, cwd=here)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    elapsed = time.perf_counter() - started
    if proc.returncode:
        sys.exit(f"{' '.join(command[1:])} exited {proc.returncode}")
    # ru_maxrss of a waited-for child covers its own waited-for children (the pool's
    # forked processes): the largest RSS any one process of the command reached, in KiB.
    return elapsed, usage.ru_maxrss / 1024


idle_s, _ = timed([*manage, "--processes", "1", *lock])

queue_started = time.perf_counter()
step = 1000
for start in range(0, n, step):
    batch = []
    for i in range(start, min(start + step, n)):
        body = pool[i % len(pool)]
        token = f"{i:08x}{(i * 2654435761) % 2**32:08x}"
        headers = {
            "List-Unsubscribe": f"<https://news.shop.example/u/{token}/>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
            **body.get("headers", {}),
        }
        batch.append(
            {
                "recipients": [f"c{i}@example.com"],
                "sender": body.get("from_email") or None,
                "subject": body["subject"],
                "message": body["text"],
                "html_message": body["html"],
                "headers": headers,
            }
        )
    mail.send_many(batch)
queue_s = time.perf_counter() - queue_started
queued = Email.objects.filter(status=STATUS.queued).count()
connection.close()

elapsed, peak_rss_mb = timed([*manage, "--processes", str(processes), *lock])

sent = Email.objects.filter(status=STATUS.sent).count()
failed = Email.objects.filter(status=STATUS.failed).count()
left = Email.objects.filter(status__in=[STATUS.queued, STATUS.requeued]).count()
print(
    json.dumps(
        {
            "elapsed": elapsed,
            "rate": n / elapsed,
            "sent": sent,
            "failed": failed,
            "left_queued": left,
            "queued": queued,
            "peak_rss_mb": round(peak_rss_mb, 1),
            "queue_s": round(queue_s, 2),
            "idle_command_s": round(idle_s, 2),
        }
    )
)
"""


def _default_pool(size: int = 50) -> list[dict]:
    """Pre-rendered campaign mails, ~3 KB of HTML each, varied like real contacts' values."""
    names = ["Ada", "Grace", "Linus", "Margaret", "Ken", "Barbara", "Dennis", "Frances", "Alan"]
    items = [
        ("Linen shirt", "49.00"),
        ("Canvas tote", "24.50"),
        ("Wool scarf", "39.90"),
        ("Leather belt", "59.00"),
    ]
    pool = []
    for k in range(size):
        name = names[k % len(names)]
        rows = "".join(
            f'<tr><td style="padding:8px 12px;border-bottom:1px solid #eee">'
            f'<a href="https://shop.example/p/{k}-{j}?utm_source=news&amp;utm_campaign=winter"'
            f' style="color:#1a5fb4;text-decoration:none">{item}</a></td>'
            f'<td style="padding:8px 12px;border-bottom:1px solid #eee;text-align:right">'
            f"&euro;{price}</td></tr>"
            for j, (item, price) in enumerate(items)
        )
        html = (
            '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width,initial-scale=1">'
            "<title>Winter sale</title></head>"
            '<body style="margin:0;padding:0;background:#f4f4f4;font-family:Helvetica,Arial,'
            'sans-serif;color:#222">'
            '<table role="presentation" width="100%" cellpadding="0" cellspacing="0">'
            '<tr><td align="center" style="padding:24px 0">'
            '<table role="presentation" width="600" cellpadding="0" cellspacing="0" '
            'style="background:#ffffff;border-radius:6px">'
            '<tr><td style="padding:24px 32px;font-size:22px;font-weight:bold">'
            "Shop News &mdash; the winter sale is on</td></tr>"
            f'<tr><td style="padding:0 32px 16px;font-size:15px;line-height:1.5">Hi {name},'
            "<br><br>Our winter sale starts today: up to 40% off the pieces you looked at "
            "this autumn, while stocks last. Here is what we picked for you, with free "
            "delivery on orders over &euro;50 until Sunday.</td></tr>"
            f'<tr><td style="padding:0 32px"><table width="100%" cellpadding="0" '
            f'cellspacing="0" style="font-size:15px">{rows}</table></td></tr>'
            '<tr><td align="center" style="padding:24px 32px">'
            f'<a href="https://shop.example/sale?c={k}&amp;utm_source=news" '
            'style="background:#1a5fb4;color:#fff;padding:12px 28px;border-radius:4px;'
            'text-decoration:none;font-weight:bold">See the whole sale</a></td></tr>'
            '<tr><td style="padding:16px 32px;font-size:12px;color:#777;line-height:1.4">'
            "You get this because you signed up at shop.example. Shop Example Ltd, "
            "12 Harbour Street, Dublin 2, Ireland.<br>"
            f'<a href="https://news.shop.example/u/pool{k}/" style="color:#777">Unsubscribe</a>'
            ' &middot; <a href="https://shop.example/privacy" style="color:#777">Privacy</a>'
            "</td></tr></table></td></tr></table>"
            f'<img src="https://news.shop.example/o/pool{k}.gif" width="1" height="1" alt="">'
            "</body></html>"
        )
        lines = "\n".join(f"- {item}: EUR {price}" for item, price in items)
        text = (
            f"Hi {name},\n\nOur winter sale starts today: up to 40% off the pieces you "
            "looked at this autumn, while stocks last.\n\n"
            f"{lines}\n\nSee the whole sale: https://shop.example/sale?c={k}\n\n"
            "Unsubscribe: https://news.shop.example/u/pool/\n"
        )
        pool.append(
            {"subject": f"{name}, the winter sale is on: up to 40% off", "text": text, "html": html}
        )
    return pool


def run(
    n: int,
    *,
    threads: int,
    processes: int,
    esp_url: str,
    database_url: str,
    pool: list[dict] | None = None,
) -> dict:
    """Queue n mails in post_office and time `send_queued_mail --processes <processes>`.

    pool: pre-rendered mails used round-robin, each {"subject", "text", "html"} and
    optionally "from_email" and "headers" (added to the per-recipient List-Unsubscribe).
    Returns elapsed (s), rate (mails/s), sent, failed (post_office's statuses), threads,
    processes, peak_rss_mb (largest RSS of any one sending process) and a few extras.
    """
    python = ensure_venv(ROOT)
    _ensure_database(database_url)
    with tempfile.TemporaryDirectory(prefix="bench-postoffice-") as tmp:
        here = Path(tmp)
        settings = _settings_module(threads=threads, esp_url=esp_url, database_url=database_url)
        (here / "po_bench_settings.py").write_text(settings)
        (here / "manage.py").write_text(MANAGE_PY)
        (here / "driver.py").write_text(DRIVER_PY)
        (here / "pool.json").write_text(json.dumps(pool or _default_pool()))
        env = {
            key: value
            for key, value in os.environ.items()
            if key not in ("DJANGO_SETTINGS_MODULE", "PYTHONPATH", "VIRTUAL_ENV")
        }
        env["DJANGO_SETTINGS_MODULE"] = "po_bench_settings"
        result = subprocess.run(
            [str(python), str(here / "driver.py"), str(n), str(processes)],
            cwd=here,
            env=env,
            stdout=subprocess.PIPE,
            text=True,
            check=False,
        )
    if result.returncode:
        raise RuntimeError(f"post_office peer run failed (exit {result.returncode})")
    out = json.loads(result.stdout.strip().splitlines()[-1])
    return {**out, "threads": threads, "processes": processes}


def main() -> None:
    parser = argparse.ArgumentParser(description="django-post-office peer over the fake ESP")
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--threads", type=int, default=5)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--latency-ms", type=float, default=150)
    parser.add_argument("--jitter-ms", type=float, default=50)
    parser.add_argument(
        "--database", default="postgres://postgres@127.0.0.1:5432/stillhere_bench_postoffice"
    )
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT))
    from bench.fake_esp import FakeESP

    started = time.perf_counter()
    ensure_venv(ROOT)
    print(f"venv ready in {time.perf_counter() - started:.1f} s", flush=True)
    esp = FakeESP(record="recipients", latency_ms=args.latency_ms, jitter_ms=args.jitter_ms).start()
    try:
        result = run(
            args.n,
            threads=args.threads,
            processes=args.processes,
            esp_url=esp.url,
            database_url=args.database,
        )
        stats = esp.state.stats()
    finally:
        esp.stop()
    ideal = args.threads * args.processes / (args.latency_ms / 1000)
    print(
        f"post_office {args.n:,} mails, {args.threads} threads x {args.processes} processes: "
        f"{result['elapsed']:.1f} s = {result['rate']:,.0f}/s "
        f"(ideal {ideal:,.0f}/s, {result['rate'] / ideal:.0%})  sent {result['sent']:,}  "
        f"failed {result['failed']:,}  peak RSS {result['peak_rss_mb']:.0f} MB  "
        f"(queueing {result['queue_s']:.1f} s untimed, idle command {result['idle_command_s']} s)"
    )
    print(f"fake ESP: {json.dumps(stats)}")
    print(json.dumps(result))
    ok = stats["unique_recipients"] == args.n and stats["duplicates"] == 0
    if not ok:
        raise SystemExit(
            f"expected {args.n} unique recipients and 0 duplicates, got "
            f"{stats['unique_recipients']} and {stats['duplicates']}"
        )


if __name__ == "__main__":
    main()
