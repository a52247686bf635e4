"""Thin Celery tasks: take ids, call campaigns.sending / campaigns.services."""

from __future__ import annotations

from celery import shared_task
from django.conf import settings

from campaigns import sending, services


@shared_task(bind=True, acks_late=True, max_retries=None)
def send_chunk(self, campaign_id: int, chunk: int) -> dict:
    """Send one chunk of a campaign. Safe to run twice: rows are claimed before sending."""
    try:
        result = sending.chunk_send(
            campaign_id=campaign_id, chunk=chunk, run_ahead=sending.RUN_AHEAD_SECONDS
        )
    except sending.TransientSendError as exc:
        # The trouble may have come in a chunk this task went on to: that one is retried
        # by a task of its own, from its first retry.
        own = exc.chunk in (None, chunk)
        failed_chunk = chunk if own else exc.chunk
        retries = self.request.retries if own else 0
        # A chunk that got some mail through before the trouble is not running out of
        # retries: at 30% errors a 500-message chunk would, one message per try.
        exhausted = not exc.progressed and retries >= settings.CAMPAIGN_MAX_RETRIES
        failure = sending.chunk_failed(
            campaign_id=campaign_id,
            reason=str(exc),
            retry_after=exc.retry_after,
            exhausted=exhausted,
        )
        if failure.paused or exhausted:
            # The rows are back in the queue; resume dispatches them again.
            return {"paused": True, "reason": str(exc)}
        countdown = max(sending.backoff_seconds(retries), failure.wait)
        if exc.progressed or not own:
            send_chunk.apply_async((campaign_id, failed_chunk), countdown=countdown)
            return {"retrying": failed_chunk, "reason": str(exc)}
        raise self.retry(exc=exc, countdown=countdown) from None
    return {
        "sent": len(result.sent),
        "failed": len(result.failed),
        "skipped": len(result.skipped),
        "then": result.ran_ahead,
    }


@shared_task(acks_late=True)
def sweep_stale_claims() -> dict:
    """Beat: give the rows of a dead worker's chunk back to the queue."""
    return {str(k): v for k, v in sending.claims_sweep().items()}


@shared_task(acks_late=True)
def resume_due_campaigns() -> list[int]:
    """Beat, and each provider pause's own wake-up: resume the campaigns whose
    provider pause has served its backoff."""
    return services.campaigns_resume_due()


@shared_task(acks_late=True)
def start_due_campaigns() -> list[int]:
    """Beat: start scheduled campaigns whose time has come."""
    return services.campaigns_start_due()


@shared_task(acks_late=True)
def start_campaign(campaign_id: int, actor: str = "") -> None:
    from campaigns.models import Campaign

    services.campaign_start(campaign=Campaign.objects.get(pk=campaign_id), actor=actor)
