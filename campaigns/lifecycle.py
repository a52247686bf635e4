"""Every change of a campaign's status, one function each, and the CampaignEvent it writes.

    draft ⇄ scheduled → sending ⇄ paused → sent
    scheduled → failed (the scheduler could not start it)
    scheduled | sending | paused → cancelled

Each function makes its change with a conditional UPDATE guarded by the status it
leaves (so two admins, two schedulers or two workers racing make it once) and, in the
same transaction, writes one CampaignEvent: who ("" is the system), from, to, why. A
call that loses the race changes nothing and writes nothing. When a change may leave
more than one status (start leaves draft or scheduled), it tries each in turn, so the
event's `from_status` is the one the UPDATE actually matched, not a guess read before.

Nothing else writes Campaign.status (tests/campaigns/test_lifecycle.py holds the code
to it), and Campaign.save() leaves a stored campaign's status alone.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.db.models import F, Q, QuerySet
from django.utils import timezone

from campaigns.models import Campaign, CampaignEvent, Delivery, DeliveryChunk, SenderSettings

logger = logging.getLogger(__name__)

Status = Campaign.Status
PauseKind = Campaign.PauseKind
SYSTEM = ""  # the actor of what no person did: the scheduler, a worker, a timer


def campaign_event_record(
    *,
    campaign_id: int,
    actor: str,
    kind: str,
    from_status: str,
    to_status: str,
    reason: str,
    detail: dict | None = None,
) -> CampaignEvent:
    """Write one event. The transitions below call it inside their own transaction; the
    failover calls it for a provider switch (kind "provider_switch", from = to)."""
    return CampaignEvent.objects.create(
        campaign_id=campaign_id,
        actor=(actor or "")[:200],
        kind=kind,
        from_status=from_status,
        to_status=to_status,
        reason=reason,
        detail=detail or {},
    )


def _move(
    campaign_id: int,
    *,
    leaving: list[tuple[str, Q | None]],
    to: str,
    actor: str,
    reason: str,
    detail: dict | None = None,
    **fields,
) -> str | None:
    """campaign → `to`, from the first of `leaving` whose guard matches, with `fields`;
    the event goes with it. Returns the status it left, or None if none matched (then
    nothing was written). Call inside a transaction."""
    for status, extra in leaving:
        guard = Campaign.objects.filter(pk=campaign_id, status=status)
        if extra is not None:
            guard = guard.filter(extra)
        if guard.update(status=to, updated_at=timezone.now(), **fields):
            campaign_event_record(
                campaign_id=campaign_id,
                actor=actor,
                kind=CampaignEvent.Kind.STATUS,
                from_status=status,
                to_status=to,
                reason=reason,
                detail=detail,
            )
            return status
    return None


def _at(when: datetime | None) -> str:
    return f"{timezone.localtime(when):%Y-%m-%d %H:%M %Z}" if when else "no time set"


def _status(campaign_id: int) -> str:
    current = Campaign.objects.filter(pk=campaign_id).values_list("status", flat=True).first()
    return current or "gone"


# --- start, schedule, unschedule ----------------------------------------------------------


def _check_sendable(campaign: Campaign) -> None:
    from campaigns.rendering import check_template
    from campaigns.services import sender_problems

    problems = sender_problems(SenderSettings.load())
    if problems:
        raise ValidationError(problems)
    for text in (campaign.subject, campaign.preheader, campaign.body):
        check_template(text)
    if not (campaign.subject or "").strip():
        raise ValidationError("Give the campaign a subject.")


def _snapshot(campaign: Campaign) -> int:
    """Copy the recipients into Delivery rows with one INSERT…SELECT, numbering chunks
    in SQL, so a million recipients never pass through Python."""
    from campaigns.selectors import campaign_recipients

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


def campaign_start(
    *, campaign: Campaign, actor: str = "", reason: str = "", force: bool = False
) -> Campaign:
    """Start sending now: snapshot the recipients and queue one task per chunk.

    The draft/scheduled → sending step is a conditional UPDATE, so two admins pressing
    send, or two beat schedulers finding the same due campaign, start it once.
    """
    from campaigns.tasks import send_chunk

    _check_sendable(campaign)
    now = timezone.now()
    with transaction.atomic():
        left = _move(
            campaign.pk,
            leaving=[(Status.DRAFT, None), (Status.SCHEDULED, None)],
            to=Status.SENDING,
            actor=actor,
            reason=reason or (f"Sent by {actor}." if actor else "Sent."),
            started_at=now,
            finished_at=None,
            status_reason="",
            sent_count=0,
            failed_count=0,
            duplicate_count=0,
            consecutive_failed_chunks=0,
        )
        if left is None:
            raise ValidationError(
                f"Only a draft or scheduled campaign can be sent; this one is "
                f"{_status(campaign.pk)}."
            )
        total = _snapshot(campaign)
        Campaign.objects.filter(pk=campaign.pk).update(total_count=total)
        chunks = -(-total // settings.CAMPAIGN_CHUNK_SIZE)
        for chunk in range(chunks):
            send_chunk.delay_on_commit(campaign.pk, chunk)
        if total == 0:
            # The person's press finished it: theirs, not the system's.
            nobody = "Nobody to send to."
            _finish(campaign.pk, actor=actor, reason=nobody, now=now, status_reason=nobody)
    logger.info("Campaign %s started by %s: %s recipients", campaign.pk, actor or "-", total)
    campaign.refresh_from_db()
    return campaign


def campaign_schedule(*, campaign: Campaign, when: datetime, actor: str = "") -> Campaign:
    """draft → scheduled, or a scheduled campaign moved to another time."""
    if timezone.is_naive(when):
        raise ValidationError("Give the time with its time zone.")
    _check_sendable(campaign)
    with transaction.atomic():
        left = _move(
            campaign.pk,
            leaving=[(Status.DRAFT, None), (Status.SCHEDULED, None)],
            to=Status.SCHEDULED,
            actor=actor,
            reason=f"Scheduled for {_at(when)}.",
            detail={"scheduled_at": when.isoformat()},
            scheduled_at=when,
            status_reason="",
        )
    if left is None:
        raise ValidationError("Only a draft or scheduled campaign can be scheduled.")
    campaign.refresh_from_db()
    return campaign


def campaign_unschedule(*, campaign: Campaign, actor: str = "") -> Campaign:
    """scheduled → draft. A campaign that started meanwhile is left as it is."""
    with transaction.atomic():
        _move(
            campaign.pk,
            leaving=[(Status.SCHEDULED, None)],
            to=Status.DRAFT,
            actor=actor,
            reason=f"Unscheduled by {actor}." if actor else "Unscheduled.",
            scheduled_at=None,
        )
    campaign.refresh_from_db()
    return campaign


def campaign_fail(*, campaign_id: int, actor: str = SYSTEM, reason: str) -> bool:
    """scheduled → failed: the scheduler could not start it (incomplete sender settings,
    a template that no longer renders). Said on the campaign rather than retried every
    scan. True if this call failed it."""
    with transaction.atomic():
        left = _move(
            campaign_id,
            leaving=[(Status.SCHEDULED, None)],
            to=Status.FAILED,
            actor=actor,
            reason=reason,
            status_reason=reason[:2000],
        )
    return left is not None


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
            campaign_start(
                campaign=campaign,
                actor=SYSTEM,
                reason=f"Its scheduled time came ({_at(campaign.scheduled_at)}).",
            )
        except ValidationError as exc:
            # Another scheduler won the race (then the campaign is no longer scheduled
            # and this writes nothing), or it cannot be sent: say so on the campaign.
            campaign_fail(campaign_id=pk, reason=" ".join(exc.messages))
        else:
            started.append(pk)
    return started


# --- pause, resume, cancel ------------------------------------------------------------------


def campaign_pause(*, campaign: Campaign, actor: str = "", reason: str = "") -> Campaign:
    """Stop after the message in flight; the rest stays queued for resume.

    A person's pause is never undone automatically: pausing a campaign the provider
    paused (and that would resume by itself) keeps it paused until someone resumes it.
    That paused → paused change is an event too: it is who stopped the automatic resume."""
    reason = reason or (f"Paused by {actor}." if actor else "Paused.")
    with transaction.atomic():
        left = _move(
            campaign.pk,
            leaving=[
                (Status.SENDING, None),
                (Status.PAUSED, ~Q(pause_kind=PauseKind.OWNER)),
            ],
            to=Status.PAUSED,
            actor=actor,
            reason=reason,
            detail={"pause_kind": PauseKind.OWNER},
            status_reason=reason,
            pause_kind=PauseKind.OWNER,
            auto_resume_at=None,
        )
    if left is None:
        raise ValidationError("Only a campaign that is sending can be paused.")
    campaign.refresh_from_db()
    return campaign


def auto_resume_seconds(attempts: int) -> float:
    base = settings.CAMPAIGN_AUTO_RESUME_BACKOFF
    return min(base * (2**attempts), settings.CAMPAIGN_AUTO_RESUME_BACKOFF_MAX)


def campaign_pause_by_provider(
    *, campaign_id: int, kind: str, why: str, said: str, not_before: float = 0.0
) -> bool:
    """sending → paused because of the provider, saying why and what happens next. A
    `provider` pause is given a time to resume by itself (a growing, capped backoff, at
    most CAMPAIGN_AUTO_RESUME_MAX times without a message getting through); a `setup`
    pause waits for a person. The system's act. True if this call paused it."""
    from campaigns.tasks import resume_due_campaigns

    now = timezone.now()
    limit = settings.CAMPAIGN_AUTO_RESUME_MAX
    with transaction.atomic():
        # Locked while the backoff is worked out from the attempts so far: two workers
        # pausing at once must not both count an attempt.
        sending = Campaign.objects.select_for_update().filter(pk=campaign_id, status=Status.SENDING)
        attempts = sending.values_list("auto_resume_attempts", flat=True).first()
        if attempts is None:
            return False
        resume_at = None
        delay = 0.0
        if kind != PauseKind.PROVIDER:
            then = ""
        elif attempts < limit:
            # Never sooner than the provider asked (Retry-After) or the hold it caused.
            delay = max(auto_resume_seconds(attempts), not_before)
            resume_at = now + timedelta(seconds=delay)
            then = (
                f" It resumes by itself at {timezone.localtime(resume_at):%H:%M:%S} "
                f"(automatic attempt {attempts + 1} of {limit}); Pause keeps it paused."
            )
        else:
            then = (
                f" It resumed by itself {limit} times without a message getting through: "
                "press Resume once the provider is back."
            )
        reason = f"Paused: {why}.{then} The provider said: {said[:1200]}"[:2000]
        left = _move(
            campaign_id,
            leaving=[(Status.SENDING, None)],
            to=Status.PAUSED,
            actor=SYSTEM,
            reason=reason,
            detail={
                "pause_kind": kind,
                "auto_resume_at": resume_at.isoformat() if resume_at else None,
            },
            status_reason=reason,
            pause_kind=kind,
            auto_resume_at=resume_at,
            provider_pause_count=F("provider_pause_count") + 1,
        )
        if left is None:  # cannot happen under the lock; kept for SQLite's no-op lock
            return False
        if resume_at is not None:
            # Its own wake-up; beat's scan catches it too if this task is lost.
            transaction.on_commit(lambda: resume_due_campaigns.apply_async(countdown=delay + 0.2))
    logger.warning("Campaign %s paused (%s): %s", campaign_id, kind, reason[:300])
    return True


def _resume(campaign_id: int, *, actor: str, automatic: bool) -> bool:
    """paused → sending, and every chunk still queued dispatched again."""
    from campaigns.sending import open_chunks
    from campaigns.tasks import send_chunk

    now = timezone.now()
    # Only the provider's pause, once its time has come, resumes by itself: a person
    # may have pressed Pause since (pause_kind becomes owner) and that must hold.
    guard = Q(pause_kind=PauseKind.PROVIDER, auto_resume_at__lte=now) if automatic else None
    with transaction.atomic():
        attempt = (
            Campaign.objects.filter(pk=campaign_id).values_list("auto_resume_attempts", flat=True)
        ).first()
        if automatic:
            reason = (
                f"Resumed by itself after the provider's pause (automatic attempt "
                f"{(attempt or 0) + 1} of {settings.CAMPAIGN_AUTO_RESUME_MAX})."
            )
        else:
            reason = f"Resumed by {actor}." if actor else "Resumed."
        left = _move(
            campaign_id,
            leaving=[(Status.PAUSED, guard)],
            to=Status.SENDING,
            actor=actor,
            reason=reason,
            status_reason="",
            pause_kind="",
            auto_resume_at=None,
            auto_resume_attempts=F("auto_resume_attempts") + 1 if automatic else 0,
            consecutive_failed_chunks=0,
            failing_since=None,
        )
        if left is None:
            return False
        chunks = open_chunks(campaign_id)
        for chunk in chunks:
            send_chunk.delay_on_commit(campaign_id, chunk)
    if not chunks:
        campaign_finish_if_done(campaign_id=campaign_id)
    return True


def campaign_resume(*, campaign: Campaign, actor: str = "") -> Campaign:
    """A person's resume: paused (by anyone) → sending."""
    from campaigns.services import sender_problems

    problems = sender_problems(SenderSettings.load())
    if problems:
        raise ValidationError(problems)
    if not _resume(campaign.pk, actor=actor, automatic=False):
        raise ValidationError("Only a paused campaign can be resumed.")
    campaign.refresh_from_db()
    return campaign


def campaigns_resume_due() -> list[int]:
    """Resume every campaign the provider paused whose backoff has run out (beat, and
    the wake-up task each such pause queues). A campaign whose sender settings went
    incomplete meanwhile stays paused; campaign_resume says why when a person tries."""
    from campaigns.services import sender_problems

    due = Campaign.objects.filter(
        status=Status.PAUSED,
        pause_kind=PauseKind.PROVIDER,
        auto_resume_at__lte=timezone.now(),
    ).values_list("pk", flat=True)
    due = list(due)
    if not due or sender_problems(SenderSettings.load()):
        return []
    resumed = [pk for pk in due if _resume(pk, actor=SYSTEM, automatic=True)]
    for pk in resumed:
        logger.info("Campaign %s resumed by itself after a provider pause", pk)
    return resumed


def campaign_cancel(*, campaign: Campaign, actor: str = "") -> Campaign:
    """Stop for good. Rows still queued stay queued, as the record of who was not mailed."""
    reason = f"Cancelled by {actor}." if actor else "Cancelled."
    with transaction.atomic():
        left = _move(
            campaign.pk,
            leaving=[(Status.SENDING, None), (Status.PAUSED, None), (Status.SCHEDULED, None)],
            to=Status.CANCELLED,
            actor=actor,
            reason=reason,
            finished_at=timezone.now(),
            status_reason=reason,
        )
    if left is None:
        raise ValidationError("Only a scheduled, sending or paused campaign can be cancelled.")
    campaign.refresh_from_db()
    return campaign


# --- finish ---------------------------------------------------------------------------------


def _finish(campaign_id: int, *, actor: str, reason: str, now: datetime, **fields) -> bool:
    left = _move(
        campaign_id,
        leaving=[(Status.SENDING, None)],
        to=Status.SENT,
        actor=actor,
        reason=reason,
        finished_at=now,
        **fields,
    )
    return left is not None


def campaign_finish_if_done(*, campaign_id: int) -> bool:
    """sending → sent once every chunk is done, i.e. every Delivery is final. The
    worker's act (the system). True if this call finished it."""
    chunks: QuerySet = DeliveryChunk.objects.filter(campaign_id=campaign_id)
    if chunks.exclude(status=DeliveryChunk.Status.DONE).exists():
        return False
    # A chunk is marked done only after every one of its rows was written sent, failed
    # or skipped (rows not sent keep their chunk queued), so this is "every Delivery is
    # final" without scanning a million rows. The counters say what became of them.
    with transaction.atomic():
        counts = (
            Campaign.objects.filter(pk=campaign_id, status=Status.SENDING)
            .values_list("sent_count", "failed_count", "total_count")
            .first()
        )
        if counts is None:
            return False
        sent, failed, total = counts
        return _finish(
            campaign_id,
            actor=SYSTEM,
            reason=f"Every delivery is final: {sent:,} sent, {failed:,} failed, of {total:,}.",
            now=timezone.now(),
        )


def campaign_provider_switch(*, campaign_id: int, reason: str, switched_from, switched_to) -> bool:
    """Move a campaign to the failover provider, once, with its event: the UPDATE only
    matches while it is on the primary, so of racing workers one switches (and records
    it) and the others see it done. The status does not change; the failure count
    starts over, for the secondary (chunk_failed's pause). True if this call switched.
    `switched_from` / `switched_to`: the config.providers.Provider objects."""
    now = timezone.now()
    with transaction.atomic():
        switched = Campaign.objects.filter(
            pk=campaign_id, provider=Campaign.Provider.PRIMARY
        ).update(
            provider=Campaign.Provider.SECONDARY,
            provider_switched_at=now,
            provider_switch_reason=reason[:2000],
            consecutive_failed_chunks=0,
            failing_since=None,
            updated_at=now,
        )
        if switched:
            status = (
                Campaign.objects.filter(pk=campaign_id).values_list("status", flat=True).first()
            ) or ""
            campaign_event_record(
                campaign_id=campaign_id,
                actor="",
                kind=CampaignEvent.Kind.PROVIDER_SWITCH,
                from_status=status,
                to_status=status,
                reason=reason,
                detail={"from": switched_from.label, "to": switched_to.label},
            )
    return bool(switched)
