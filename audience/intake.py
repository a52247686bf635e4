"""Taking a signup in: count it against the rate limits, then store it, or buffer it.

With Redis (production), a public signup does not write to PostgreSQL while the visitor
waits. One Lua script counts the rate limits and appends the cleaned signup to a Redis
stream, the signup buffer; a Celery task (`drain`) moves the buffer into contacts in
batches, SIGNUP_BUFFER_SECONDS later at most. bench/signup.py measured why: a signup
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
  `maxmemory-policy noeviction`), as the Celery broker already needs.
- If Redis cannot be reached, the signup is written straight to the database instead.
- Consent is recorded as it was given: the time, IP, user agent, method and the exact
  consent text travel in the entry; the contact's timestamps are the signup's own.

Without Redis (the quickstart), or with SIGNUP_BUFFER off, each signup is written in its
request, as before.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from django.conf import settings
from django.core.cache import cache
from django.db import transaction
from django.utils import timezone
from redis.exceptions import RedisError

from audience import services, throttle
from audience.models import SignupBufferCursor, SignupForm

logger = logging.getLogger(__name__)

STREAM = "signup-buffer"  # a cache key: the cache's prefix is added
FAILED_STREAM = "signup-buffer:failed"
_FLAG = "signup-buffer:drain-queued"
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
        # What the signup is, and what the visitor was shown, as of now.
        values = [
            _VERSION, form.pk, email, first_name, last_name, phone, evidence.method,
            evidence.ip, evidence.user_agent[:500], form.consent_text, form.double_opt_in,
            timezone.now().timestamp(),
        ]  # fmt: skip
        entry = json.dumps(values, ensure_ascii=False)
        try:
            counted = throttle.count_then_append(
                limits,
                stream=STREAM,
                entry=entry,
                flag=_FLAG,
                flag_ms=round(settings.SIGNUP_BUFFER_SECONDS * 1000),
            )
        except RedisError:
            logger.warning("Signup buffer unreachable; writing the signup directly", exc_info=True)
            counted = None
            limits = []  # the limits live in the same Redis: uncountable right now
        if counted is not None:
            if counted == 1:
                _queue_drain()
            return counted >= 0
    if limits and throttle.over_limit(limits):
        return False
    services.contact_subscribe(form=form, email=email, evidence=evidence, **fields)
    return True


def _queue_drain() -> None:
    """This signup set the flag: have the buffer drained once the flag's time is up. Any
    signup appended while the flag is set is in the stream before the task runs."""
    from audience.tasks import drain_signups

    try:
        drain_signups.apply_async(countdown=settings.SIGNUP_BUFFER_SECONDS)
    except Exception:
        # The signup is in the buffer; beat's sweep drains it within a minute.
        logger.warning("Could not queue the signup drain; the sweep will", exc_info=True)


@dataclass(frozen=True)
class _Entry:
    entry_id: str
    signup: services.Signup | None  # None: an entry this version cannot read


def _decode(entry_id: bytes, fields: dict, forms: dict[int, SignupForm | None]) -> _Entry:
    """An entry as a Signup, or as unreadable (logged with its content): an entry from
    another version, or one not written by `signup`, must not block the buffer."""
    ident = entry_id.decode()
    try:
        raw = json.loads(fields[b"v"])
        if not isinstance(raw, list) or not raw or raw[0] != _VERSION:
            raise ValueError("not an entry of this version")
        (_v, form_id, email, first_name, last_name, phone, method, ip, user_agent,
         consent_text, double_opt_in, at) = raw  # fmt: skip
        texts = (email, first_name, last_name, phone, method, user_agent, consent_text)
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
    while True:
        found: list = []
        set_aside: set[str] = set()
        with transaction.atomic():
            cursor, _ = SignupBufferCursor.objects.get_or_create(name=STREAM)
            cursor = SignupBufferCursor.objects.select_for_update().get(pk=cursor.pk)
            start = f"({cursor.last_id}" if cursor.last_id else "-"
            found = client.xrange(stream, min=start, count=batch)
            if found:
                entries = [_decode(entry_id, fields, forms) for entry_id, fields in found]
                readable = [entry for entry in entries if entry.signup is not None]
                refused = services.contacts_subscribe_batch([e.signup for e in readable])
                set_aside = {entry.entry_id for entry in entries if entry.signup is None}
                set_aside |= {readable[position].entry_id for position in refused}
                cursor.last_id = entries[-1].entry_id
                cursor.drained += len(entries)
                cursor.save(update_fields=["last_id", "drained", "updated_at"])
        # Committed: what the cursor has passed may go (also what a drain that died
        # before this line left behind).
        if cursor.last_id:
            client.xtrim(stream, minid=_after(cursor.last_id), approximate=False)
        if set_aside:
            _set_aside(client, found, set_aside)
        moved += len(found)
        if len(found) < batch:
            return moved


def _set_aside(client, found: list, entry_ids: set[str]) -> None:
    """Entries that could not be stored go to a stream of their own, for a person to look
    at, instead of blocking the buffer behind them or vanishing. (Each was also logged
    with its content, so a crash right before this loses none of them.)"""
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
