"""Taking a signup in: count it against the rate limits, then store it, or buffer it.

With Redis (production), a public signup does not write to PostgreSQL while the visitor
waits. One Lua script counts the rate limits and appends the cleaned signup to a Redis
stream, the signup buffer; a Celery task (`drain`) moves the buffer into contacts in
batches, normally SIGNUP_BUFFER_SECONDS later (beat's minutely sweep drains whatever a
lost task left). bench/signup.py measured why: a signup
written in its own transaction cost PostgreSQL about half a millisecond of CPU, more
than the rest of a signup's work together, and held the web process waiting on it; a
batch of a thousand costs a small fraction of that per signup.

What the buffer promises:
- The visitor's answer does not change: it never said whether the address was known.
- Nothing is lost to a crash of the web process, the worker or PostgreSQL: a signup is
  in Redis before it is answered, and the drain advances its cursor
  (SignupBufferCursor) in the same transaction as the contacts it wrote, so a drain
  that dies is repeated from the last commit, never skipped, never applied twice.
- Redis itself must keep the stream: run it with `appendonly yes` (and the default
  `maxmemory-policy noeviction`), as the Celery broker already needs. Redis 6.2 or
  newer (exclusive XRANGE starts, XTRIM MINID).
- If Redis fails during the call, the signup is written straight to the database, with
  a marker (SignupWrittenDirectly) that makes the drain skip its entry should Redis
  have appended it after all; the rate limits are counted in the process meanwhile.
- What came later wins: an erasure or an unsubscribe made while a signup waited in the
  buffer is not undone by it.
- Consent is recorded as it was given: the time, IP, user agent, method and the exact
  consent text travel in the entry; the contact's timestamps are the signup's own.

Without Redis (the quickstart), or with SIGNUP_BUFFER off, each signup is written in its
request, as before.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.core.cache import cache
from django.db import transaction
from django.utils import timezone
from redis.exceptions import RedisError

from audience import services, throttle
from audience.models import SignupBufferCursor, SignupForm, SignupWrittenDirectly

logger = logging.getLogger(__name__)

STREAM = "signup-buffer"  # a cache key: the cache's prefix is added
FAILED_STREAM = "signup-buffer:failed"
DRAIN_QUEUED_FLAG = "signup-buffer:drain-queued"
_VERSION = 1


def signup(
    *,
    form: SignupForm,
    email: str,
    first_name: str,
    last_name: str,
    phone: str,
    evidence: services.Evidence,
    limits: list[tuple[str, str]],
) -> bool:
    """Count one hit in each (bucket, rate) of `limits`; unless one is over, take the
    signup (inputs already cleaned). False when over a limit: nothing was taken."""
    fields = {"first_name": first_name, "last_name": last_name, "phone": phone}
    if settings.SIGNUP_BUFFER:
        # What the signup is, and what the visitor was shown, as of now; `sid` names it.
        sid = secrets.token_hex(8)
        values = [
            _VERSION, form.pk, email, first_name, last_name, phone, evidence.method,
            evidence.ip, evidence.user_agent[:500], form.consent_text, form.double_opt_in,
            time.time(), sid,
        ]  # fmt: skip
        try:
            counted = throttle.count_then_append(
                limits,
                stream=STREAM,
                entry=json.dumps(values, ensure_ascii=False),
                flag=DRAIN_QUEUED_FLAG,
                flag_ms=round(settings.SIGNUP_BUFFER_SECONDS * 1000),
            )
        except RedisError:
            logger.warning("Signup buffer unreachable; writing the signup directly", exc_info=True)
            # Redis failed, perhaps after it appended the entry (a reply lost on its way
            # back): written directly with a marker, in one transaction, so the drain
            # skips that entry if it is there. The limits live in that Redis too; this
            # process counts them alone meanwhile.
            if throttle.over_limit_here(limits):
                return False
            with transaction.atomic():
                services.contact_subscribe(form=form, email=email, evidence=evidence, **fields)
                SignupWrittenDirectly.objects.create(sid=sid)
            return True
        if counted is not None:  # None: the cache is not Redis, so there is no buffer
            if counted == 1:
                _queue_drain()
            return counted >= 0
    if throttle.over_limit(limits):
        return False
    services.contact_subscribe(form=form, email=email, evidence=evidence, **fields)
    return True


def _queue_drain() -> None:
    """This signup set the flag: have the buffer drained once the flag's time is up. Any
    signup appended while the flag is set is in the stream before the task runs."""
    from audience.tasks import drain_signups

    try:
        # Expires: while no worker runs, the tasks would pile up; beat's sweep (every
        # minute) and the next signup's task drain everything anyway.
        drain_signups.apply_async(
            countdown=settings.SIGNUP_BUFFER_SECONDS,
            expires=max(60.0, 10 * settings.SIGNUP_BUFFER_SECONDS),
        )
    except Exception:
        # The signup is in the buffer; beat's sweep drains it within a minute.
        logger.warning("Could not queue the signup drain; the sweep will", exc_info=True)


@dataclass(frozen=True)
class _Entry:
    entry_id: str
    signup: services.Signup | None  # None: an entry this version cannot read
    sid: str = ""


class _NewerEntry(Exception):
    """An entry written by a newer version (a deploy under way): wait for its workers."""


def _decode(entry_id: bytes, fields: dict, forms: dict[int, SignupForm | None]) -> _Entry:
    """An entry as a Signup, or as unreadable (logged with its content): an entry not
    written by `signup` must not block the buffer."""
    ident = entry_id.decode()
    try:
        raw = json.loads(fields[b"v"])
        if isinstance(raw, list) and raw and isinstance(raw[0], int) and raw[0] > _VERSION:
            raise _NewerEntry(ident)
        if not isinstance(raw, list) or not raw or raw[0] != _VERSION:
            raise ValueError("not an entry of this version")
        (_v, form_id, email, first_name, last_name, phone, method, ip, user_agent,
         consent_text, double_opt_in, at, sid) = raw  # fmt: skip
        texts = (email, first_name, last_name, phone, method, user_agent, consent_text, sid)
        if not all(isinstance(text, str) for text in texts) or not isinstance(form_id, int):
            raise ValueError("a field of the wrong type")
        if ip is not None:
            ip = str(ipaddress.ip_address(ip))
        at = datetime.fromtimestamp(at, tz=UTC)
    except (KeyError, ValueError, TypeError, OverflowError, OSError) as exc:
        logger.error("Signup buffer entry %s unreadable (%s): %r", ident, exc, fields)
        return _Entry(ident, None)
    if form_id not in forms:
        forms[form_id] = SignupForm.objects.filter(pk=form_id).first()
    return _Entry(
        ident,
        services.Signup(
            form=forms[form_id], email=email, first_name=first_name, last_name=last_name,
            phone=phone, consent_text=consent_text, double_opt_in=bool(double_opt_in), at=at,
            evidence=services.Evidence(method=method, ip=ip, user_agent=user_agent),
        ),
        sid,
    )  # fmt: skip


def _after(entry_id: str) -> str:
    """The smallest stream id after `entry_id` ("ms-seq")."""
    ms, _, seq = entry_id.partition("-")
    return f"{ms}-{int(seq) + 1}"


def drain(*, batch: int = 1000) -> int:
    """Move every buffered signup into contacts, `batch` at a time; return how many.

    Drains run one at a time (the cursor row is locked), so many workers may be asked.
    """
    client = throttle._redis_client()
    if client is None:
        return 0
    stream = cache.make_key(STREAM)
    moved = 0
    forms: dict[int, SignupForm | None] = {}
    # Markers of signups whose entry never reached the buffer: nothing will claim them.
    stale = timezone.now() - timedelta(days=1)
    SignupWrittenDirectly.objects.filter(created_at__lt=stale).delete()
    while True:
        with transaction.atomic():
            cursor, _ = SignupBufferCursor.objects.get_or_create(name=STREAM)
            cursor = SignupBufferCursor.objects.select_for_update().get(pk=cursor.pk)
            start = f"({cursor.last_id}" if cursor.last_id else "-"
            found = client.xrange(stream, min=start, count=batch)
            entries, waiting = _decode_up_to_newer(found, forms)
            found = found[: len(entries)]
            if found:
                entries = _not_written_directly(entries)
                readable = [entry for entry in entries if entry.signup is not None]
                refused = services.contacts_subscribe_batch([e.signup for e in readable])
                set_aside = {entry.entry_id for entry in entries if entry.signup is None}
                set_aside |= {readable[position].entry_id for position in refused}
                if set_aside:
                    _set_aside(client, found, set_aside)
                cursor.last_id = found[-1][0].decode()
                cursor.drained += len(found)
                cursor.save(update_fields=["last_id", "drained", "updated_at"])
        # Committed: what the cursor has passed may go (also what a drain that died
        # before this line left behind).
        if cursor.last_id:
            client.xtrim(stream, minid=_after(cursor.last_id), approximate=False)
        moved += len(found)
        if len(found) < batch or waiting:
            return moved


def _decode_up_to_newer(found: list, forms: dict) -> tuple[list[_Entry], bool]:
    """The entries up to the first from a newer version (a deploy under way), and whether
    there was one: that one waits, unread, for the newer workers."""
    entries = []
    for entry_id, fields in found:
        try:
            entries.append(_decode(entry_id, fields, forms))
        except _NewerEntry:
            logger.warning("Signup buffer entry %s is from a newer version: waiting", entry_id)
            return entries, True
    return entries, False


def _not_written_directly(entries: list[_Entry]) -> list[_Entry]:
    """Leave out the entries whose signup was also written directly (signup: Redis
    failed after appending); their markers have done their job."""
    if not SignupWrittenDirectly.objects.exists():
        return entries  # the usual case: one cheap query instead of a thousand-id IN
    sids = [entry.sid for entry in entries if entry.sid]
    markers = SignupWrittenDirectly.objects.filter(sid__in=sids)
    written = set(markers.values_list("sid", flat=True))
    if written:
        markers.delete()
        entries = [entry for entry in entries if entry.sid not in written]
    return entries


def _set_aside(client, found: list, entry_ids: set[str]) -> None:
    """Entries that could not be stored go to a stream of their own, for a person to look
    at, instead of blocking the buffer behind them or vanishing. Before the cursor moves
    past them: a drain that fails after this sets them aside again (the `id` field tells
    the copies apart), one that fails before it leaves them in the buffer."""
    failed_stream = cache.make_key(FAILED_STREAM)
    for entry_id, fields in found:
        if entry_id.decode() in entry_ids:
            client.xadd(failed_stream, {"id": entry_id, **fields})
    logger.error(
        "%d buffered signups could not be stored; they are kept in Redis stream %s",
        len(entry_ids),
        failed_stream,
    )


def backlog() -> int | None:
    """Signups waiting in the buffer (None without Redis): for the health check."""
    client = throttle._redis_client()
    if client is None:
        return None
    return client.xlen(cache.make_key(STREAM))
