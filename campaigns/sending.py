"""The sending engine: one chunk of one campaign at a time, safe to run twice.

A chunk task claims its queued Delivery rows with one conditional UPDATE (a second
task that loses the race claims nothing), drops contacts who are no longer subscribed,
renders each message from the campaign's compiled skeleton, sends with up to
CAMPAIGN_SEND_CONCURRENCY provider calls in flight (each slot its own connection, see
_Slots), and marks each row sent or failed. Counters move with F().

Failure, in brief:
- the provider says 429 / 5xx, times out or is unreachable: what was sent stays sent,
  the rest of the claim is released back to `queued`, every worker holds off for the
  provider's Retry-After or a growing backoff (campaigns.ratelimit.hold), and the task
  retries (TransientSendError). Only when the provider has kept failing for
  CAMPAIGN_FAILURE_WINDOW with nothing getting through does the campaign pause, and
  such a pause resumes by itself after a growing, capped backoff;
- a send whose answer never came (a read timeout, a dropped connection) may have been
  delivered: its rows stay queued, marked, and what is sent to them again is counted
  as possible duplicates;
- the provider refuses the account or the request (401/403/404, or the same refusal
  for every recipient of the chunk, naming none of them): nobody is marked failed, the
  campaign pauses with the provider's reason and waits for a person (`setup`);
- the provider rejects a recipient: that row is `failed` with the provider's reason;
- the worker dies: its chunk stays `claimed` until the sweeper re-queues it
  (`requeued`: what it sends again counts as possible duplicates, at most the chunk).

Rows are claimed a chunk at a time (one DeliveryChunk row), and each Delivery row is
written once, queued → sent / failed / skipped, guarded by `status = queued` so a row
is never counted twice even if two tasks raced for a stale chunk.
"""

from __future__ import annotations

import contextlib
import enum
import json
import logging
import smtplib
import threading
import time
import uuid
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

import requests
from anymail.exceptions import AnymailError
from anymail.message import AnymailMessage
from django.conf import settings
from django.core.mail import EmailMultiAlternatives
from django.db import OperationalError, transaction
from django.db import connection as db_connection
from django.db.models import Case, DateTimeField, F, Value, When
from django.db.models.functions import Coalesce
from django.utils import timezone

from audience.emails import is_refusal, is_setup_problem, is_too_many, is_transient
from audience.models import Contact
from campaigns import providers, ratelimit, tallies

# Status changes are the lifecycle's (each with its CampaignEvent); the sender asks.
from campaigns.lifecycle import campaign_finish_if_done, campaign_pause_by_provider
from campaigns.models import Campaign, Delivery, DeliveryChunk, SenderSettings
from campaigns.rendering import (
    UNSUBSCRIBE,
    Skeleton,
    compile_campaign,
    unsubscribe_headers,
)

logger = logging.getLogger(__name__)

Status = Delivery.Status
ChunkStatus = DeliveryChunk.Status
SENDING = Campaign.Status.SENDING


PauseKind = Campaign.PauseKind

# A row that stays queued after a send that got no answer carries this in its error: what
# is sent to it again is counted as a possible duplicate.
UNANSWERED = "No answer from the provider; a message sent again may be a duplicate: "
# The same refusal, naming no recipient, for every recipient of a chunk or for this many
# in a row, is about the request or the account, not about them. (Not 3: Mailgun's answer
# to a bad address does not always name it, and a few bad ones can sit side by side.)
SAME_REFUSAL_LIMIT = 20
# Retry-After beyond this is taken as this (a provider's clock gone wrong).
RETRY_AFTER_MAX = 3600.0


class TransientSendError(Exception):
    """The provider could not take the chunk right now; retry it later.

    `retry_after`: what the provider asked for (seconds), if it did; `progressed`: some
    of the chunk went out before the trouble."""

    def __init__(self, reason: str, *, retry_after: float | None = None, progressed=False):
        super().__init__(reason)
        self.retry_after = retry_after
        self.progressed = progressed
        # Which provider turned it away ("primary" or "secondary"): chunk_send says.
        self.provider = providers.PRIMARY


# --- provider capabilities ----------------------------------------------------------


def _placeholder_style(backend_path: str):
    """How the provider writes a per-recipient variable inside the message, or None if
    we do not batch with it (then batch mode sends message by message)."""
    name = backend_path.lower()
    if "mailgun" in name:
        return lambda key: f"%recipient.{key}%"
    if "brevo" in name or "sendinblue" in name:
        # Brevo's template language escapes HTML itself; the values are escaped already.
        return lambda key: "{{ params." + key + "|safe }}"
    if name == "anymail.backends.test.emailbackend":
        return lambda key: "{{" + key + "}}"
    return None


def batch_supported(backend_path: str | None = None) -> bool:
    return _placeholder_style(backend_path or settings.EMAIL_BACKEND) is not None


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text[:1000]


def _retry_after(exc: BaseException) -> float | None:
    """The provider's Retry-After (RFC 9110 §10.2.3: seconds or an HTTP date), if any."""
    response = getattr(exc, "response", None)
    value = getattr(response, "headers", {}).get("Retry-After") if response is not None else None
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    return min(max(seconds, 0.0), RETRY_AFTER_MAX)


def _unanswered(exc: BaseException) -> bool:
    """The request may have reached the provider, but its answer never came: it may
    have been delivered. (A refused or timed-out connection sent nothing.)"""
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return False
    if getattr(exc, "status_code", None) in (502, 504):
        return True  # a gateway gave up waiting on the provider, which may have taken it
    if isinstance(exc, requests.exceptions.ChunkedEncodingError):
        return True  # the answer broke off on its way back
    if isinstance(exc, requests.exceptions.Timeout):
        return True
    if isinstance(exc, requests.exceptions.ConnectionError):
        cause = exc.__cause__ or exc.__context__
        text = f"{exc} {cause}"
        return not any(word in text for word in ("refused", "NewConnectionError", "resolve"))
    return isinstance(exc, TimeoutError | smtplib.SMTPServerDisconnected)


def _names_recipient(exc: BaseException, email: str) -> bool:
    return email.lower() in str(exc).lower()


# --- one chunk ---------------------------------------------------------------------------


@dataclass
class ChunkResult:
    claimed: int = 0
    sent: list = field(default_factory=list)  # (delivery_id, message_id)
    failed: list = field(default_factory=list)  # (delivery_id, reason)
    skipped: list = field(default_factory=list)  # delivery ids
    duplicates: int = 0
    transient: str = ""
    retry_after: float | None = None
    # Delivery ids whose send got no answer (they stay queued, marked UNANSWERED).
    unanswered: list = field(default_factory=list)
    # The provider refused the account or the request: pause, mark nobody failed.
    halt: str = ""
    stopped: bool = False
    too_many: bool = False  # the provider answered 429 (or SMTP 421)

    def provider_trouble(self, exc: BaseException, pks) -> None:
        """Note a transient failure of the send that carried the rows `pks`."""
        self.transient = _reason(exc)
        if is_too_many(exc):
            self.too_many = True
        # Sends in flight together may each be told to wait: the longest wait stands.
        asked = _retry_after(exc)
        if asked is not None and (self.retry_after is None or asked > self.retry_after):
            self.retry_after = asked
        if _unanswered(exc) and not getattr(exc, "stillhere_unsent", False):
            self.unanswered.extend(pks)


class _Recipient:
    """The contact fields a message needs, straight from one SQL row: no model instance
    (a million of those cost real seconds) and no JSON parsing unless a merge field
    actually has to read the attributes."""

    __slots__ = ("attributes_json", "email", "first_name", "id", "last_name", "phone", "pk")
    __slots__ += ("status", "_attributes")

    def __init__(self, pk, email, first_name, last_name, phone, attributes_json, status):
        self.pk = self.id = pk
        self.email = email
        self.first_name = first_name
        self.last_name = last_name
        self.phone = phone
        self.attributes_json = attributes_json
        self.status = status
        self._attributes = None

    @property
    def attributes(self) -> dict:
        if self._attributes is None:
            self._attributes = json.loads(self.attributes_json or "{}")
        return self._attributes


def _claim(campaign_id: int, number: int, token: str) -> DeliveryChunk | None:
    """Claim the chunk with a conditional UPDATE; None if another task has it or it is done."""
    now = timezone.now()
    if db_connection.vendor == "postgresql":
        # The same conditional UPDATE, with RETURNING: one round trip, not two.
        table = DeliveryChunk._meta.db_table
        with db_connection.cursor() as cursor:
            cursor.execute(
                f"""UPDATE {table} SET status = %s, claim_token = %s, claimed_at = %s,
                        attempts = attempts + 1
                    WHERE campaign_id = %s AND number = %s AND status = %s
                    RETURNING id, requeued""",  # noqa: S608 (table name from the model)
                [ChunkStatus.CLAIMED, token, now, campaign_id, number, ChunkStatus.QUEUED],
            )
            row = cursor.fetchone()
        if row is None:
            return None
        # Only its id and `requeued` are read from here on.
        return DeliveryChunk(
            pk=row[0],
            campaign_id=campaign_id,
            number=number,
            status=ChunkStatus.CLAIMED,
            claim_token=token,
            claimed_at=now,
            requeued=row[1],
        )
    chunks = DeliveryChunk.objects.filter(campaign_id=campaign_id, number=number)
    claimed = chunks.filter(status=ChunkStatus.QUEUED).update(
        status=ChunkStatus.CLAIMED,
        claim_token=token,
        claimed_at=now,
        attempts=F("attempts") + 1,
    )
    return chunks.first() if claimed else None


def _release(chunk: DeliveryChunk, token: str, *, done: bool) -> bool:
    status = ChunkStatus.DONE if done else ChunkStatus.QUEUED
    return bool(
        DeliveryChunk.objects.filter(pk=chunk.pk, claim_token=token).update(
            status=status, claim_token=""
        )
    )


def _queued_rows(campaign_id: int, number: int, requeued: bool) -> list:
    delivery = Delivery._meta.db_table
    contact = Contact._meta.db_table
    with db_connection.cursor() as cursor:
        cursor.execute(
            f"""SELECT d.id, d.error, c.id, c.email, c.first_name, c.last_name, c.phone,
                       CAST(c.attributes AS TEXT), c.status
                FROM {delivery} d JOIN {contact} c ON c.id = d.contact_id
                WHERE d.campaign_id = %s AND d.chunk = %s AND d.status = %s
                ORDER BY d.id""",  # noqa: S608 (table names from the models)
            [campaign_id, number, Status.QUEUED],
        )
        # A row whose earlier send got no answer may have been delivered already.
        return [
            (row[0], requeued or row[1].startswith(UNANSWERED), _Recipient(*row[2:]))
            for row in cursor.fetchall()
        ]


class _Guard:
    """Between sends: is the campaign still sending, and is our claim still ours?"""

    def __init__(self, campaign_id: int, chunk: DeliveryChunk, token: str):
        self.campaign_id = campaign_id
        self.chunk_id = chunk.pk
        self.token = token
        self.checked = time.monotonic()
        self.heartbeat = self.checked
        self.check_every = settings.CAMPAIGN_STATUS_CHECK_SECONDS
        self.heartbeat_every = max(1.0, settings.CAMPAIGN_CLAIM_TIMEOUT / 4)

    def ok(self) -> bool:
        now = time.monotonic()
        if now - self.checked < self.check_every:
            return True
        self.checked = now
        status = Campaign.objects.filter(pk=self.campaign_id).values_list("status", flat=True)
        if status.first() != SENDING:
            return False
        if now - self.heartbeat >= self.heartbeat_every:
            self.heartbeat = now
            # A long, rate-limited chunk keeps its claim fresh so the sweeper leaves it be;
            # if the sweeper took it anyway, stop before sending anything twice.
            kept = DeliveryChunk.objects.filter(
                pk=self.chunk_id, status=ChunkStatus.CLAIMED, claim_token=self.token
            ).update(claimed_at=timezone.now())
            return kept > 0
        return True


def _build_message(skeleton: Skeleton, contact, sender, campaign_id) -> EmailMultiAlternatives:
    values, urls = skeleton.values(contact, sender)
    message = EmailMultiAlternatives(
        subject=" ".join(Skeleton.fill(skeleton.subject, values).split()),
        body=Skeleton.fill(skeleton.text, values),
        from_email=skeleton.from_email,
        to=[contact.email],
        reply_to=skeleton.reply_to,
        headers=unsubscribe_headers(urls[UNSUBSCRIBE]),
    )
    message.attach_alternative(Skeleton.fill(skeleton.html, values), "text/html")
    # Anymail sends this with the message; providers echo it in their webhooks, which
    # with the recipient finds the Delivery through (campaign, contact).
    message.metadata = {"campaign": str(campaign_id)}
    return message


def _message_id(message) -> str:
    status = getattr(message, "anymail_status", None)
    if status is None:
        return ""
    ids = status.message_id
    if isinstance(ids, set):
        ids = sorted(str(i) for i in ids)[0] if ids else ""
    return str(ids or "")[:200]


def slot_count(backend_path: str) -> int:
    """Sends in flight for this backend: a provider (anymail's HTTP backends, SMTP) is
    worth waiting on in parallel; a local backend (the quickstart's outbox, which writes
    to the database, the console, Django's test backends) sends inline, one at a time."""
    name = backend_path.lower()
    if name.startswith("anymail.") or name == "django.core.mail.backends.smtp.emailbackend":
        return settings.CAMPAIGN_SEND_CONCURRENCY
    return 1


class _Slots:
    """CAMPAIGN_SEND_CONCURRENCY sends in flight at once, each slot a thread with its
    own provider connection (an anymail backend's requests session, or one SMTP
    connection), opened on its first send and closed with the chunk.

    Only the sending happens in the slots: rendering, the rate limit, the checks and
    every database write stay on the chunk's own thread, which hands a slot each
    message and reads back its outcome. One slot sends inline, with no thread at all.

    `provider` (config.providers): the one every slot connects to, the campaign's
    current one; without it, the default backend as configured."""

    def __init__(self, size: int, provider: providers.Provider | None = None):
        self.size = max(1, size)
        self.provider = provider or providers.primary()
        self._local = threading.local()
        self._opened: list = []
        self._lock = threading.Lock()
        self._pool = (
            ThreadPoolExecutor(self.size, thread_name_prefix="stillhere-send")
            if self.size > 1
            else None
        )

    def _send(self, message):
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = providers.connection_for(self.provider)
            with self._lock:
                self._opened.append(conn)
            try:
                conn.open()
            except Exception as exc:
                exc.stillhere_unsent = True  # it never reached the provider
                raise
            self._local.conn = conn
        try:
            conn.send_messages([message])
        except Exception as exc:
            if not isinstance(exc, AnymailError):
                # smtplib drops the connection on a 421 or a disconnect, and Django's
                # backend would keep the dead one: this slot connects afresh next time.
                # (Anymail's requests session reconnects by itself.)
                self._local.conn = None
                with contextlib.suppress(Exception):
                    conn.close()
            raise

    def submit(self, message, *, inline: bool = False) -> Future:
        """Hand `message` to a slot; `inline`: send it on this thread (a lone call, as a
        batch-mode chunk's usually is, has nothing to overlap with)."""
        if self._pool is not None and not inline:
            return self._pool.submit(self._send, message)
        future: Future = Future()
        try:
            self._send(message)
        except Exception as exc:
            future.set_exception(exc)
        else:
            future.set_result(None)
        return future

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        for conn in self._opened:
            try:
                conn.close()
            except Exception:  # closing a broken connection must not mask the real error
                logger.debug("closing the mail connection failed", exc_info=True)


class _Window:
    """How many sends this worker process keeps in flight: CAMPAIGN_SEND_CONCURRENCY at
    most, halved when the provider answers 429 or an SMTP relay 421 (providers cap
    concurrent requests per account, and it took fewer at once than were sent), then
    grown back by one for each
    window's worth of sends that go through, up to just below where the 429 came, and
    beyond that only once every PROBE windows, in case the provider takes more again.
    Without it, 32 slots against a provider that takes 5 at once spend their time in
    429 holds (tests/campaigns/test_concurrency.py). Used on the chunk's thread only."""

    PROBE = 50

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        """Back to the full CAMPAIGN_SEND_CONCURRENCY (tests; a fresh process starts so)."""
        self.size = 0
        self.credit = 0
        self.refused_at = 0  # the window when the provider last answered 429

    def current(self, ceiling: int) -> int:
        if not self.size or self.size > ceiling:
            self.size = ceiling
        return self.size

    def shrink(self, ceiling: int) -> None:
        self.refused_at = self.current(ceiling)
        self.size = max(1, self.size // 2)
        self.credit = 0
        logger.info("429 at %s sends in flight: now %s", self.refused_at, self.size)

    def grow(self, ceiling: int) -> None:
        self.current(ceiling)
        self.credit += 1
        needed = self.size if self.size + 1 < self.refused_at else self.size * self.PROBE
        if self.credit >= needed:
            self.credit = 0
            self.size = min(ceiling, self.size + 1)


_window = _Window()


@dataclass
class _Unit:
    """One provider call in flight: a message to one row, or a batch to several."""

    rows: list
    message: object = None


def _fly(units, slots: _Slots, guard, sender, result: ChunkResult, build, settle) -> None:
    """Send `units` with up to `slots.size` in flight, in order; `settle(unit, exc)`
    reads each outcome on this thread as it arrives (exc None: sent).

    Before each unit: the campaign must still be sending and our claim ours, and the
    global rate limit (and any hold a 429 caused) must let it go. Once the provider is
    in trouble, refuses the account, or the campaign stops, nothing new is handed out;
    the sends already in flight are waited for and their outcomes kept, so the record
    is exact whatever happens. An unexpected error is raised after that."""
    pending: dict[Future, _Unit] = {}
    errors: list[BaseException] = []
    shrunk = False
    _window.current(slots.size)

    def harvest(block: bool) -> None:
        nonlocal shrunk
        if block:
            done = wait(pending, return_when=FIRST_COMPLETED).done
        else:
            done = [future for future in pending if future.done()]
        for future in done:
            unit = pending.pop(future)
            exc = future.exception()
            try:
                settle(unit, exc)
            except Exception as error:
                errors.append(error)
            if exc is None:
                _window.grow(slots.size)
            elif result.too_many and not shrunk:
                shrunk = True  # once per chunk: its other 429s came from the same burst
                _window.shrink(slots.size)

    try:
        for unit in units:
            if pending:
                harvest(block=len(pending) >= _window.current(slots.size))
            if errors or result.transient or result.halt:
                break
            if not guard.ok():
                result.stopped = True
                break
            waited = ratelimit.throttle(
                len(unit.rows),
                per_second=sender.rate_per_second,
                per_hour=sender.rate_per_hour,
                provider=slots.provider.role,  # a failed primary's hold is not the failover's
            )
            if waited >= 1 and not guard.ok():  # a long hold: look again before sending
                result.stopped = True
                break
            unit.message = build(unit)
            if pending:
                # A send may have failed while this one was waited for or built.
                harvest(block=False)
                if errors or result.transient or result.halt:
                    break
            pending[slots.submit(unit.message, inline=len(units) == 1)] = unit
    except Exception as exc:
        # A message that would not render, the database or Redis gone: the sends in
        # flight are still waited for and recorded before the error goes up.
        errors.append(exc)
    while pending:
        harvest(block=True)
    if errors:
        raise errors[0]


class _Plan:
    """How one campaign's chunk becomes provider calls: a message per row, or batches
    with per-recipient merge data (when the mode and the provider allow it)."""

    def __init__(self, campaign, skeleton: Skeleton, sender, provider=None):
        self.campaign_id = campaign.pk
        self.skeleton = skeleton
        self.sender = sender
        # A batch campaign that switched to a failover without batch support goes on
        # message by message.
        backend = provider.backend if provider is not None else settings.EMAIL_BACKEND
        self.placeholder = (
            _placeholder_style(backend) if campaign.send_mode == Campaign.SendMode.BATCH else None
        )
        if self.placeholder is None:
            return
        placeholder = self.placeholder
        size = settings.CAMPAIGN_BATCH_SIZE
        if sender.rate_per_second:
            # A batch leaves in one burst: keep each within one second's allowance.
            size = max(1, min(size, sender.rate_per_second))
        self.size = size
        self.subject = Skeleton.fill_placeholders(skeleton.subject, lambda k: placeholder(f"v{k}"))
        self.text = Skeleton.fill_placeholders(skeleton.text, lambda k: placeholder(f"v{k}"))
        self.html = Skeleton.fill_placeholders(skeleton.html, lambda k: placeholder(f"v{k}"))
        self.keys = [f"v{k}" for k in range(len(skeleton.slots))]
        # unsubscribe_headers()' List-Unsubscribe, with its mailto tail worked out once.
        self.mailto = unsubscribe_headers("")["List-Unsubscribe"].removeprefix("<>")

    @property
    def batched(self) -> bool:
        return self.placeholder is not None

    def units(self, rows) -> list[_Unit]:
        if not self.batched:
            return [_Unit([row]) for row in rows]
        return [_Unit(rows[start : start + self.size]) for start in range(0, len(rows), self.size)]

    def build(self, unit: _Unit):
        if not self.batched:
            return self.build_one(unit)
        merge_data = {}
        merge_headers = {}
        slot_values = self.skeleton.slot_values
        for _pk, _requeued, contact in unit.rows:
            values, unsubscribe, _preferences = slot_values(contact, self.sender)
            email = contact.email
            merge_data[email] = dict(zip(self.keys, values, strict=False))
            merge_headers[email] = {"List-Unsubscribe": f"<{unsubscribe}>{self.mailto}"}
        message = AnymailMessage(
            subject=self.subject,
            body=self.text,
            from_email=self.skeleton.from_email,
            to=[contact.email for _, _, contact in unit.rows],
            reply_to=self.skeleton.reply_to,
            headers={"List-Unsubscribe-Post": "List-Unsubscribe=One-Click"},
            merge_data=merge_data,
            merge_global_data={},
            merge_headers=merge_headers,
            metadata={"campaign": str(self.campaign_id)},
        )
        message.attach_alternative(self.html, "text/html")
        return message

    def build_one(self, unit: _Unit):
        return _build_message(self.skeleton, unit.rows[0][2], self.sender, self.campaign_id)

    def send(self, units, slots, guard, result: ChunkResult) -> None:
        if self.batched:
            _send_batch(units, self, slots, guard, result)
        else:
            _send_per_message(units, self, slots, guard, result)


class _Failure(enum.Enum):
    TRANSIENT = "transient"  # noted on the result: the rest of the chunk waits and retries
    SETUP = "setup"  # result.halt set: the campaign pauses for a person, nobody failed
    REFUSAL = "refusal"  # the provider refused this call: the caller's per-row policy


def _provider_failure(exc: BaseException, pks: list, result: ChunkResult) -> _Failure:
    """Classify what a provider call carrying the rows `pks` raised, the same way for a
    message and for a batch, over an HTTP API (anymail) or SMTP.

    Transient (429 / 5xx, a timeout, a relay's 4xx): noted with provider_trouble.
    A setup problem (credentials, sender domain): result.halt. An error that is no
    provider's answer at all (a bug, the database gone): raised, so the chunk task fails
    loudly instead of blaming recipients. Anything else is a refusal, for the caller."""
    if is_transient(exc):
        result.provider_trouble(exc, pks)
        return _Failure.TRANSIENT
    if not isinstance(exc, AnymailError | smtplib.SMTPException):
        raise exc
    if is_setup_problem(exc):
        result.halt = _reason(exc)
        return _Failure.SETUP
    return _Failure.REFUSAL


def _send_per_message(units, plan: _Plan, slots, guard, result: ChunkResult) -> None:
    """Send one message per row, up to the send window at once."""
    # Refusals that name no recipient and read the same, as they arrive: (pk, reason).
    # Once one send goes through they were about their recipients; if every recipient of
    # the chunk gets one, the request or the account is wrong, and nobody is to blame.
    alike: list = []

    def settle_alike() -> None:
        if result.halt:  # the account or the request was refused: hand them back
            return
        result.failed.extend(alike)
        alike.clear()

    def settle(unit: _Unit, exc: BaseException | None) -> None:
        pk, requeued, contact = unit.rows[0]
        if exc is None:
            settle_alike()
            status = getattr(unit.message, "anymail_status", None)
            recipient = status.recipients.get(contact.email) if status else None
            if recipient is not None and recipient.status in {"rejected", "invalid"}:
                result.failed.append((pk, f"Provider {recipient.status} the recipient"))
                return
            result.sent.append((pk, _message_id(unit.message)))
            result.duplicates += bool(requeued)
            return
        failure = _provider_failure(exc, [pk], result)
        if failure is _Failure.TRANSIENT:
            settle_alike()
            return
        if failure is _Failure.SETUP:
            return  # the refusals still alike are given back with the rest
        reason = _reason(exc)
        if is_refusal(exc) or _names_recipient(exc, contact.email):
            settle_alike()
            result.failed.append((pk, reason))
            return
        if alike and alike[-1][1] != reason:
            settle_alike()
        alike.append((pk, reason))
        if len(alike) >= SAME_REFUSAL_LIMIT:
            result.halt = reason

    _fly(units, slots, guard, plan.sender, result, plan.build_one, settle)
    if result.halt or result.stopped:
        return  # the refusals still alike are given back with the rest
    if len(alike) == len(units) >= 2:
        result.halt = alike[0][1]
        return
    settle_alike()


def _send_batch(units, plan: _Plan, slots, guard, result: ChunkResult) -> None:
    """Send provider batches with per-recipient merge data and headers, up to the send
    window of batch calls at once."""
    refused: list = []  # rows of batches the provider refused as a whole

    def settle(unit: _Unit, exc: BaseException | None) -> None:
        if exc is None:
            status = unit.message.anymail_status
            fallback_id = _message_id(unit.message)
            for pk, requeued, contact in unit.rows:
                recipient = status.recipients.get(contact.email)
                if recipient is not None and recipient.status in {"rejected", "invalid"}:
                    result.failed.append((pk, f"Provider {recipient.status} the recipient"))
                    continue
                mid = (
                    str(recipient.message_id) if recipient and recipient.message_id else fallback_id
                )
                result.sent.append((pk, mid[:200]))
                result.duplicates += bool(requeued)
            return
        if _provider_failure(exc, [pk for pk, _, _ in unit.rows], result) is not _Failure.REFUSAL:
            return
        # One bad address fails a whole Mailgun batch with a 400: this batch goes again
        # one by one, so only the recipient the provider refuses is marked failed.
        logger.info("Batch refused (%s); sending it message by message", _reason(exc))
        refused.extend(unit.rows)

    _fly(units, slots, guard, plan.sender, result, plan.build, settle)
    if refused and not (result.transient or result.halt or result.stopped):
        one_by_one = [_Unit([row]) for row in refused]
        _send_per_message(one_by_one, plan, slots, guard, result)


@dataclass
class _Marked:
    sent: int = 0
    failed: int = 0
    skipped: int = 0


def _mark(campaign_id: int, chunk: int, result: ChunkResult) -> _Marked:
    """Write each outcome once. `status = queued` guards every UPDATE, and the counters
    move by the rows actually updated, so racing tasks never double-count.

    Every UPDATE names the chunk as well as the ids: (campaign, chunk) is indexed, and
    without it PostgreSQL ANDs a bitmap of the whole campaign (a million rows) with the
    ids' bitmap, which made this the slowest step of a blast (bench/blast.py)."""
    now = timezone.now()
    marked = _Marked()
    queued = Delivery.objects.filter(campaign_id=campaign_id, chunk=chunk, status=Status.QUEUED)
    if result.skipped:
        marked.skipped = queued.filter(pk__in=result.skipped).update(status=Status.SKIPPED)
    if result.sent:
        marked.sent = _mark_sent_many(campaign_id, chunk, result.sent, now)
    for pk, reason in result.failed:
        marked.failed += queued.filter(pk=pk).update(status=Status.FAILED, error=reason)
    if result.unanswered:
        # They stay queued for the retry; the mark makes it count what it sends them.
        queued.filter(pk__in=result.unanswered).update(
            error=(UNANSWERED + (result.transient or "timed out"))[:1000]
        )
    return marked


# Rows per portable UPDATE: a row costs up to three parameters (its id in the WHERE and
# in its message id's WHEN, and the message id), under SQLite's 999 with room to spare.
_MARK_ROWS = 300


def _mark_sent_many(campaign_id: int, chunk: int, sent: list, now) -> int:
    """Mark `sent` ((delivery id, message id) pairs) sent, each row once; returns the
    rows changed. Every UPDATE is guarded by status = queued and names the chunk.

    PostgreSQL: one UPDATE, both columns as two array parameters joined with unnest,
    whatever the number of message ids (one per batch call, or one per message).
    Elsewhere: one UPDATE per _MARK_ROWS rows, message_id set by a CASE over the
    distinct ids."""
    if db_connection.vendor == "postgresql":
        table = Delivery._meta.db_table
        with db_connection.cursor() as cursor:
            cursor.execute(
                f"""UPDATE {table} AS d SET status = %s, sent_at = %s, message_id = v.mid
                    FROM unnest(%s::bigint[], %s::text[]) AS v(id, mid)
                    WHERE d.id = v.id AND d.campaign_id = %s AND d.chunk = %s
                      AND d.status = %s""",  # noqa: S608 (table name from the model)
                [
                    Status.SENT,
                    now,
                    [pk for pk, _ in sent],
                    [mid for _, mid in sent],
                    campaign_id,
                    chunk,
                    Status.QUEUED,
                ],
            )
            return cursor.rowcount
    queued = Delivery.objects.filter(campaign_id=campaign_id, chunk=chunk, status=Status.QUEUED)
    marked = 0
    for start in range(0, len(sent), _MARK_ROWS):
        by_id: dict[str, list[int]] = {}
        for pk, mid in sent[start : start + _MARK_ROWS]:
            by_id.setdefault(mid, []).append(pk)
        pks = [pk for group in by_id.values() for pk in group]
        message_id = Case(
            *(When(pk__in=group, then=Value(mid)) for mid, group in by_id.items()),
            output_field=Delivery._meta.get_field("message_id"),
        )
        marked += queued.filter(pk__in=pks).update(
            status=Status.SENT, sent_at=now, message_id=message_id
        )
    return marked


@dataclass
class _Held:
    """A chunk this task has claimed, and its rows."""

    number: int
    claim: DeliveryChunk
    token: str
    live: list
    result: ChunkResult


def _take(campaign_id: int, number: int) -> _Held | None:
    token = uuid.uuid4().hex
    claimed = _claim(campaign_id, number, token)
    if claimed is None:
        return None
    rows = _queued_rows(campaign_id, number, claimed.requeued)
    result = ChunkResult(claimed=len(rows))
    live = []
    for row in rows:
        if row[2].status == Contact.Status.SUBSCRIBED:
            live.append(row)
        else:
            # Unsubscribed, bounced or complained since the campaign started.
            result.skipped.append(row[0])
    return _Held(number, claimed, token, live, result)


def chunk_send(*, campaign_id: int, chunk: int) -> ChunkResult:
    """Send one chunk. Raises TransientSendError (after giving the chunk back to the
    queue) when the provider should be tried again later."""
    campaign = Campaign.objects.filter(pk=campaign_id).first()
    if campaign is None or campaign.status != SENDING:
        return ChunkResult()
    # Before the claim: a campaign that will not render leaves no chunk held.
    sender = SenderSettings.load()
    # The primary, or the failover once the campaign has switched (campaigns.providers).
    provider = providers.campaign_provider(campaign)
    plan = _Plan(campaign, compile_campaign(campaign, sender), sender, provider)
    held = _take(campaign_id, chunk)
    if held is None:
        campaign_finish_if_done(campaign_id=campaign_id)
        return ChunkResult()
    slots = _Slots(slot_count(provider.backend), provider)
    try:
        _send_held(campaign_id, held, plan, slots)
    except TransientSendError as exc:
        exc.provider = provider.role  # the task decides on failing over by it
        raise
    finally:
        slots.close()
    if provider.role == providers.PRIMARY:
        providers.campaign_primary_took_chunk(campaign_id=campaign_id)
    return held.result


def _send_held(campaign_id: int, held: _Held, plan: _Plan, slots: _Slots) -> None:
    """Send a claimed chunk and record it. Raises TransientSendError as chunk_send says."""
    result = held.result
    guard = _Guard(campaign_id, held.claim, held.token)
    unsent: list = []
    if held.live:
        try:
            plan.send(plan.units(held.live), slots, guard, result)
            # What has no outcome stays queued: not reached, or handed back.
            decided = {pk for pk, _ in result.sent} | {pk for pk, _ in result.failed}
            unsent = [row for row in held.live if row[0] not in decided]
        except Exception as exc:
            # Something unexpected: record what went out, give the rest back.
            unsent = [None]
            if is_setup_problem(exc):  # no credentials, a sender the provider refuses
                result.halt = _reason(exc)
            elif not is_transient(exc):
                marked = _mark(campaign_id, held.number, result)
                _count(campaign_id, result, marked, failed_chunk=False)
                _release(held.claim, held.token, done=False)
                raise
            else:
                result.provider_trouble(exc, [])

    # The mail has gone: a brief database hiccup (SQLite's lock, a failover) must not
    # lose the record of it, or the sweeper would send the chunk again. The rows, the
    # counters and the chunk move together, in one transaction (one commit to wait for).
    def record() -> None:
        marked = _mark(campaign_id, held.number, result)
        _count(campaign_id, result, marked, failed_chunk=bool(result.transient))
        # Rows not sent stay queued: giving the chunk back is all a retry or resume needs.
        _release(held.claim, held.token, done=not unsent)

    _patiently(record)
    if result.halt:
        campaign_pause_by_provider(
            campaign_id=campaign_id,
            kind=PauseKind.SETUP,
            why="the provider refused the account or the request, so nobody was marked "
            "failed. Fix the provider settings (EMAIL_API_KEY, the sending domain) or the "
            "campaign, then press Resume",
            said=result.halt,
        )
        return
    if result.transient:
        raise TransientSendError(
            result.transient, retry_after=result.retry_after, progressed=bool(result.sent)
        )
    if not unsent:
        campaign_finish_if_done(campaign_id=campaign_id)


def _patiently(write, attempts: int = 5):
    for attempt in range(attempts):
        try:
            with transaction.atomic():
                return write()
        except OperationalError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1))
    return None


def _count(campaign_id: int, result: ChunkResult, marked: _Marked, *, failed_chunk: bool) -> None:
    updates = {
        "sent_count": F("sent_count") + marked.sent,
        "failed_count": F("failed_count") + marked.failed,
        "duplicate_count": F("duplicate_count") + min(result.duplicates, marked.sent),
        "updated_at": timezone.now(),
    }
    if marked.sent or (marked.failed and not failed_chunk):
        # The provider takes mail again: the failure window and the automatic resumes
        # start over.
        updates["consecutive_failed_chunks"] = 0
        updates["failing_since"] = None
        updates["auto_resume_attempts"] = 0
    # Skipped contacts leave the total: the bar counts who is actually mailed.
    if marked.skipped:
        updates["total_count"] = F("total_count") - marked.skipped
    Campaign.objects.filter(pk=campaign_id).update(**updates)
    if marked.sent:  # the report's "sent per minute" (one bucket row per chunk)
        tallies.timeline_add(
            campaign_id=campaign_id, kind=tallies.Kind.SENT, when=timezone.now(), count=marked.sent
        )


@dataclass
class ChunkFailure:
    paused: bool
    wait: float  # seconds the chunk's retry should wait at least


def chunk_failed(
    *,
    campaign_id: int,
    reason: str,
    retry_after: float | None = None,
    exhausted: bool = False,
    provider: str = providers.PRIMARY,
) -> ChunkFailure:
    """Count a chunk the provider turned away and hold every worker off (Retry-After, or
    a backoff growing with the failures); pause the campaign only once the provider has
    failed CAMPAIGN_MAX_FAILED_CHUNKS times over at least CAMPAIGN_FAILURE_WINDOW with
    nothing getting through, or this chunk has run out of retries."""
    now = timezone.now()
    campaign = Campaign.objects.filter(pk=campaign_id)
    campaign.update(
        consecutive_failed_chunks=F("consecutive_failed_chunks") + 1,
        failing_since=Coalesce(F("failing_since"), Value(now), output_field=DateTimeField()),
        # A campaign waiting on retries is alive: the sweep must not take its chunks for
        # a dead worker's (update() does not touch auto_now fields by itself).
        updated_at=now,
    )
    row = campaign.values_list("consecutive_failed_chunks", "failing_since").first()
    if row is None:
        return ChunkFailure(paused=False, wait=0.0)
    failures, since = row
    wait = retry_after if retry_after is not None else backoff_seconds(failures - 1)
    # Longer than a quarter of the claim timeout, a chunk in flight sleeping through the
    # hold would look dead to the sweeper; the failed chunk's own retry waits it all.
    # The hold is the failing provider's (`provider`): the failover, if any, is not held.
    ratelimit.hold(min(wait, settings.CAMPAIGN_CLAIM_TIMEOUT / 4), provider=provider)
    failing_for = (now - since).total_seconds() if since else 0.0
    if exhausted:
        why = f"a chunk failed {settings.CAMPAIGN_MAX_RETRIES + 1} times in a row"
    elif (
        failures >= settings.CAMPAIGN_MAX_FAILED_CHUNKS
        and failing_for >= settings.CAMPAIGN_FAILURE_WINDOW
    ):
        why = (
            f"the provider turned {failures} chunks away over {failing_for:.0f} s "
            "with no message getting through"
        )
    else:
        return ChunkFailure(paused=False, wait=wait)
    paused = campaign_pause_by_provider(
        campaign_id=campaign_id, kind=PauseKind.PROVIDER, why=why, said=reason, not_before=wait
    )
    return ChunkFailure(paused=paused, wait=wait)


def open_chunks(campaign_id: int) -> list[int]:
    return list(
        DeliveryChunk.objects.filter(campaign_id=campaign_id, status=ChunkStatus.QUEUED)
        .order_by("number")
        .values_list("number", flat=True)
    )


def claims_sweep() -> dict[int, int]:
    """Re-queue chunks whose claim went stale (their worker died) and re-dispatch the
    chunks of sending campaigns that stopped moving. Returns {campaign id: chunks re-queued}."""
    from campaigns.tasks import send_chunk

    now = timezone.now()
    cutoff = now - timedelta(seconds=settings.CAMPAIGN_CLAIM_TIMEOUT)
    swept: dict[int, int] = {}
    for campaign_id, updated_at in Campaign.objects.filter(status=SENDING).values_list(
        "pk", "updated_at"
    ):
        requeued = DeliveryChunk.objects.filter(
            campaign_id=campaign_id, status=ChunkStatus.CLAIMED, claimed_at__lt=cutoff
        ).update(status=ChunkStatus.QUEUED, claim_token="", requeued=True)
        if requeued or updated_at < cutoff:
            swept[campaign_id] = requeued
            # A task whose message died with its worker is re-sent here; dispatching a
            # chunk twice is harmless, since the claim lets only one task send it.
            for number in open_chunks(campaign_id):
                send_chunk.delay(campaign_id, number)
            Campaign.objects.filter(pk=campaign_id).update(updated_at=now)
            if requeued:
                logger.warning(
                    "Campaign %s: re-queued %s chunks from stale claims", campaign_id, requeued
                )
        campaign_finish_if_done(campaign_id=campaign_id)
    return swept


def backoff_seconds(retries: int) -> float:
    base = settings.CAMPAIGN_RETRY_BACKOFF
    return min(base * (2**retries), settings.CAMPAIGN_RETRY_BACKOFF_MAX)
