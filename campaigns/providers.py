"""Which provider a campaign sends through, and the switch to the failover.

A campaign starts on the primary (EMAIL_PROVIDER). When the primary has turned
EMAIL_FAILOVER_AFTER_CHUNKS chunks in a row away for a passing reason (5xx, 429,
timeouts, unreachable) and a failover is configured, `campaign_provider_switch` moves
the campaign to the secondary, once, with a conditional UPDATE that racing workers
cannot both win; the chunk that failed goes again at once through the secondary, and
every chunk after it too. The switch is for the rest of that campaign only: the next
campaign starts on the primary again, so a primary that recovered is used, but never
mid-way through a campaign (the recipients would be split between two providers' logs
and reputations for nothing).

The providers themselves (objects with their backend and credentials, and
`connection_for`) live in config.providers, shared with the confirmation mail.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.db.models import F

from campaigns import lifecycle
from campaigns.models import Campaign
from config.providers import (
    PRIMARY,
    SECONDARY,
    Provider,
    by_role,
    connection_for,
    primary,
    secondary,
)

__all__ = [
    "PRIMARY",
    "SECONDARY",
    "Provider",
    "batch_supported",
    "campaign_failover_due",
    "campaign_primary_took_chunk",
    "campaign_provider",
    "campaign_provider_switch",
    "connection_for",
    "primary",
    "secondary",
]

logger = logging.getLogger(__name__)


def batch_supported(provider: Provider) -> bool:
    """Does `provider` take a batch call with per-recipient merge data? If not, a batch
    campaign's chunks go out through it message by message."""
    from campaigns.sending import batch_supported as backend_batches

    return backend_batches(provider.backend)


def campaign_provider(campaign: Campaign) -> Provider:
    """The provider the campaign's chunks go out through now."""
    return by_role(campaign.provider)


def campaign_failover_due(*, campaign_id: int, provider: str, reason: str) -> bool:
    """A chunk sent through `provider` was turned away for a passing reason. True: the
    campaign is on the failover now (switched here, or already by another worker) and
    the chunk should go again at once, through it, uncounted. False: no failover (none
    configured, the failover itself failed, or not yet due): the chunk is counted and
    retried as it would be without one (chunk_failed)."""
    backup = secondary()
    if provider != PRIMARY or backup is None:
        return False
    campaign = Campaign.objects.filter(pk=campaign_id, status=Campaign.Status.SENDING)
    # One atomic increment per failed chunk: two workers failing at the same instant
    # count two, and the second sees it.
    counted = campaign.filter(provider=PRIMARY).update(
        provider_failed_chunks=F("provider_failed_chunks") + 1
    )
    row = campaign.values_list("provider", "provider_failed_chunks").first()
    if row is None:
        return False
    current, failures = row
    if current == SECONDARY:
        return True  # switched by another worker while this chunk was on the primary
    needed = settings.EMAIL_FAILOVER_AFTER_CHUNKS
    if not counted or failures < needed:
        return False
    reason = (
        f"{primary().name} turned {failures} chunk{'s' if failures > 1 else ''} in a row "
        f"away (the limit is {needed}); the rest goes through {backup.name}. "
        f"{primary().name} said: {reason}"
    )
    if campaign_provider_switch(campaign_id=campaign_id, reason=reason[:2000]):
        logger.warning("Campaign %s switched to %s: %s", campaign_id, backup.name, reason[:300])
        _retry_failed_chunks_now(campaign_id)
    return True


def campaign_primary_took_chunk(*, campaign_id: int) -> None:
    """A chunk went out whole through the primary: its failures so far were not "in a
    row". One cheap UPDATE per chunk, and only with a failover configured."""
    if secondary() is None:
        return
    Campaign.objects.filter(pk=campaign_id, provider_failed_chunks__gt=0).update(
        provider_failed_chunks=0
    )


def _retry_failed_chunks_now(campaign_id: int) -> None:
    """The chunks the primary turned away before the switch wait out its backoff (5 s and
    growing); through the failover they need not. Sending a chunk task twice is harmless
    (the claim lets one send), so their delayed retries, when they come, find them done.
    Only chunks already tried: the rest are on their way from campaign_start."""
    from campaigns.models import DeliveryChunk
    from campaigns.tasks import send_chunk

    tried = DeliveryChunk.objects.filter(
        campaign_id=campaign_id, status=DeliveryChunk.Status.QUEUED, attempts__gt=0
    ).values_list("number", flat=True)
    for number in tried:
        send_chunk.delay(campaign_id, number)


def campaign_provider_switch(*, campaign_id: int, reason: str) -> bool:
    """Move the campaign to the failover, once (campaigns.lifecycle, with its event)."""
    return lifecycle.campaign_provider_switch(
        campaign_id=campaign_id, reason=reason, switched_from=primary(), switched_to=secondary()
    )


def campaign_provider_shown(campaign: Campaign) -> dict:
    """What the campaign page says about the provider: which one it goes through, and
    the switch (when, why) if there was one."""
    provider = campaign_provider(campaign)
    return {
        "label": provider.label,
        "switched": campaign.provider == SECONDARY,
        "switched_at": campaign.provider_switched_at,
        "reason": campaign.provider_switch_reason,
        "failover": secondary(),
    }
