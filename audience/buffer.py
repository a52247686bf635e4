"""The signup buffer: a Redis stream of answered signups that a drain moves into contacts.

This module owns the stream and everything about it: the Redis client, whether the Redis
keeps what it is given (the persistence check), the entry's layout, appending (through
audience.throttle's one round trip, which also counts the rate limits), the drain and the
backlog. audience.intake decides, per signup, whether to buffer it or write it directly.

Why a buffer: bench/signup.py measured a signup written in its own transaction at about
half a millisecond of PostgreSQL's CPU, more than the rest of a signup's work together; a
batch of a thousand costs a small fraction of that per signup.

What it promises:
- An answered signup is not lost to a crash of the web process, the worker or PostgreSQL:
  it is in Redis before it is answered, and the drain advances its cursor
  (SignupBufferCursor) in the same transaction as the contacts it wrote, so a drain that
  dies is repeated from the last commit, never skipped, never applied twice.
- Nor to a restart of Redis: the buffer is used only while the Redis reports that it
  keeps its data (`appendonly yes`, asked every SIGNUP_BUFFER_CHECK_SECONDS by each
  process); otherwise signups are written in their request. SIGNUP_BUFFER=force skips
  the question (check --deploy warns). With `appendfsync everysec`, a crash of the Redis
  *host* can lose the last second; a killed Redis process loses nothing (Redis writes
  the file before it answers).
- The drain deletes only entries it has stored or set aside, whichever Redis it finds:
  see `_epoch`.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.core.cache import cache
from django.core.signals import setting_changed
from django.db import transaction
from django.utils import timezone
from redis.exceptions import RedisError, ResponseError

from audience import services, throttle
from audience.models import SignupBufferCursor, SignupForm, SignupWrittenDirectly

logger = logging.getLogger(__name__)

# Cache keys: the cache's prefix is added.
STREAM = "signup-buffer"
FAILED_STREAM = "signup-buffer:failed"
DRAIN_QUEUED_FLAG = "signup-buffer:drain-queued"
EPOCH = "signup-buffer:epoch"

VERSION = 2

# --- the Redis client -------------------------------------------------------------------

_clients: dict[int, object] = {}


def client():
    """The redis-py client of the cache's Redis (None when the cache is not Redis), built
    once per process and pool.

    Django's RedisCache builds a new redis-py client on every call, and redis-py fills a
    dict of a few hundred response callbacks for each: half a millisecond a call.
    """
    backend = getattr(cache, "_cache", None)
    if not hasattr(backend, "get_client"):
        return None
    pool = backend._get_connection_pool(write=True)
    found = _clients.get(id(pool))
    if found is None:
        found = _clients[id(pool)] = backend.get_client(write=True)
    return found


# --- whether to buffer ------------------------------------------------------------------


def mode() -> str:
    """'auto' (buffer while Redis reports persistence), 'force' (whatever it reports), or
    '' (never). True, as tests and older settings say it, is 'auto'."""
    value = settings.SIGNUP_BUFFER
    if value is True:
        return "auto"
    return value if value in {"auto", "force"} else ""


@dataclass
class _Checked:
    client_id: int = 0
    at: float = float("-inf")
    persistent: bool | None = None


_checked = _Checked()
_checked_lock = threading.Lock()


def _reset(*, setting: str, **kwargs) -> None:
    if setting in {"CACHES", "SIGNUP_BUFFER", "SIGNUP_BUFFER_CHECK_SECONDS"}:
        forget_persistence()


setting_changed.connect(_reset)


def forget_persistence() -> None:
    """Ask Redis again at the next signup (a changed setting, a test)."""
    with _checked_lock:
        _checked.client_id, _checked.at, _checked.persistent = 0, float("-inf"), None


def redis_persistent(redis_client) -> bool | None:
    """Whether this Redis writes what it is given to its append-only file: True, False,
    or None when it will not say (a managed Redis may refuse CONFIG) or cannot be reached.

    An RDB snapshot alone does not count: it loses whatever came after the last one.
    """
    try:
        reply = redis_client.config_get("appendonly")
        value = {_text(k): _text(v) for k, v in reply.items()}.get("appendonly")
        if value:
            return value == "yes"
    except ResponseError:
        pass  # CONFIG renamed or refused: INFO is allowed more widely
    except RedisError:
        return None
    try:
        aof = redis_client.info("persistence").get("aof_enabled")
    except RedisError:
        return None
    return None if aof is None else bool(int(aof))


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def in_use() -> bool:
    """Whether a signup taken now goes to the buffer. Asks Redis at most once per
    SIGNUP_BUFFER_CHECK_SECONDS in each process (a signup's own round trip stays the only
    one); an answer it cannot get counts as "not persistent" until the next check."""
    current = mode()
    if not current:
        return False
    redis_client = client()
    if redis_client is None:
        return False
    if current == "force":
        return True
    now = time.monotonic()
    if _checked.client_id == id(redis_client) and now - _checked.at < (
        settings.SIGNUP_BUFFER_CHECK_SECONDS
    ):
        return bool(_checked.persistent)
    persistent = redis_persistent(redis_client)
    with _checked_lock:
        before = _checked.persistent if _checked.client_id == id(redis_client) else None
        _checked.client_id, _checked.at, _checked.persistent = id(redis_client), now, persistent
    if persistent is not True and before is not False:
        logger.warning(
            "Redis reports %s: signups are written to the database in their request, "
            "not buffered (run Redis with appendonly yes, or see SIGNUP_BUFFER=force)",
            "appendonly no" if persistent is False else "no persistence it will show",
        )
    return persistent is True


# --- entries ----------------------------------------------------------------------------


def encode(
    *,
    sid: str,
    form: SignupForm,
    email: str,
    first_name: str,
    last_name: str,
    phone: str,
    evidence: services.Evidence,
    at: float,
) -> str:
    """A signup as a buffer entry: what it is, and what the visitor was shown, as of now.

    `[2, {named fields}]`: the leading version is where the drains of version 1 look, so
    one still running during a deploy leaves a newer entry waiting for the newer workers
    instead of setting it aside as unreadable.
    """
    fields = {
        "sid": sid,
        "form": form.pk,
        "email": email,
        "first_name": first_name,
        "last_name": last_name,
        "phone": phone,
        "method": evidence.method,
        "ip": evidence.ip,
        "user_agent": evidence.user_agent[:500],
        "consent_text": form.consent_text,
        "double_opt_in": form.double_opt_in,
        "at": at,
    }
    return json.dumps([VERSION, fields], ensure_ascii=False)


# Version 1's positional layout, as entries already waiting at the upgrade hold it.
_V1_FIELDS = (
    "form", "email", "first_name", "last_name", "phone", "method", "ip", "user_agent",
    "consent_text", "double_opt_in", "at", "sid",
)  # fmt: skip
_TEXTS = ("email", "first_name", "last_name", "phone", "method", "user_agent", "consent_text")


@dataclass(frozen=True)
class Entry:
    entry_id: str
    signup: services.Signup | None  # None: an entry that cannot be read
    sid: str = ""


class NewerEntry(Exception):
    """An entry written by a newer version (a deploy under way): wait for its workers."""


def decode(entry_id: bytes, fields: dict, forms: dict[int, SignupForm | None]) -> Entry:
    """An entry as a Signup, or as unreadable (logged with its content): an entry not
    written by `encode` must not block the buffer. Raises NewerEntry for a newer layout."""
    ident = entry_id.decode()
    try:
        raw = json.loads(fields[b"v"])
        if not isinstance(raw, list) or not raw or not isinstance(raw[0], int):
            raise ValueError("not a versioned entry")
        if raw[0] > VERSION:
            raise NewerEntry(ident)
        if raw[0] == VERSION and len(raw) == 2 and isinstance(raw[1], dict):
            values = raw[1]
        elif raw[0] == 1 and len(raw) == len(_V1_FIELDS) + 1:
            values = dict(zip(_V1_FIELDS, raw[1:], strict=True))
        else:
            raise ValueError("not an entry of a known version")
        if not all(isinstance(values[name], str) for name in (*_TEXTS, "sid")):
            raise ValueError("a field of the wrong type")
        form_id = values["form"]
        if not isinstance(form_id, int) or isinstance(form_id, bool):
            raise ValueError("a field of the wrong type")
        ip = values["ip"]
        if ip is not None:
            ip = str(ipaddress.ip_address(ip))
        at = datetime.fromtimestamp(values["at"], tz=UTC)
    except (KeyError, ValueError, TypeError, OverflowError, OSError) as exc:
        logger.error("Signup buffer entry %s unreadable (%s): %r", ident, exc, fields)
        return Entry(ident, None)
    if form_id not in forms:
        forms[form_id] = SignupForm.objects.filter(pk=form_id).first()
    return Entry(
        ident,
        services.Signup(
            form=forms[form_id], email=values["email"], first_name=values["first_name"],
            last_name=values["last_name"], phone=values["phone"],
            consent_text=values["consent_text"], double_opt_in=bool(values["double_opt_in"]),
            at=at,
            evidence=services.Evidence(
                method=values["method"], ip=ip, user_agent=values["user_agent"]
            ),
        ),
        values["sid"],
    )  # fmt: skip


# --- appending --------------------------------------------------------------------------


def append(limits: list[tuple[str, str]], entry: str) -> int | None:
    """Count the rate limits and, unless one is over, append `entry`, in one round trip:
    -1 when over a limit, 1 when appended and a drain is to be queued, 0 when appended
    (a drain is on its way); None when the cache is not Redis. Raises RedisError when
    Redis fails, perhaps after appending (the caller writes the signup directly)."""
    return throttle.count(
        limits,
        append=throttle.Append(
            stream=STREAM,
            entry=entry,
            flag=DRAIN_QUEUED_FLAG,
            flag_ms=round(settings.SIGNUP_BUFFER_SECONDS * 1000),
        ),
    )


def queue_drain() -> None:
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


# --- draining ---------------------------------------------------------------------------


def _id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _after(entry_id: str) -> str:
    """The smallest stream id after `entry_id` ("ms-seq")."""
    ms, seq = _id(entry_id)
    return f"{ms}-{seq + 1}"


# Trim below ARGV[2] only while the epoch (KEYS[2]) is still ARGV[1]: a Redis replaced
# between the drain's commit and its trim holds entries nobody has read.
_TRIM = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return -1 end
return redis.call('XTRIM', KEYS[1], 'MINID', ARGV[2])
"""
# Replace the epoch KEYS[1] by ARGV[2] if it is still ARGV[1]; return the epoch now.
_REPLACE_EPOCH = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('SET', KEYS[1], ARGV[2]) end
return redis.call('GET', KEYS[1])
"""


def _trim(redis_client, *, epoch: str, below: str) -> None:
    keys = [cache.make_key(STREAM), cache.make_key(EPOCH)]
    redis_client.register_script(_TRIM)(keys=keys, args=[epoch, below])


def _cursor_name(epoch: str) -> str:
    return f"{STREAM}@{epoch}"


def _epoch(redis_client) -> str:
    """The epoch of the stream this Redis holds: the name under which the drain keeps its
    cursor for it.

    A cursor (the last entry id stored) says which entries were stored only for the
    stream it was taken on. Stream ids are the Redis host's clock, so a replacement
    Redis (a new host, one restarted without its data) hands out ids below the cursor if
    its clock is behind: read after the cursor, they would be skipped, and trimmed below
    it, deleted unread. So the stream carries an epoch, a random key beside it in the
    same Redis that shares its fate: a Redis that lost the stream has lost the epoch
    too, gets a new one, and with it a new cursor that starts at the stream's beginning.
    A Redis that kept its data (appendonly yes, restarted) keeps both, and the cursor.

    One more case shares the epoch but not the history: a Redis that lost only its last
    writes (a failover to a replica that lagged, the last second of appendfsync
    everysec) may hold a stream whose last id is below the cursor. It gets a new epoch
    too, so nothing new can be skipped; the entries it still holds that were stored
    before are stored again (logged), rather than risk deleting one that was not.
    What stays open: such a Redis whose clock also runs behind the old one may, before
    any drain runs, accept signups up to past the cursor's time; those below it would
    be taken for stored. The drain runs within SIGNUP_BUFFER_SECONDS of a signup, and
    the window needs the clocks apart by more than that.
    """
    key = cache.make_key(EPOCH)
    pipe = redis_client.pipeline(transaction=False)
    pipe.set(key, secrets.token_hex(8), nx=True)
    pipe.get(key)
    _created, epoch = pipe.execute()
    epoch = epoch.decode()
    last = (
        SignupBufferCursor.objects.filter(name__in=[_cursor_name(epoch), STREAM])
        .order_by("-name")  # this epoch's cursor before one from before epochs
        .values_list("last_id", flat=True)
        .first()
    )
    if not last:
        return epoch
    try:
        generated = redis_client.xinfo_stream(cache.make_key(STREAM))["last-generated-id"]
    except ResponseError:  # no stream: nothing was appended since it went
        generated = b"0-0"
    if _id(generated.decode()) >= _id(last):
        return epoch
    # The cursor from before epochs, if that is the one ahead, belongs to the old history:
    # named after its epoch, so that the new epoch does not take it over.
    if not SignupBufferCursor.objects.filter(name=_cursor_name(epoch)).exists():
        SignupBufferCursor.objects.filter(name=STREAM).update(name=_cursor_name(epoch))
    replace = redis_client.register_script(_REPLACE_EPOCH)
    fresh = replace(keys=[key], args=[epoch, secrets.token_hex(8)])
    logger.warning(
        "The signup buffer in Redis ends at %s, before the %s already drained (a failover or "
        "a restore lost its last writes): it is drained again from its start, under a new "
        "cursor; signups it still holds that were stored before are recorded again",
        generated.decode(),
        last,
    )
    return fresh.decode()


def _locked_cursor(epoch: str) -> SignupBufferCursor:
    """This epoch's cursor, locked: drains take turns. The cursor of a version from before
    epochs (named after the stream alone) describes the stream of the Redis it was
    upgraded with, so the first epoch takes it over; any later one starts afresh."""
    name = _cursor_name(epoch)
    cursors = SignupBufferCursor.objects
    exists = cursors.filter(name=name).exists()
    if not exists and not cursors.filter(name=STREAM).update(name=name):
        cursors.get_or_create(name=name)
    return SignupBufferCursor.objects.select_for_update().get(name=name)


def cursor() -> SignupBufferCursor | None:
    """The cursor of the stream the cache's Redis holds now (None before its first drain)."""
    redis_client = client()
    epoch = redis_client.get(cache.make_key(EPOCH)) if redis_client is not None else None
    if epoch is None:
        return None
    return SignupBufferCursor.objects.filter(name=_cursor_name(epoch.decode())).first()


def drain(*, batch: int = 1000) -> int:
    """Move every buffered signup into contacts, `batch` at a time; return how many.

    Drains run one at a time (the cursor row is locked), so many workers may be asked.
    """
    redis_client = client()
    if redis_client is None:
        return 0
    stream, epoch_key = cache.make_key(STREAM), cache.make_key(EPOCH)
    moved = 0
    forms: dict[int, SignupForm | None] = {}
    # Markers of signups whose entry never reached the buffer: nothing will claim them.
    stale = timezone.now() - timedelta(days=1)
    SignupWrittenDirectly.objects.filter(created_at__lt=stale).delete()
    epoch = _epoch(redis_client)
    while True:
        with transaction.atomic():
            cursor = _locked_cursor(epoch)
            start = f"({cursor.last_id}" if cursor.last_id else "-"
            # The epoch with every read, on one connection: entries read from a Redis
            # that has been replaced since the epoch was looked up are not this cursor's.
            pipe = redis_client.pipeline(transaction=False)
            pipe.get(epoch_key)
            pipe.xrange(stream, min=start, count=batch)
            now_epoch, found = pipe.execute()
            if now_epoch is None or now_epoch.decode() != epoch:
                logger.warning("Signup buffer: Redis changed under the drain; starting over")
                epoch = _epoch(redis_client)
                continue
            entries, waiting = _decode_up_to_newer(found, forms)
            found = found[: len(entries)]
            if found:
                entries = _not_written_directly(entries)
                readable = [entry for entry in entries if entry.signup is not None]
                refused = services.contacts_subscribe_batch([e.signup for e in readable])
                set_aside = {entry.entry_id for entry in entries if entry.signup is None}
                set_aside |= {readable[position].entry_id for position in refused}
                if set_aside:
                    _set_aside(redis_client, found, set_aside)
                cursor.last_id = found[-1][0].decode()
                cursor.drained += len(found)
                cursor.save(update_fields=["last_id", "drained", "updated_at"])
        # Committed: what this epoch's cursor has passed was stored or set aside, so it
        # may go (also what a drain that died before this line left behind); never
        # below a cursor of another epoch, never when the Redis is no longer this epoch's.
        if cursor.last_id:
            _trim(redis_client, epoch=epoch, below=_after(cursor.last_id))
        moved += len(found)
        if len(found) < batch or waiting:
            return moved


def _decode_up_to_newer(found: list, forms: dict) -> tuple[list[Entry], bool]:
    """The entries up to the first from a newer version (a deploy under way), and whether
    there was one: that one waits, unread, for the newer workers."""
    entries = []
    for entry_id, fields in found:
        try:
            entries.append(decode(entry_id, fields, forms))
        except NewerEntry:
            logger.warning("Signup buffer entry %s is from a newer version: waiting", entry_id)
            return entries, True
    return entries, False


def _not_written_directly(entries: list[Entry]) -> list[Entry]:
    """Leave out the entries whose signup was also written directly (intake.signup: Redis
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


def _set_aside(redis_client, found: list, entry_ids: set[str]) -> None:
    """Entries that could not be stored go to a stream of their own, for a person to look
    at, instead of blocking the buffer behind them or vanishing. Before the cursor moves
    past them: a drain that fails after this sets them aside again (the `id` field tells
    the copies apart), one that fails before it leaves them in the buffer."""
    failed_stream = cache.make_key(FAILED_STREAM)
    for entry_id, fields in found:
        if entry_id.decode() in entry_ids:
            redis_client.xadd(failed_stream, {"id": entry_id, **fields})
    logger.error(
        "%d buffered signups could not be stored; they are kept in Redis stream %s",
        len(entry_ids),
        failed_stream,
    )


def backlog() -> int | None:
    """Signups waiting in the buffer (None without Redis): for the health check."""
    redis_client = client()
    if redis_client is None:
        return None
    return redis_client.xlen(cache.make_key(STREAM))
