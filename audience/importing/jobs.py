"""An import from upload to summary. The admin, the Celery task and
``manage.py import_contacts`` all go through these functions, so they share one path:

    job_create (detect, refuse bad files, store nothing if so)
    → job_preview (dry run: mapping, first rows as stored, counts)
    → job_start (options; dispatch run_import after commit, or run inline)
    → run_job (chunks of parsing.CHUNK rows, each in its own transaction; progress; rejected CSV)
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import io
import logging
import queue
import tempfile
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from django.conf import settings
from django.core.files import File
from django.db import (
    DEFAULT_DB_ALIAS,
    InterfaceError,
    OperationalError,
    connection,
    connections,
    transaction,
)
from django.db.models import Q
from django.utils import timezone

from audience.exporting import neutralise, source_text
from audience.importing.parsing import (
    Chunk,
    ParserSpec,
    chunks,
    few_collections,
    file_chunks,
    has_content,
    header_and_rows,
)
from audience.importing.profiles import (
    BY_KEY,
    GENERIC,
    TARGETS,
    Profile,
    default_mapping,
    detect_profile,
    guess_email_column,
    proves_consent,
)
from audience.importing.reading import (
    MAX_COLUMNS,
    BadRow,
    Detected,
    ImportFileError,
    Reader,
    check_xlsx,
    detect,
)
from audience.importing.rows import Record, RowError
from audience.importing.upsert import (
    NEW_STATUS_CHOICES,
    ImportContext,
    TagCache,
    import_chunk,
    stored_attributes,
)
from audience.models import ImportJob, SignupForm
from audience.services import clean_text

log = logging.getLogger(__name__)

WRITERS = 2
SAMPLE_ROWS = 20
# Lines the upload's check reads (the header and blank lines included); the rest of
# the file is counted by the import's task.
INSPECT_LINES = 1_000
# Lines the preview's dry run reads, in the web request too.
PREVIEW_COUNT_LIMIT = 20_000
Progress = Callable[[int, int, Counter], None]


@dataclass
class Inspection:
    detected: Detected
    header: list[str]
    profile: Profile
    mapping: list[str]
    rows_total: int
    sample: list[list[str]] = field(default_factory=list)


def inspect(f: BinaryIO, *, unknown: str = "attribute", profile_key: str = "") -> Inspection:
    """Decide how to read the file and map it; raise ImportFileError if it cannot be.

    This runs in the upload's web request, so it reads a bounded sample: the zip
    directory of an XLSX, then at most INSPECT_LINES lines. ``rows_total`` is exact when
    the file ends within them, 0 otherwise (the import's task counts the rest)."""
    detected = detect(f)
    if detected.file_format == "xlsx":
        check_xlsx(f, max_unpacked=settings.IMPORT_MAX_UNCOMPRESSED_BYTES)
    with Reader(f, detected) as reader:
        header, line, rows = header_and_rows(reader, max_lines=INSPECT_LINES + 1)
        if len(header) > MAX_COLUMNS:
            raise ImportFileError(
                f"The first row has more than {MAX_COLUMNS} columns: this does not look "
                "like a contact list."
            )
        sample: list[list[str]] = []
        total = 0
        for row in rows:
            line += 1
            if isinstance(row, BadRow) or has_content(row):
                total += 1
                if len(sample) < SAMPLE_ROWS and not isinstance(row, BadRow):
                    sample.append(row)
        if line > INSPECT_LINES:
            total = 0  # not counted yet
    profile = BY_KEY.get(profile_key) or detect_profile(header)
    mapping = default_mapping(header, profile, unknown=unknown)
    if "email" not in mapping:
        guessed = guess_email_column(header, sample)
        if guessed is None:
            shown = ", ".join(h for h in header[:12] if h) or "(none)"
            raise ImportFileError(
                "No email column found. Name a column “Email” (or “E-mail”, "
                f"“Email Address”) and upload again. Columns in this file: {shown}."
            )
        mapping[guessed] = "email"
    return Inspection(detected, header, profile, mapping, total, sample)


def job_create(
    *,
    f: BinaryIO,
    name: str,
    size: int,
    user=None,
    unknown: str = "attribute",
    profile_key: str = "",
) -> ImportJob:
    """Check the file and keep it for the preview. A bad file stores nothing."""
    limit = settings.IMPORT_MAX_BYTES
    if size > limit:
        raise ImportFileError(
            f"The file is {size / 1_048_576:.1f} MB; the largest accepted is "
            f"{limit / 1_048_576:.1f} MB (IMPORT_MAX_BYTES). Split it, or ask your "
            "administrator to raise the limit."
        )
    found = inspect(f, unknown=unknown, profile_key=profile_key)
    f.seek(0)
    job = ImportJob(
        original_name=Path(name).name[:255],
        size=size,
        profile=found.profile.key,
        file_format=found.detected.file_format,
        encoding=found.detected.encoding,
        delimiter=found.detected.delimiter,
        columns=found.header,
        mapping=found.mapping,
        options=default_options(found.profile, unknown=unknown),
        rows_total=found.rows_total,
        created_by=user if getattr(user, "pk", None) else None,
    )
    job.file.save(Path(name).name or "import.csv", File(f), save=False)
    job.save()
    return job


def default_options(profile: Profile, *, unknown: str = "attribute") -> dict:
    # "file": a migrating shop's subscribed export arrives subscribed (on its own
    # evidence), not pending with nobody to send a blast to.
    return {"tags": [], "source": profile.key, "new_status": "file", "unknown": unknown}


def clean_options(raw: dict) -> dict:
    tags = raw.get("tags") or []
    if isinstance(tags, str):
        tags = tags.split(",")
    tags = [clean_text(t, max_length=100, field="tags") for t in tags]
    new_status = raw.get("new_status") or "file"
    unknown = raw.get("unknown") or "attribute"
    if new_status not in NEW_STATUS_CHOICES:
        raise ValueError(f"new_status must be one of {', '.join(NEW_STATUS_CHOICES)}")
    if unknown not in {"attribute", "ignore"}:
        raise ValueError("unknown must be 'attribute' or 'ignore'")
    chosen = raw.get("welcome_form") or None
    welcome_form = getattr(chosen, "pk", chosen)  # a form (the admin's) or its id
    if welcome_form is not None:
        if not SignupForm.objects.filter(pk=welcome_form, welcome_enabled=True).exists():
            raise ValueError("The welcome email must be one a signup form has turned on.")
        if new_status not in {"file", "consent"}:
            raise ValueError(
                "A welcome email goes only to contacts the import subscribes: choose "
                "“Follow the file” or “Subscribed” for new contacts."
            )
    return {
        "tags": [t for t in dict.fromkeys(tags) if t],
        "source": clean_text(str(raw.get("source") or ""), max_length=100, field="source"),
        "new_status": new_status,
        "unknown": unknown,
        "welcome_form": welcome_form,
    }


def clean_mapping(job: ImportJob, mapping: list[str]) -> list[str]:
    if len(mapping) != len(job.columns) or any(t not in TARGETS for t in mapping):
        raise ValueError("The mapping must name one known target per column.")
    singles = [t for t in mapping if t not in {"attribute", "ignore"}]
    if len(singles) != len(set(singles)):
        raise ValueError("Each field can come from one column only.")
    if "email" not in mapping:
        raise ValueError("Choose the column that holds the email address.")
    return mapping


def _context(job: ImportJob, *, actor: str = "") -> ImportContext:
    options = job.options or {}
    profile = BY_KEY.get(job.profile, GENERIC)
    return ImportContext(
        job_id=job.pk,
        actor=actor or (job.created_by.get_username() if job.created_by else ""),
        new_status=options.get("new_status", "file"),
        source_label=options.get("source", ""),
        tag_names=tuple(options.get("tags", [])),
        file_name=job.original_name,
        file_proves_consent=proves_consent(job.columns, job.mapping, profile),
        welcome_form_id=options.get("welcome_form"),
    )


def _detected(job: ImportJob) -> Detected:
    return Detected(job.file_format, job.encoding, job.delimiter)


def _local_path(job: ImportJob) -> str | None:
    try:
        return job.file.path
    except NotImplementedError:  # a storage without local files (S3 and the like)
        return None


def _spec(job: ImportJob) -> ParserSpec:
    profile = BY_KEY.get(job.profile, GENERIC)
    spec = ParserSpec(
        _detected(job),
        job.columns,
        job.mapping,
        profile.tag_style,
    )
    try:
        spec.parser()
    except RowError:
        raise ImportFileError("Choose the column that holds the email address.") from None
    return spec


def job_sample(job: ImportJob, *, n: int = 3) -> list[list[str]]:
    """The first few data rows, raw, to show next to the column mapping."""
    out: list[list[str]] = []
    with job.file.open("rb") as f, Reader(f, _detected(job)) as reader:
        _, _, rows = header_and_rows(reader, max_lines=INSPECT_LINES + 1)
        for row in rows:
            if not isinstance(row, BadRow) and has_content(row):
                out.append([c[:60] for c in row])
                if len(out) >= n:
                    break
    return out


@dataclass
class Preview:
    rows: list[dict]
    counts: Counter
    counted_rows: int
    complete: bool


def job_preview(job: ImportJob, *, show: int = 10, limit: int = PREVIEW_COUNT_LIMIT) -> Preview:
    """A dry run over the first ``limit`` rows: nothing is written, not even a tag."""
    spec = _spec(job)
    ctx = _context(job)
    tags = TagCache(create=False)
    counts: Counter = Counter()
    shown: list[dict] = []
    counted = 0
    more = False
    with job.file.open("rb") as f:
        for chunk in chunks(f, spec, max_lines=limit):
            more = more or chunk.more
            for line, reason, _ in chunk.rejected:
                counts["invalid"] += 1
                if len(shown) < show:
                    shown.append({"line": line, "outcome": "invalid", "reason": reason})
            plan = import_chunk(chunk.records, ctx=ctx, tags=tags, dry_run=True)
            counts.update(plan.counts)
            counts["merged"] += chunk.merged
            counted += chunk.consumed
            new = {n.record.email: n for n in plan.new}
            changes = {c.record.email: c for c in plan.changes}
            for record in chunk.records:
                if len(shown) >= show:
                    break
                shown.append(_shown(record, plan.outcome[record.email], new, changes, ctx))
    shown.sort(key=lambda r: r["line"])
    return Preview(shown, counts, counted, complete=not more)


def _shown(record: Record, outcome: str, new: dict, changes: dict, ctx: ImportContext) -> dict:
    item = {
        "line": record.line,
        "outcome": outcome,
        "email": record.email,
        "first_name": record.first_name,
        "last_name": record.last_name,
        "phone": record.phone,
        "tags": list(dict.fromkeys([*ctx.tag_names, *record.tags])),
        "attributes": record.attributes,
        "evidence": record.evidence,
        "status": "",
        "source": "",
        "reason": "invalid phone number left out" if record.phone_dropped else "",
    }
    if record.email in new:
        item["status"] = new[record.email].status
        # As the contact list's export will show it: "import: <label>", or a Stillhere
        # row's own source.
        attributes = stored_attributes(record, ctx)
        item["source"] = source_text(record.source or "import", attributes)
    elif record.email in changes and changes[record.email].status_after:
        change = changes[record.email]
        item["status"] = f"{change.status_before} → {change.status_after}"
    elif outcome == "suppressed":
        item["status"] = "not changed (suppressed)"
    else:
        item["status"] = "not changed"
    return item


def job_start(
    *, job: ImportJob, mapping: list[str] | None = None, options: dict | None = None,
    dispatch: bool = True,
) -> ImportJob:  # fmt: skip
    """Fix the mapping and options and queue the run (after commit)."""
    if mapping is not None:
        job.mapping = clean_mapping(job, mapping)
    if options is not None:
        job.options = clean_options(options)
    with transaction.atomic():
        claimed = ImportJob.objects.filter(pk=job.pk, status=ImportJob.Status.UPLOADED).update(
            status=ImportJob.Status.QUEUED,
            mapping=job.mapping,
            options=job.options,
            heartbeat_at=timezone.now(),
        )
        if claimed and dispatch:
            from audience.tasks import run_import

            run_import.delay_on_commit(job.pk)
    job.refresh_from_db()
    return job


def _prefetch(source: Iterable, depth: int = 2) -> Iterator:
    """Take the next chunks (parsed here, or received from the parser process) in a
    thread while this one is written; at most ``depth`` chunks wait in memory."""
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    iterator = iter(source)

    def put(item) -> bool:
        while not stop.is_set():
            try:
                slots.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in iterator:
                if not put(("item", item)):
                    return
        except BaseException as exc:  # handed to the consumer, which raises it
            put(("error", exc))
            return
        finally:
            # Stopped early (the import failed): end the source here and now.
            close = getattr(iterator, "close", None)
            if close is not None:
                close()
        put(("done", None))

    thread = threading.Thread(target=produce, name="import-reader", daemon=True)
    thread.start()
    try:
        while True:
            kind, item = slots.get()
            if kind == "done":
                return
            if kind == "error":
                raise item
            yield item
    finally:
        stop.set()
        # A parser process is stopped from here: the reader thread may be waiting on it.
        abort = getattr(source, "abort", None)
        if abort is not None:
            abort()
        thread.join(timeout=10)


def _writers() -> int:
    """PostgreSQL takes two writers, so it can use both cores of a small machine; inside
    a caller's transaction (a test, a shell) the chunks must be written in it, serially."""
    if connection.vendor != "postgresql" or connection.in_atomic_block:
        return 1
    return WRITERS


def _write_one(records: list[Record], ctx: ImportContext, tags: TagCache, opened: dict):
    # Each writer thread keeps its own connection from chunk to chunk (a new backend per
    # chunk costs a fork and a cold catalog cache); _write_all closes them at the end.
    opened[threading.get_ident()] = connections[DEFAULT_DB_ALIAS]
    try:
        return import_chunk(records, ctx=ctx, tags=tags)
    except BaseException:
        connection.close()  # in whatever state the failure left it: not reused
        raise


def _close_writer_connections(opened: dict) -> None:
    """Close the writer threads' connections once those threads are gone, so none
    outlives the import (Django checks the thread; sharing is allowed for the close)."""
    for conn in opened.values():
        conn.inc_thread_sharing()
        try:
            conn.close()
        finally:
            conn.dec_thread_sharing()


def _write_all(parsed: Iterator[Chunk], *, ctx: ImportContext, tags: TagCache) -> Iterator:
    """Write chunks (in parallel on PostgreSQL); yield (chunk, plan) in file order.
    At most ``writers`` chunks are in flight, so memory stays flat."""
    writers = _writers()
    if writers == 1:
        for chunk in parsed:
            yield chunk, import_chunk(chunk.records, ctx=ctx, tags=tags)
        return
    opened: dict = {}  # writer thread → its connection
    try:
        yield from _write_parallel(parsed, ctx=ctx, tags=tags, writers=writers, opened=opened)
    finally:
        _close_writer_connections(opened)


def _write_parallel(
    parsed: Iterator[Chunk], *, ctx: ImportContext, tags: TagCache, writers: int, opened: dict
) -> Iterator:
    pending: deque = deque()
    with ThreadPoolExecutor(max_workers=writers, thread_name_prefix="import-writer") as pool:
        try:
            for chunk in parsed:
                # Tags are created here, once, so two writers never race to create one.
                tags.ids(ctx.tag_names)
                for record in chunk.records:
                    if record.tags:
                        tags.ids(record.tags)
                pending.append((chunk, pool.submit(_write_one, chunk.records, ctx, tags, opened)))
                if len(pending) >= writers:
                    chunk, future = pending.popleft()
                    yield chunk, future.result()
            while pending:
                chunk, future = pending.popleft()
                yield chunk, future.result()
        finally:
            for _, future in pending:
                future.cancel()


def job_requeue(*, job: ImportJob) -> None:
    """Run a finished, failed or stuck import again; importing twice changes nothing."""
    with transaction.atomic():
        ImportJob.objects.filter(pk=job.pk).exclude(status=ImportJob.Status.UPLOADED).update(
            status=ImportJob.Status.QUEUED, error="", heartbeat_at=timezone.now()
        )
        from audience.tasks import run_import

        run_import.delay_on_commit(job.pk)


def _heartbeat_seconds() -> float:
    """How often a running import says it is alive (and it does with each progress save
    too); one silent for IMPORT_STALL_SECONDS lost its worker or its task."""
    return min(30.0, settings.IMPORT_STALL_SECONDS / 5)


def _stalled(now: dt.datetime) -> Q:
    silent_since = now - dt.timedelta(seconds=settings.IMPORT_STALL_SECONDS)
    active = Q(status__in=[ImportJob.Status.QUEUED, ImportJob.Status.RUNNING])
    silent = Q(heartbeat_at__lt=silent_since) | Q(
        heartbeat_at__isnull=True,
        created_at__lt=silent_since,  # queued before 0008
    )
    return active & silent


def jobs_resume_stalled() -> list[int]:
    """Queue again every import whose worker stopped mid-run (or whose task was lost);
    beat runs this every minute. The rerun starts from the top, which is safe: importing
    rows a second time changes nothing."""
    now = timezone.now()
    resumed = []
    from audience.tasks import run_import

    for job_id in ImportJob.objects.filter(_stalled(now)).values_list("pk", flat=True):
        with transaction.atomic():
            # Conditional, so two sweeps (or a sweep and a redelivered task) resume once.
            if ImportJob.objects.filter(_stalled(now), pk=job_id).update(
                status=ImportJob.Status.QUEUED, heartbeat_at=now
            ):
                log.warning("import %s stalled; queued again", job_id)
                run_import.delay_on_commit(job_id)
                resumed.append(job_id)
    return resumed


def run_job(job_id: int, *, progress: Progress | None = None) -> ImportJob | None:
    """Run a queued import. Safe to call twice: only one caller claims the job."""
    with few_collections():
        return _run_job(job_id, progress=progress)


def _run_job(job_id: int, *, progress: Progress | None) -> ImportJob | None:
    now = timezone.now()
    # A queued job, or one whose worker died mid-run (a task the broker delivered again).
    claimable = Q(status=ImportJob.Status.QUEUED) | _stalled(now)
    claimed = ImportJob.objects.filter(claimable, pk=job_id).update(
        status=ImportJob.Status.RUNNING, started_at=now, rows_done=0, heartbeat_at=now
    )
    if not claimed:
        return None
    job = ImportJob.objects.select_related("created_by").get(pk=job_id)
    try:
        with _heartbeat(job):
            return _run_claimed(job, progress=progress)
    except _Superseded:
        log.warning("import %s was resumed by another worker; this run stops", job.pk)
        job.refresh_from_db()
        return job


class _Superseded(Exception):
    """The job was resumed elsewhere while this run was thought dead: stop writing."""


def _this_run(job: ImportJob):
    # started_at is set by each claim: it tells this run from a resumed one.
    return ImportJob.objects.filter(pk=job.pk, started_at=job.started_at)


@contextlib.contextmanager
def _heartbeat(job: ImportJob) -> Iterator[None]:
    """Tell the sweep this run is alive every few seconds, whatever it is doing (a chunk
    waiting on a lock, a slow spreadsheet), not only when a chunk is done."""
    stop = threading.Event()

    def beat() -> None:
        try:
            while not stop.wait(_heartbeat_seconds()):
                try:
                    _this_run(job).filter(status=ImportJob.Status.RUNNING).update(
                        heartbeat_at=timezone.now()
                    )
                except Exception as exc:
                    log.warning("import %s: heartbeat not saved (%s)", job.pk, exc)
                    connection.close()  # the next beat opens a new one
        finally:
            connection.close()  # this thread's own

    thread = threading.Thread(target=beat, name="import-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=10)


def _run_claimed(job: ImportJob, *, progress: Progress | None) -> ImportJob:
    counts: Counter = Counter()
    done = 0
    stored_through = 1  # the last file line whose chunk is committed (1: the header)
    rejected_count = 0
    with tempfile.TemporaryFile() as raw:
        # utf-8-sig: Excel opens it with the right characters.
        rejected = io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")
        writer = csv.writer(rejected)
        # "row": the record's number in the file, the header being row 1.
        writer.writerow(["row", "reason", *map(neutralise, job.columns)])

        try:
            spec = _spec(job)
            ctx = _context(job)
            if not job.rows_total:
                # The upload's check read a sample; the progress bar needs the total.
                job.rows_total = _count_rows(job)
                _this_run(job).update(rows_total=job.rows_total, heartbeat_at=timezone.now())
            tags = TagCache()
            last_saved = 0.0
            source = file_chunks(job.file.open("rb"), spec, size=job.size, path=_local_path(job))
            # Closed on the way out, even on an error: that stops the reader (and kills a
            # parser process) now, not when the traceback is collected.
            with job.file, contextlib.closing(_prefetch(source)) as parsed:
                for chunk, plan in _write_all(parsed, ctx=ctx, tags=tags):
                    for line, reason, row in chunk.rejected:
                        # The file came from elsewhere and will be opened in a spreadsheet.
                        writer.writerow([line, reason, *map(neutralise, row)])
                    rejected_count += len(chunk.rejected)
                    counts.update(plan.counts)
                    counts["merged"] += chunk.merged
                    counts["phone_dropped"] += sum(1 for r in chunk.records if r.phone_dropped)
                    counts["invalid"] = rejected_count
                    done += chunk.consumed
                    stored_through = max(stored_through, _last_line(chunk))
                    if time.monotonic() - last_saved > 0.5:
                        last_saved = time.monotonic()
                        if not _this_run(job).update(
                            rows_done=done, counts=dict(counts), heartbeat_at=timezone.now()
                        ):
                            raise _Superseded
                    if progress:
                        progress(done, max(job.rows_total, done), counts)
            counts["invalid"] = rejected_count
        except ImportFileError as exc:
            return _finish(job, ImportJob.Status.FAILED, done, counts, error=str(exc))
        except _Superseded:
            raise
        except Exception as exc:
            lost = _connection_lost(exc)
            if lost:  # an operator's problem, not a bug: one line, no traceback
                log.error("import %s: database connection lost (%s)", job.pk, exc)
            else:
                log.exception("import %s failed", job.pk)
            cause = "the database connection was lost" if lost else "an unexpected error"
            error = (
                f"The import stopped on {cause} after {done:,} rows of the file were "
                f"stored (every row up to line {stored_through:,}); later rows were not, "
                "and running the same file again is safe: it stores the rest and leaves "
                "the stored rows as they are."
            )
            _record_failure(job, done, counts, error)
            raise
        if rejected_count:
            rejected.flush()
            raw.seek(0)
            job.rejected.save(f"rejected-{job.pk}.csv", File(raw), save=False)
            _this_run(job).update(rejected=job.rejected.name)
        rejected.detach()
    return _finish(job, ImportJob.Status.DONE, done, counts)


def _connection_lost(exc: BaseException) -> bool:
    """Django's connection errors, or the driver's own (the import's COPY runs on the
    psycopg cursor itself, so a terminated backend surfaces as psycopg's error)."""
    try:
        import psycopg

        driver: tuple = (psycopg.OperationalError, psycopg.InterfaceError)
    except ImportError:  # SQLite only
        driver = ()
    seen = 0
    while exc is not None and seen < 5:
        if isinstance(exc, (OperationalError, InterfaceError, *driver)):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def _last_line(chunk: Chunk) -> int:
    lines = [r.line for r in chunk.records] + [line for line, _, _ in chunk.rejected]
    return max(lines, default=0)


def _record_failure(job: ImportJob, done: int, counts: Counter, error: str) -> None:
    """Mark the job failed on a connection of its own: the one the import used may be
    the one that died (a terminated backend, a restarted server), and a job left
    "running" with no error tells nobody anything."""
    if not connection.in_atomic_block:  # (a test's transaction is kept as it is)
        connection.close()
    for attempt in range(3):
        try:
            _finish(job, ImportJob.Status.FAILED, done, counts, error=error)
            return
        except (OperationalError, InterfaceError):
            if connection.in_atomic_block or attempt == 2:
                log.error("import %s: its failure could not be recorded: %s", job.pk, error)
                return
            connection.close()
            time.sleep(0.5 * (attempt + 1))


def _count_rows(job: ImportJob) -> int:
    """The file's rows, header and blank lines left out, in one streaming pass (the
    XLSX checked again first: the limit may have been lowered since the upload)."""
    with job.file.open("rb") as f:
        if job.file_format == "xlsx":
            check_xlsx(f, max_unpacked=settings.IMPORT_MAX_UNCOMPRESSED_BYTES)
        with Reader(f, _detected(job)) as reader:
            _, _, rows = header_and_rows(reader)
            return sum(1 for row in rows if isinstance(row, BadRow) or has_content(row))


def _finish(job: ImportJob, status: str, done: int, counts: Counter, error: str = "") -> ImportJob:
    _this_run(job).update(
        status=status,
        rows_done=done,
        counts=dict(counts),
        error=error,
        finished_at=timezone.now(),
        rows_total=max(job.rows_total, done),
    )
    job.refresh_from_db()
    return job
