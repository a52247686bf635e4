"""Reads about campaigns: who receives one, and how far along it is."""

from __future__ import annotations

from django.db.models import QuerySet
from django.utils import timezone

from audience.models import Contact
from audience.segments import segment_contacts
from campaigns.models import Campaign, CampaignEvent, SenderSettings


def campaign_recipients(campaign: Campaign) -> QuerySet[Contact]:
    """Contacts the campaign goes to: subscribed, and in its audience.

    The same queryset feeds the admin's recipient count and the INSERT…SELECT that
    snapshots the recipients when sending starts.
    """
    contacts = Contact.objects.filter(status=Contact.Status.SUBSCRIBED)
    if campaign.audience == Campaign.Audience.SEGMENT:
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


def campaign_events(campaign: Campaign, *, limit: int = 50) -> list[CampaignEvent]:
    """The campaign's last `limit` events, newest first: one indexed range read
    (campaign_event_time), whatever the campaign's history holds."""
    return list(
        CampaignEvent.objects.filter(campaign=campaign).order_by("-created_at", "-id")[:limit]
    )


# The dashboard's "last campaigns": how many.
DASHBOARD_CAMPAIGNS = 5


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
    the chunk tasks keep, delivered, opened and clicked from the report's counters kept as
    provider events arrive (campaigns.reports.campaign_summaries: one query whatever the
    campaigns' size, no Delivery row read). Rates are percentages of sent (sent and
    failed: of the recipients), None where there is nothing to divide by.
    """
    from campaigns.reports import campaign_summaries

    rows = []
    for summary in campaign_summaries(campaigns):
        campaign, sent = summary["campaign"], summary["sent"]
        rows.append(
            {
                "campaign": campaign,
                "recipients": campaign.total_count,
                "sent": sent,
                "sent_rate": _rate(sent, campaign.total_count),
                "failed": campaign.failed_count,
                "failed_rate": _rate(campaign.failed_count, campaign.total_count),
                "delivered": summary["delivered"],
                "delivered_rate": _rate(summary["delivered"], sent),
                "opened": summary["opened"],
                "open_rate": _rate(summary["opened"], sent),
                "clicked": summary["clicked"],
                "click_rate": _rate(summary["clicked"], sent),
            }
        )
    return rows
