"""The sending engine: one chunk of one campaign at a time, safe to run twice.

A chunk task claims its queued Delivery rows with one conditional UPDATE (a second
task that loses the race claims nothing), drops contacts who are no longer subscribed,
renders each message from the campaign's compiled skeleton, sends over one reused
provider connection, and marks each row sent or failed. Counters move with F().

Failure, in brief:
- the provider says 429 / 5xx, times out or is unreachable: what was sent stays sent,
  the rest of the claim is released back to `queued`, and the task retries with
  backoff (TransientSendError); N such chunk failures in a row pause the campaign;
- the provider rejects a recipient: that row is `failed` with the provider's reason;
- the worker dies: its chunk stays `claimed` until the sweeper re-queues it
  (`requeued`: what it sends again counts as possible duplicates, at most the chunk).

Rows are claimed a chunk at a time (one DeliveryChunk row), and each Delivery row is
written once, queued → sent / failed / skipped, guarded by `status = queued` so a row
is never counted twice even if two tasks raced for a stale chunk.
"""

from __future__ import annotations

import json
import logging
import smtplib
import time
import uuid
from dataclasses import dataclass, field
from datetime import timedelta

from anymail.exceptions import AnymailError
from anymail.message import AnymailMessage
from django.conf import settings
from django.core.mail import EmailMultiAlternatives, get_connection
from django.db import OperationalError, transaction
from django.db import connection as db_connection
from django.db.models import F
from django.utils import timezone

from audience.emails import is_transient
from audience.models import Contact
from campaigns import ratelimit
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


class TransientSendError(Exception):
    """The provider could not take the chunk right now; retry it later."""


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


# --- one chunk ---------------------------------------------------------------------------


@dataclass
class ChunkResult:
    claimed: int = 0
    sent: list = field(default_factory=list)  # (delivery_id, message_id)
    failed: list = field(default_factory=list)  # (delivery_id, reason)
    skipped: list = field(default_factory=list)  # delivery ids
    duplicates: int = 0
    transient: str = ""
    stopped: bool = False


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
            f"""SELECT d.id, c.id, c.email, c.first_name, c.last_name, c.phone,
                       CAST(c.attributes AS TEXT), c.status
                FROM {delivery} d JOIN {contact} c ON c.id = d.contact_id
                WHERE d.campaign_id = %s AND d.chunk = %s AND d.status = %s
                ORDER BY d.id""",  # noqa: S608 (table names from the models)
            [campaign_id, number, Status.QUEUED],
        )
        return [(row[0], requeued, _Recipient(*row[1:])) for row in cursor.fetchall()]


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


def _send_per_message(rows, skeleton, sender, conn, guard, result: ChunkResult) -> list:
    """Send one by one; return the rows not attempted (stopped or provider trouble)."""
    for index, (pk, requeued, contact) in enumerate(rows):
        if not guard.ok():
            result.stopped = True
            return rows[index:]
        ratelimit.throttle(1, per_second=sender.rate_per_second, per_hour=sender.rate_per_hour)
        message = _build_message(skeleton, contact, sender, guard.campaign_id)
        try:
            conn.send_messages([message])
        except Exception as exc:
            if is_transient(exc):
                result.transient = _reason(exc)
                return rows[index:]
            if not isinstance(exc, AnymailError | smtplib.SMTPException):
                raise
            result.failed.append((pk, _reason(exc)))
            continue
        status = getattr(message, "anymail_status", None)
        recipient = status.recipients.get(contact.email) if status else None
        if recipient is not None and recipient.status in {"rejected", "invalid"}:
            result.failed.append((pk, f"Provider {recipient.status} the recipient"))
            continue
        result.sent.append((pk, _message_id(message)))
        result.duplicates += bool(requeued)
    return []


def _send_batch(rows, skeleton, sender, conn, guard, result: ChunkResult, placeholder) -> list:
    """Send in provider batches with per-recipient merge data and headers."""
    size = settings.CAMPAIGN_BATCH_SIZE
    if sender.rate_per_second:
        # A batch leaves in one burst: keep each within one second's allowance.
        size = max(1, min(size, sender.rate_per_second))
    subject = Skeleton.fill_placeholders(skeleton.subject, lambda k: placeholder(f"v{k}"))
    text = Skeleton.fill_placeholders(skeleton.text, lambda k: placeholder(f"v{k}"))
    html = Skeleton.fill_placeholders(skeleton.html, lambda k: placeholder(f"v{k}"))
    keys = [f"v{k}" for k in range(len(skeleton.slots))]
    slot_values = skeleton.slot_values
    # unsubscribe_headers()' List-Unsubscribe, with its mailto tail worked out once.
    mailto = unsubscribe_headers("")["List-Unsubscribe"].removeprefix("<>")
    start = 0
    while start < len(rows):
        if not guard.ok():
            result.stopped = True
            return rows[start:]
        batch = rows[start : start + size]
        ratelimit.throttle(
            len(batch), per_second=sender.rate_per_second, per_hour=sender.rate_per_hour
        )
        merge_data = {}
        merge_headers = {}
        for _pk, _requeued, contact in batch:
            values, unsubscribe, _preferences = slot_values(contact, sender)
            email = contact.email
            merge_data[email] = dict(zip(keys, values, strict=False))
            merge_headers[email] = {"List-Unsubscribe": f"<{unsubscribe}>{mailto}"}
        message = AnymailMessage(
            subject=subject,
            body=text,
            from_email=skeleton.from_email,
            to=[contact.email for _, _, contact in batch],
            reply_to=skeleton.reply_to,
            headers={"List-Unsubscribe-Post": "List-Unsubscribe=One-Click"},
            merge_data=merge_data,
            merge_global_data={},
            merge_headers=merge_headers,
            metadata={"campaign": str(guard.campaign_id)},
        )
        message.attach_alternative(html, "text/html")
        try:
            conn.send_messages([message])
        except Exception as exc:
            if is_transient(exc):
                result.transient = _reason(exc)
                return rows[start:]
            if not isinstance(exc, AnymailError):
                raise
            # One bad address fails a whole Mailgun batch with a 400: send this batch
            # one by one, so only the recipient the provider refuses is marked failed.
            logger.info("Batch refused (%s); sending it message by message", _reason(exc))
            rest = _send_per_message(batch, skeleton, sender, conn, guard, result)
            if rest:
                return rest + rows[start + size :]
            start += size
            continue
        status = message.anymail_status
        fallback_id = _message_id(message)
        for pk, requeued, contact in batch:
            recipient = status.recipients.get(contact.email)
            if recipient is not None and recipient.status in {"rejected", "invalid"}:
                result.failed.append((pk, f"Provider {recipient.status} the recipient"))
                continue
            mid = str(recipient.message_id) if recipient and recipient.message_id else fallback_id
            result.sent.append((pk, mid[:200]))
            result.duplicates += bool(requeued)
        start += size
    return []


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
        by_id: dict[str, list[int]] = {}
        for pk, mid in result.sent:
            by_id.setdefault(mid, []).append(pk)
        if len(by_id) <= 4 and db_connection.vendor == "postgresql":
            # One array parameter, not a thousand-entry IN list for the client to build.
            table = Delivery._meta.db_table
            with db_connection.cursor() as cursor:
                for mid, pks in by_id.items():
                    cursor.execute(
                        f"""UPDATE {table} SET status = %s, sent_at = %s, message_id = %s
                            WHERE campaign_id = %s AND chunk = %s AND id = ANY(%s::bigint[])
                              AND status = %s""",  # noqa: S608 (table name from the model)
                        [Status.SENT, now, mid, campaign_id, chunk, pks, Status.QUEUED],
                    )
                    marked.sent += cursor.rowcount
        elif len(by_id) <= 4:
            for mid, pks in by_id.items():
                marked.sent += queued.filter(pk__in=pks).update(
                    status=Status.SENT, sent_at=now, message_id=mid
                )
        else:
            marked.sent = _mark_sent_many(campaign_id, chunk, result.sent, now)
    for pk, reason in result.failed:
        marked.failed += queued.filter(pk=pk).update(status=Status.FAILED, error=reason)
    return marked


def _mark_sent_many(campaign_id: int, chunk: int, sent: list, now) -> int:
    table = Delivery._meta.db_table
    if db_connection.vendor == "postgresql":
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
    queued = set(
        Delivery.objects.filter(
            pk__in=[pk for pk, _ in sent], campaign_id=campaign_id, status=Status.QUEUED
        ).values_list("pk", flat=True)
    )
    objs = [
        Delivery(pk=pk, status=Status.SENT, sent_at=now, message_id=mid)
        for pk, mid in sent
        if pk in queued
    ]
    Delivery.objects.bulk_update(objs, ["status", "sent_at", "message_id"], 500)
    return len(objs)


def chunk_send(*, campaign_id: int, chunk: int) -> ChunkResult:
    """Send one chunk. Raises TransientSendError (after giving the chunk back to the
    queue) when the provider should be tried again later."""
    result = ChunkResult()
    campaign = Campaign.objects.filter(pk=campaign_id).first()
    if campaign is None or campaign.status != SENDING:
        return result
    token = uuid.uuid4().hex
    claimed = _claim(campaign_id, chunk, token)
    if claimed is None:
        campaign_finish_if_done(campaign_id=campaign_id)
        return result
    rows = _queued_rows(campaign_id, chunk, claimed.requeued)
    result.claimed = len(rows)
    live = []
    for row in rows:
        if row[2].status == Contact.Status.SUBSCRIBED:
            live.append(row)
        else:
            # Unsubscribed, bounced or complained since the campaign started.
            result.skipped.append(row[0])
    sender = SenderSettings.load()
    skeleton = compile_campaign(campaign, sender)
    guard = _Guard(campaign_id, claimed, token)
    unsent: list = []
    if live:
        conn = get_connection(fail_silently=False)
        try:
            conn.open()
            placeholder = (
                _placeholder_style(settings.EMAIL_BACKEND)
                if campaign.send_mode == Campaign.SendMode.BATCH
                else None
            )
            if placeholder is not None:
                unsent = _send_batch(live, skeleton, sender, conn, guard, result, placeholder)
            else:
                unsent = _send_per_message(live, skeleton, sender, conn, guard, result)
        except Exception as exc:
            # Open failed or something unexpected: record what went out, give the rest back.
            unsent = [None]
            if not is_transient(exc):
                _count(campaign_id, result, _mark(campaign_id, chunk, result), failed_chunk=False)
                _release(claimed, token, done=False)
                raise
            result.transient = _reason(exc)
        finally:
            try:
                conn.close()
            except Exception:  # closing a broken connection must not mask the real error
                logger.debug("closing the mail connection failed", exc_info=True)

    # The mail has gone: a brief database hiccup (SQLite's lock, a failover) must not
    # lose the record of it, or the sweeper would send the chunk again. The rows, the
    # counters and the chunk move together, in one transaction (one commit to wait for).
    def record() -> None:
        marked = _mark(campaign_id, chunk, result)
        _count(campaign_id, result, marked, failed_chunk=bool(result.transient))
        # Rows not sent stay queued: giving the chunk back is all a retry or resume needs.
        _release(claimed, token, done=not unsent)

    _patiently(record)
    if result.transient:
        raise TransientSendError(result.transient)
    if not unsent:
        campaign_finish_if_done(campaign_id=campaign_id)
    return result


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
        "duplicate_count": F("duplicate_count") + (marked.sent if result.duplicates else 0),
        "updated_at": timezone.now(),
    }
    if not failed_chunk and (marked.sent or marked.failed):
        updates["consecutive_failed_chunks"] = 0
    # Skipped contacts leave the total: the bar counts who is actually mailed.
    if marked.skipped:
        updates["total_count"] = F("total_count") - marked.skipped
    Campaign.objects.filter(pk=campaign_id).update(**updates)


def chunk_failed(*, campaign_id: int, reason: str, exhausted: bool = False) -> bool:
    """Count a failed chunk; pause the campaign after N in a row. True if paused."""
    Campaign.objects.filter(pk=campaign_id).update(
        consecutive_failed_chunks=F("consecutive_failed_chunks") + 1
    )
    limit = settings.CAMPAIGN_MAX_FAILED_CHUNKS
    paused = Campaign.objects.filter(pk=campaign_id, status=SENDING)
    if not exhausted:
        paused = paused.filter(consecutive_failed_chunks__gte=limit)
    why = (
        f"Paused after {limit} failed chunks in a row; the provider said: {reason}"
        if not exhausted
        else f"Paused: a chunk kept failing after every retry; the provider said: {reason}"
    )
    return bool(paused.update(status=Campaign.Status.PAUSED, status_reason=why[:2000]))


def campaign_finish_if_done(*, campaign_id: int) -> bool:
    """Mark the campaign sent once every chunk is done, i.e. every Delivery is final."""
    if (
        DeliveryChunk.objects.filter(campaign_id=campaign_id)
        .exclude(status=ChunkStatus.DONE)
        .exists()
    ):
        return False
    # A chunk is marked done only after every one of its rows was written sent, failed
    # or skipped (rows not sent keep their chunk queued), so this is "every Delivery is
    # final" without scanning a million rows.
    return bool(
        Campaign.objects.filter(pk=campaign_id, status=SENDING).update(
            status=Campaign.Status.SENT, finished_at=timezone.now()
        )
    )


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
