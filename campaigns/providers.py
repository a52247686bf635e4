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
from django.utils import timezone

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
    """A chunk sent through `provider` was turned away for a passing reason (before
    chunk_failed counts it). True: the chunk should go again at once, through the
    secondary, because the campaign has just switched to it (here, or in a racing
    worker). False: no failover (none configured, already on it, not yet due); the
    chunk is retried as it would be without one."""
    backup = secondary()
    if provider != PRIMARY or backup is None:
        return False
    row = (
        Campaign.objects.filter(pk=campaign_id)
        .values_list("provider", "consecutive_failed_chunks", "status")
        .first()
    )
    if row is None or row[2] != Campaign.Status.SENDING:
        return False
    current, failures, _status = row
    if current == SECONDARY:
        return True  # another worker switched while this chunk was on the primary
    # `failures` counts the chunks turned away since a message last got through; this
    # one is not counted yet.
    needed = settings.EMAIL_FAILOVER_AFTER_CHUNKS
    if failures + 1 < needed:
        return False
    when = timezone.localtime()
    reason = (
        f"{primary().name} turned {failures + 1} chunk{'s' if failures else ''} in a row "
        f"away (the limit is {needed}); the rest goes through {backup.name}. "
        f"{primary().name} said: {reason}"
    )
    campaign_provider_switch(campaign_id=campaign_id, reason=reason[:2000])
    logger.warning("Campaign %s switched to %s at %s", campaign_id, backup.name, when)
    return True


def campaign_provider_switch(*, campaign_id: int, reason: str) -> bool:
    """Move a campaign to the failover provider, once: the UPDATE only matches while it
    is on the primary, so of racing workers one switches and the others see it done.
    The failure count starts over, for the secondary. True if this call switched."""
    switched = Campaign.objects.filter(pk=campaign_id, provider=PRIMARY).update(
        provider=SECONDARY,
        provider_switched_at=timezone.now(),
        provider_switch_reason=reason[:2000],
        consecutive_failed_chunks=0,
        failing_since=None,
        updated_at=timezone.now(),
    )
    if switched:
        # coordinator: record a CampaignEvent here
        pass
    return bool(switched)


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
