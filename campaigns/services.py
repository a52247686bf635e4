"""Every write to campaigns goes through here: start, schedule, pause, resume, cancel,
test sends. The sending itself lives in campaigns.sending; tasks call both."""

from __future__ import annotations

import logging
from datetime import datetime
from types import SimpleNamespace

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.mail import get_connection
from django.db import connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from audience.models import Contact
from campaigns.models import Campaign, Delivery, DeliveryChunk, SenderSettings
from campaigns.rendering import render_message
from campaigns.selectors import campaign_recipients

logger = logging.getLogger(__name__)

Status = Campaign.Status


def sender_problems(sender: SenderSettings) -> list[str]:
    """What stops sending, in words the shop owner can act on (empty when ready)."""
    problems = []
    if not (sender.from_email or "").strip():
        problems.append(
            "Set the From address in Sender settings: the email your customers see "
            "the message come from (on a domain your email provider has verified)."
        )
    if not (sender.postal_address or "").strip():
        problems.append(
            "Set the postal address in Sender settings: the law (CAN-SPAM) requires "
            "a physical address at the foot of every campaign."
        )
    return problems


def _check_sendable(campaign: Campaign) -> None:
    problems = sender_problems(SenderSettings.load())
    if problems:
        raise ValidationError(problems)
    from campaigns.rendering import check_template

    for text in (campaign.subject, campaign.preheader, campaign.body):
        check_template(text)
    if not (campaign.subject or "").strip():
        raise ValidationError("Give the campaign a subject.")


def _snapshot(campaign: Campaign) -> int:
    """Copy the recipients into Delivery rows with one INSERT…SELECT, numbering chunks
    in SQL, so a million recipients never pass through Python."""
    recipients = campaign_recipients(campaign).order_by().values("pk")
    sql, params = recipients.query.sql_with_params()
    table = Delivery._meta.db_table
    chunk_size = settings.CAMPAIGN_CHUNK_SIZE
    statement = f"""
        INSERT INTO {table} (campaign_id, contact_id, chunk, status, message_id, error)
        SELECT %s, r.pk, (ROW_NUMBER() OVER (ORDER BY r.pk) - 1) / %s, %s, '', ''
        FROM ({sql}) AS r
    """  # noqa: S608 (table name from the model; values are parameters)
    with connection.cursor() as cursor:
        cursor.execute(statement, [campaign.pk, chunk_size, Delivery.Status.QUEUED, *params])
        total = cursor.rowcount
    chunks = -(-total // chunk_size)
    DeliveryChunk.objects.bulk_create(
        [DeliveryChunk(campaign_id=campaign.pk, number=n) for n in range(chunks)],
        batch_size=1000,
    )
    return total


def campaign_start(*, campaign: Campaign, actor: str = "") -> Campaign:
    """Start sending now: snapshot the recipients and queue one task per chunk.

    The draft/scheduled → sending step is a conditional UPDATE, so two admins pressing
    send, or two beat schedulers finding the same due campaign, start it once.
    """
    from campaigns.tasks import send_chunk

    _check_sendable(campaign)
    now = timezone.now()
    with transaction.atomic():
        started = Campaign.objects.filter(
            pk=campaign.pk, status__in=[Status.DRAFT, Status.SCHEDULED]
        ).update(
            status=Status.SENDING,
            started_at=now,
            finished_at=None,
            status_reason="",
            sent_count=0,
            failed_count=0,
            duplicate_count=0,
            consecutive_failed_chunks=0,
            updated_at=now,
        )
        if not started:
            current = Campaign.objects.filter(pk=campaign.pk).values_list("status", flat=True)
            raise ValidationError(
                f"Only a draft or scheduled campaign can be sent; this one is "
                f"{current.first() or 'gone'}."
            )
        total = _snapshot(campaign)
        Campaign.objects.filter(pk=campaign.pk).update(total_count=total)
        chunks = -(-total // settings.CAMPAIGN_CHUNK_SIZE)
        for chunk in range(chunks):
            send_chunk.delay_on_commit(campaign.pk, chunk)
        if total == 0:
            Campaign.objects.filter(pk=campaign.pk).update(
                status=Status.SENT, finished_at=now, status_reason="Nobody to send to."
            )
    logger.info("Campaign %s started by %s: %s recipients", campaign.pk, actor or "-", total)
    campaign.refresh_from_db()
    return campaign


def campaign_schedule(*, campaign: Campaign, when: datetime, actor: str = "") -> Campaign:
    if timezone.is_naive(when):
        raise ValidationError("Give the time with its time zone.")
    _check_sendable(campaign)
    updated = Campaign.objects.filter(
        pk=campaign.pk, status__in=[Status.DRAFT, Status.SCHEDULED]
    ).update(status=Status.SCHEDULED, scheduled_at=when, status_reason="")
    if not updated:
        raise ValidationError("Only a draft or scheduled campaign can be scheduled.")
    campaign.refresh_from_db()
    return campaign


def campaign_unschedule(*, campaign: Campaign, actor: str = "") -> Campaign:
    Campaign.objects.filter(pk=campaign.pk, status=Status.SCHEDULED).update(
        status=Status.DRAFT, scheduled_at=None
    )
    campaign.refresh_from_db()
    return campaign


def campaigns_start_due() -> list[int]:
    """Start every scheduled campaign whose time has come (run by beat every ~30 s).

    Survives restarts: the schedule is in the database, not in a timer.
    """
    started = []
    due = Campaign.objects.filter(
        status=Status.SCHEDULED, scheduled_at__lte=timezone.now()
    ).values_list("pk", flat=True)
    for pk in list(due):
        campaign = Campaign.objects.get(pk=pk)
        try:
            campaign_start(campaign=campaign, actor="schedule")
        except ValidationError as exc:
            # Another scheduler won the race, or the sender settings are incomplete: say so
            # on the campaign rather than retrying every 30 seconds.
            Campaign.objects.filter(pk=pk, status=Status.SCHEDULED).update(
                status=Status.FAILED, status_reason=" ".join(exc.messages)[:2000]
            )
        else:
            started.append(pk)
    return started


def campaign_pause(*, campaign: Campaign, actor: str = "", reason: str = "") -> Campaign:
    """Stop after the message in flight; the rest stays queued for resume.

    A person's pause is never undone automatically: pausing a campaign the provider
    paused (and that would resume by itself) keeps it paused until someone resumes it."""
    updated = (
        Campaign.objects.filter(pk=campaign.pk)
        .filter(
            Q(status=Status.SENDING)
            | (Q(status=Status.PAUSED) & ~Q(pause_kind=Campaign.PauseKind.OWNER))
        )
        .update(
            status=Status.PAUSED,
            status_reason=reason or (f"Paused by {actor}." if actor else "Paused."),
            pause_kind=Campaign.PauseKind.OWNER,
            auto_resume_at=None,
            updated_at=timezone.now(),
        )
    )
    if not updated:
        raise ValidationError("Only a campaign that is sending can be paused.")
    campaign.refresh_from_db()
    return campaign


def _resume(campaign_id: int, *, automatic: bool) -> bool:
    """paused → sending, and every chunk still queued dispatched again."""
    from campaigns import sending
    from campaigns.tasks import send_chunk

    now = timezone.now()
    paused = Campaign.objects.filter(pk=campaign_id, status=Status.PAUSED)
    if automatic:
        # Only the provider's pause, once its time has come: a person may have pressed
        # Pause since (pause_kind becomes owner) and that must hold.
        paused = paused.filter(pause_kind=Campaign.PauseKind.PROVIDER, auto_resume_at__lte=now)
    with transaction.atomic():
        updated = paused.update(
            status=Status.SENDING,
            status_reason="",
            pause_kind="",
            auto_resume_at=None,
            auto_resume_attempts=F("auto_resume_attempts") + 1 if automatic else 0,
            consecutive_failed_chunks=0,
            failing_since=None,
            updated_at=now,
        )
        if not updated:
            return False
        chunks = sending.open_chunks(campaign_id)
        for chunk in chunks:
            send_chunk.delay_on_commit(campaign_id, chunk)
    if not chunks:
        sending.campaign_finish_if_done(campaign_id=campaign_id)
    return True


def campaign_resume(*, campaign: Campaign, actor: str = "") -> Campaign:
    problems = sender_problems(SenderSettings.load())
    if problems:
        raise ValidationError(problems)
    if not _resume(campaign.pk, automatic=False):
        raise ValidationError("Only a paused campaign can be resumed.")
    campaign.refresh_from_db()
    return campaign


def campaigns_resume_due() -> list[int]:
    """Resume every campaign the provider paused whose backoff has run out (beat, and
    the wake-up task each such pause queues). A campaign whose sender settings went
    incomplete meanwhile stays paused; campaign_resume says why when a person tries."""
    due = Campaign.objects.filter(
        status=Status.PAUSED,
        pause_kind=Campaign.PauseKind.PROVIDER,
        auto_resume_at__lte=timezone.now(),
    ).values_list("pk", flat=True)
    due = list(due)
    if not due or sender_problems(SenderSettings.load()):
        return []
    resumed = [pk for pk in due if _resume(pk, automatic=True)]
    for pk in resumed:
        logger.info("Campaign %s resumed by itself after a provider pause", pk)
    return resumed


def campaign_cancel(*, campaign: Campaign, actor: str = "") -> Campaign:
    """Stop for good. Rows still queued stay queued, as the record of who was not mailed."""
    updated = Campaign.objects.filter(
        pk=campaign.pk, status__in=[Status.SENDING, Status.PAUSED, Status.SCHEDULED]
    ).update(
        status=Status.CANCELLED,
        finished_at=timezone.now(),
        status_reason=f"Cancelled by {actor}." if actor else "Cancelled.",
    )
    if not updated:
        raise ValidationError("Only a scheduled, sending or paused campaign can be cancelled.")
    campaign.refresh_from_db()
    return campaign


def campaign_send_test(
    *, campaign: Campaign, emails: list[str], as_contact: Contact | None = None
) -> int:
    """Send the campaign as `as_contact` would get it (or as each address's own contact,
    or a stand-in) to the given addresses, subject marked [Test]. No Delivery rows."""
    from django.core.mail import EmailMultiAlternatives

    sender = SenderSettings.load()
    problems = sender_problems(sender)
    if problems:
        raise ValidationError(problems)
    emails = [e.strip() for e in emails if e and e.strip()]
    if not emails:
        raise ValidationError("Give at least one address to send the test to.")
    messages = []
    for email in emails:
        contact = as_contact or Contact.objects.filter(email=email.lower()).first()
        if contact is None:
            contact = SimpleNamespace(
                pk=0,
                id=0,
                email=email,
                first_name="",
                last_name="",
                phone="",
                attributes={},
            )
        rendered = render_message(campaign=campaign, contact=contact, sender=sender)
        message = EmailMultiAlternatives(
            subject=f"[Test] {rendered.subject}",
            body=rendered.text,
            from_email=rendered.from_email,
            to=[email],
            reply_to=rendered.reply_to,
            headers=rendered.headers,
        )
        message.attach_alternative(rendered.html, "text/html")
        messages.append(message)
    with get_connection(fail_silently=False) as conn:
        return conn.send_messages(messages) or 0


# --- authoring (the emergency blast) ------------------------------------------------------


def campaign_create_from_starter(*, starter, segment=None, actor: str = "") -> Campaign:
    """A draft emergency campaign filled from a starter template and the sender settings,
    to everyone subscribed or to one segment. Sending it is campaign_start's job, after
    the owner has seen the confirmation page (or passed --yes to `manage.py blast`)."""
    from campaigns.starters import starter_fields

    fields = starter_fields(starter, SenderSettings.load())
    fields["name"] = f"{fields['name']} ({timezone.localtime():%Y-%m-%d %H:%M})"
    return Campaign.objects.create(
        **fields,
        audience=Campaign.Audience.SEGMENT if segment else Campaign.Audience.EVERYONE,
        segment=segment,
        is_emergency=True,
        created_by=actor,
    )


def campaign_duplicate(*, campaign: Campaign, actor: str = "") -> Campaign:
    """A new draft with the same message and audience: how a sent, cancelled or failed
    campaign is sent again (what went out stays as it was, as the record)."""
    copy = Campaign.objects.create(
        name=f"{campaign.name} (copy)"[:200],
        subject=campaign.subject,
        preheader=campaign.preheader,
        body=campaign.body,
        audience=campaign.audience,
        segment=campaign.segment,
        send_mode=campaign.send_mode,
        is_emergency=campaign.is_emergency,
        created_by=actor,
    )
    copy.tags.set(campaign.tags.all())
    return copy
