"""Thin Celery tasks: take ids, call campaigns.sending / campaigns.lifecycle."""

from __future__ import annotations

from celery import shared_task
from django.conf import settings

from campaigns import lifecycle, providers, sending, welcome


@shared_task(bind=True, acks_late=True, max_retries=None)
def send_chunk(self, campaign_id: int, chunk: int) -> dict:
    """Send one chunk of a campaign. Safe to run twice: rows are claimed before sending."""
    try:
        result = sending.chunk_send(campaign_id=campaign_id, chunk=chunk)
    except sending.TransientSendError as exc:
        if providers.campaign_failover_due(
            campaign_id=campaign_id, provider=exc.provider, reason=str(exc)
        ):
            # The campaign goes through the failover provider now: this chunk goes again
            # at once, not after the failed primary's backoff (its hold is its own).
            send_chunk.apply_async((campaign_id, chunk))
            return {"failover": True, "reason": str(exc)}
        # A chunk that got some mail through before the trouble is not running out of
        # retries: at 30% errors a 500-message chunk would, one message per try.
        exhausted = not exc.progressed and self.request.retries >= settings.CAMPAIGN_MAX_RETRIES
        failure = sending.chunk_failed(
            campaign_id=campaign_id,
            reason=str(exc),
            retry_after=exc.retry_after,
            exhausted=exhausted,
            provider=exc.provider,
        )
        if failure.paused or exhausted:
            # The rows are back in the queue; resume dispatches them again.
            return {"paused": True, "reason": str(exc)}
        countdown = max(sending.backoff_seconds(self.request.retries), failure.wait)
        if exc.progressed:
            send_chunk.apply_async((campaign_id, chunk), countdown=countdown)
            return {"retrying": True, "reason": str(exc)}
        raise self.retry(exc=exc, countdown=countdown) from None
    return {"sent": len(result.sent), "failed": len(result.failed), "skipped": len(result.skipped)}


@shared_task(acks_late=True)
def sweep_stale_claims() -> dict:
    """Beat: give the rows of a dead worker's chunk back to the queue."""
    return {str(k): v for k, v in sending.claims_sweep().items()}


@shared_task(acks_late=True)
def resume_due_campaigns() -> list[int]:
    """Beat, and each provider pause's own wake-up: resume the campaigns whose
    provider pause has served its backoff."""
    return lifecycle.campaigns_resume_due()


@shared_task(acks_late=True)
def start_due_campaigns() -> list[int]:
    """Beat: start scheduled campaigns whose time has come."""
    return lifecycle.campaigns_start_due()


@shared_task(acks_late=True)
def start_campaign(campaign_id: int, actor: str = "") -> None:
    from campaigns.models import Campaign

    lifecycle.campaign_start(campaign=Campaign.objects.get(pk=campaign_id), actor=actor)


@shared_task(acks_late=True)
def send_due_welcomes() -> int:
    """Send owed welcome emails (campaigns.welcome): queued by audience.welcome.kick after
    the subscription commits, and by beat every minute as the sweep. Safe to run twice and
    on many workers at once: each row is claimed before it is sent, and a claim whose
    worker died is given up on, never sent again."""
    result = welcome.welcomes_send()
    if result.more:
        send_due_welcomes.delay()
    return result.sent
