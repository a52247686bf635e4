"""Reads about campaigns: who receives one, and how far along it is."""

from __future__ import annotations

from django.db.models import Count, QuerySet
from django.utils import timezone

from audience.models import Contact
from campaigns.models import Campaign, Delivery, SenderSettings


def campaign_recipients(campaign: Campaign) -> QuerySet[Contact]:
    """Contacts the campaign goes to: subscribed, and in its audience.

    The same queryset feeds the admin's recipient count and the INSERT…SELECT that
    snapshots the recipients when sending starts.
    """
    contacts = Contact.objects.filter(status=Contact.Status.SUBSCRIBED)
    if campaign.audience == Campaign.Audience.SEGMENT:
        from campaigns.segments import segment_contacts

        if campaign.segment_id is None:
            return contacts.none()
        return contacts.filter(pk__in=segment_contacts(campaign.segment).values("pk"))
    if campaign.audience == Campaign.Audience.TAGS:
        through = Contact.tags.through
        tag_ids = list(campaign.tags.values_list("pk", flat=True)) if campaign.pk else []
        # A subquery, not a join: a contact with two matching tags is still one recipient.
        return contacts.filter(
            pk__in=through.objects.filter(tag_id__in=tag_ids).values("contact_id")
        )
    return contacts


def campaign_progress(campaign: Campaign) -> dict:
    """The progress bar's figures, from the counters the chunk tasks keep (no COUNT)."""
    total = campaign.total_count
    done = campaign.sent_count + campaign.failed_count
    remaining = max(0, total - done) if campaign.status != Campaign.Status.SENT else 0
    rate = 0.0
    if campaign.started_at and done:
        end = campaign.finished_at or timezone.now()
        elapsed = max((end - campaign.started_at).total_seconds(), 0.001)
        rate = done / elapsed
    if campaign.status == Campaign.Status.SENDING and rate > 0:
        eta = round(remaining / rate)
    else:
        eta = None
    return {
        "status": campaign.status,
        "total": total,
        "sent": campaign.sent_count,
        "failed": campaign.failed_count,
        "remaining": remaining,
        "rate_per_second": round(rate, 1),
        "eta_seconds": eta,
        "status_reason": campaign.status_reason,
        "duplicates": campaign.duplicate_count,
        "percent": round(100 * done / total, 1) if total else 0.0,
    }


def sender_settings() -> SenderSettings:
    return SenderSettings.load()


# The dashboard's "last campaigns": how many, and up to how many recipients a campaign may
# have for its open and click counts to be read from its Delivery rows per page view
# (through delivery_once, a few milliseconds at this size). Bigger campaigns show them
# once campaigns.reports keeps them as events arrive.
DASHBOARD_CAMPAIGNS = 5
DASHBOARD_DELIVERY_SCAN_LIMIT = 20_000


def campaigns_recent(*, limit: int = DASHBOARD_CAMPAIGNS) -> list[Campaign]:
    """The campaigns that started most recently (drafts and scheduled ones have no rates)."""
    return list(
        Campaign.objects.filter(started_at__isnull=False).order_by("-started_at", "-pk")[:limit]
    )


def _rate(part: int | None, whole: int) -> float | None:
    if part is None or not whole:
        return None
    return round(100 * part / whole, 1)


def campaign_dashboard_rates(campaigns: list[Campaign]) -> list[dict]:
    """Each campaign's figures for the dashboard, in the order given.

    The one place the dashboard reads campaign figures: sent and failed from the counters
    the chunk tasks keep; opened and clicked from Delivery rows only for campaigns up to
    DASHBOARD_DELIVERY_SCAN_LIMIT recipients (None above, shown as "—"); delivered is None
    until delivery events are counted. Rates are percentages of sent (sent and failed: of
    the recipients), None where there is nothing to divide by.
    """
    small = [c.pk for c in campaigns if c.total_count <= DASHBOARD_DELIVERY_SCAN_LIMIT]
    engagement = {
        row["campaign_id"]: row
        for row in Delivery.objects.filter(campaign_id__in=small)
        .order_by()
        .values("campaign_id")
        .annotate(opened=Count("opened_at"), clicked=Count("clicked_at"))
    }
    rows = []
    for campaign in campaigns:
        counted = campaign.pk in small
        found = engagement.get(campaign.pk, {})
        opened = found.get("opened", 0) if counted else None
        clicked = found.get("clicked", 0) if counted else None
        sent = campaign.sent_count
        rows.append(
            {
                "campaign": campaign,
                "recipients": campaign.total_count,
                "sent": sent,
                "sent_rate": _rate(sent, campaign.total_count),
                "failed": campaign.failed_count,
                "failed_rate": _rate(campaign.failed_count, campaign.total_count),
                "delivered": None,
                "delivered_rate": None,
                "opened": opened,
                "open_rate": _rate(opened, sent),
                "clicked": clicked,
                "click_rate": _rate(clicked, sent),
            }
        )
    return rows
