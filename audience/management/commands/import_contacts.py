"""Import a contact file from the terminal, on the same code path as the admin."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from audience import importing
from audience.importing.profiles import BY_KEY


class Command(BaseCommand):
    help = (
        "Import contacts from a CSV or XLSX file (Mailchimp, Shopify, Klaviyo, Meta Lead Ads, "
        "WooCommerce, a Stillhere export or any sheet with an email column). Never "
        "re-subscribes anyone."
    )

    def add_arguments(self, parser):
        parser.add_argument("file", type=Path)
        parser.add_argument(
            "--new-status",
            choices=list(importing.NEW_STATUS_CHOICES),
            default="file",
            help="file: follow the file (subscribed where the platform's own consent "
            "columns prove it, its opt-outs kept, the rest stored); none: store without "
            "subscribing; pending: send double opt-in; consent: subscribe rows that carry "
            "consent evidence, in any column (default: file)",
        )
        parser.add_argument("--tags", default="", help="comma-separated tags to add")
        parser.add_argument("--source", default=None, help="source label (default: profile)")
        parser.add_argument("--unknown", choices=["attribute", "ignore"], default="attribute")
        parser.add_argument("--profile", choices=sorted(BY_KEY), default="")
        parser.add_argument("--dry-run", action="store_true", help="show the preview only")

    def handle(self, *args, **opts):
        path: Path = opts["file"]
        if not path.is_file():
            raise CommandError(f"No such file: {path}")
        try:
            with path.open("rb") as f:
                job = importing.job_create(
                    f=f,
                    name=path.name,
                    size=path.stat().st_size,
                    unknown=opts["unknown"],
                    profile_key=opts["profile"],
                )
        except importing.ImportFileError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(
            f"{path.name}: {job.profile}, {job.file_format}"
            + (f" ({job.encoding}, delimiter {job.delimiter!r})" if job.encoding else "")
            + (f", {job.rows_total} rows" if job.rows_total else ", rows counted as it runs")
        )
        for name, target in zip(job.columns, job.mapping, strict=False):
            self.stdout.write(f"  {name!r:40} → {target}")
        if opts["dry_run"]:
            preview = importing.job_preview(job)
            self.stdout.write("preview: " + _counts(preview.counts))
            job.file.delete(save=False)
            job.delete()
            return
        options = {
            "tags": opts["tags"],
            "source": job.profile if opts["source"] is None else opts["source"],
            "new_status": opts["new_status"],
            "unknown": opts["unknown"],
        }
        job = importing.job_start(job=job, options=options, dispatch=False)
        started = time.monotonic()
        bar = _Bar(self.stderr._out if hasattr(self.stderr, "_out") else sys.stderr, started)
        try:
            job = importing.run_job(job.pk, progress=bar)
        except Exception as exc:
            # run_job has recorded why on the job (on a fresh connection if the old one
            # died): say that in one line, not with a traceback.
            bar.close()
            from django.db import connection

            if not connection.in_atomic_block:
                connection.close()
            try:
                job.refresh_from_db()
                error = job.error
            except Exception:
                error = ""
            raise CommandError(error or f"The import failed: {exc}") from None
        bar.close()
        if job.status != job.Status.DONE:
            raise CommandError(job.error or "The import failed.")
        self.stdout.write(self.style.SUCCESS("done: " + _counts(job.counts)))
        if job.rejected:
            self.stdout.write(f"rejected rows with reasons: {job.rejected.path}")


def _counts(counts) -> str:
    keys = ["new", "updated", "unchanged", "suppressed", "invalid", "merged", "phone_dropped"]
    return ", ".join(f"{counts.get(k, 0)} {k.replace('_', ' ')}" for k in keys)


class _Bar:
    """rows done of total, rate and ETA on one terminal line."""

    def __init__(self, out, started: float):
        self.out = out
        self.started = started
        self.tty = getattr(out, "isatty", lambda: False)()
        self.last = 0.0

    def __call__(self, done: int, total: int, counts) -> None:
        now = time.monotonic()
        if not self.tty and now - self.last < 5 and done < total:
            return
        self.last = now
        rate = done / max(now - self.started, 1e-6)
        eta = (total - done) / rate if rate else 0
        width = 30
        filled = int(width * done / total) if total else width
        line = (
            f"[{'#' * filled}{'.' * (width - filled)}] {done:,}/{total:,} rows "
            f"{rate:,.0f} rows/s ETA {eta:,.0f}s"
        )
        self.out.write(("\r" + line) if self.tty else (line + "\n"))
        self.out.flush()

    def close(self) -> None:
        if self.tty:
            self.out.write("\n")
            self.out.flush()
