"""Reads for the campaign report: its figures, its timeline, clicks per link, the
per-recipient CSV, and the short summaries the dashboard lists.

Every figure comes from rows kept as events arrive (Campaign's sender counters,
CampaignReport, CampaignTimeline, CampaignLink), so a report is a handful of indexed
reads at a million recipients, never a COUNT over Delivery (bench/report.py times it).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from django.db.models import Max

from audience.exporting import neutralise
from campaigns.models import (
    Campaign,
    CampaignLink,
    CampaignReport,
    CampaignTimeline,
    Delivery,
    DeliveryChunk,
)

# Buckets the chart reads at most per line: a day of minutes for sending, and about
# three months of hours for opens and clicks.
TIMELINE_LIMIT = 1440
TIMELINE_HOURS_LIMIT = 2200
LINKS_LIMIT = 50


@dataclass(frozen=True)
class Figure:
    key: str
    label: str
    count: int
    rate: float | None  # share of sent, 0..1; None when nothing was sent
    help: str = ""

    @property
    def percent(self) -> str:
        return _percent(self.rate)


@dataclass(frozen=True)
class Report:
    campaign: Campaign
    sent: int
    figures: list[Figure]

    def figure(self, key: str) -> Figure:
        return next(f for f in self.figures if f.key == key)


def _counters(campaign: Campaign) -> CampaignReport:
    return CampaignReport.objects.filter(campaign=campaign).first() or CampaignReport(
        campaign=campaign
    )


def _percent(rate: float | None) -> str:
    return "\u2013" if rate is None else f"{100 * rate:.1f}%"  # an en dash


def _rate(count: int, sent: int) -> float | None:
    return count / sent if sent else None


def campaign_report(campaign: Campaign) -> Report:
    """The report's figures, each a count and its share of the messages sent."""
    c = _counters(campaign)
    sent = campaign.sent_count
    bounced = c.hard_bounced + c.soft_bounced
    failed = campaign.failed_count + c.rejected
    rows = [
        ("sent", "Sent", sent, "Handed to the provider."),
        ("delivered", "Delivered", c.delivered, "The receiving server accepted it."),
        ("deferred", "Deferred", c.deferred, "Delayed at least once; the provider retries."),
        ("bounced", "Bounced", bounced, "Hard and soft bounces together."),
        ("hard_bounced", "Hard bounces", c.hard_bounced, "The address is bad: suppressed."),
        ("soft_bounced", "Soft bounces", c.soft_bounced, "Temporary (mailbox full, …)."),
        ("complained", "Complained", c.complained, "Marked as spam: suppressed."),
        ("unsubscribed", "Unsubscribed", c.unsubscribed, "Through the provider."),
        ("opened", "Opened", c.opened, "Where the provider tracks opens."),
        ("clicked", "Clicked", c.clicked, "Where the provider tracks clicks."),
        ("failed", "Failed", failed, "Refused by the provider, before or after sending."),
    ]
    figures = [Figure(key, label, n, _rate(n, sent), why) for key, label, n, why in rows]
    return Report(campaign=campaign, sent=sent, figures=figures)


def campaign_timeline(campaign: Campaign) -> dict:
    """Chart data: sent and delivered per minute, opened and clicked per hour, as
    {kind: [[ISO start, count], …]} in time order, each bounded."""
    lines: dict[str, list] = {}
    for kind, limit in (
        (CampaignTimeline.Kind.SENT, TIMELINE_LIMIT),
        (CampaignTimeline.Kind.DELIVERED, TIMELINE_LIMIT),
        (CampaignTimeline.Kind.OPENED, TIMELINE_HOURS_LIMIT),
        (CampaignTimeline.Kind.CLICKED, TIMELINE_HOURS_LIMIT),
    ):
        buckets = CampaignTimeline.objects.filter(campaign=campaign, kind=kind).order_by("start")
        lines[kind] = [
            [start.isoformat(), count]
            for start, count in buckets.values_list("start", "count")[:limit]
        ]
    return lines


def campaign_links(campaign: Campaign, limit: int = LINKS_LIMIT) -> list[dict]:
    """The most clicked links (recipients who clicked each, once per recipient)."""
    sent = campaign.sent_count
    links = CampaignLink.objects.filter(campaign=campaign).order_by("-clickers", "url")
    return [
        {"url": url, "clickers": n, "rate": _rate(n, sent), "percent": _percent(_rate(n, sent))}
        for url, n in links.values_list("url", "clickers")[:limit]
    ]


def campaign_summaries(campaigns: Iterable[Campaign]) -> list[dict]:
    """For a list of campaigns (the dashboard's last few): sent and the delivered, open,
    click and bounce rates of each, in the order given; two queries in all."""
    campaigns = list(campaigns)
    counters = {r.campaign_id: r for r in CampaignReport.objects.filter(campaign__in=campaigns)}
    summaries = []
    for campaign in campaigns:
        c = counters.get(campaign.pk) or CampaignReport(campaign=campaign)
        sent = campaign.sent_count
        summaries.append(
            {
                "campaign": campaign,
                "sent": sent,
                "delivered": c.delivered,
                "delivered_rate": _rate(c.delivered, sent),
                "opened": c.opened,
                "clicked": c.clicked,
                "open_rate": _rate(c.opened, sent),
                "click_rate": _rate(c.clicked, sent),
                "bounce_rate": _rate(c.hard_bounced + c.soft_bounced, sent),
            }
        )
    return summaries


# --- The per-recipient CSV --------------------------------------------------------------

CSV_COLUMNS = (
    "email", "first_name", "last_name", "status", "sent_at", "delivered_at", "deferred_at",
    "opened_at", "clicked_at", "bounced", "bounced_at", "complained_at", "unsubscribed_at",
    "rejected_at", "error", "message_id",
)  # fmt: skip
_CSV_FIELDS = (
    "contact__email", "contact__first_name", "contact__last_name", "status", "sent_at",
    "delivered_at", "deferred_at", "opened_at", "clicked_at", "hard_bounced_at",
    "soft_bounced_at", "complained_at", "unsubscribed_at", "rejected_at", "error",
    "message_id",
)  # fmt: skip
# Chunks read per query: ~5,000 rows at the default chunk size, through the
# (campaign, chunk) index, so each query is bounded however big the campaign.
CSV_CHUNKS_PER_QUERY = 10


def _stamp(value: dt.datetime | None) -> str:
    return value.astimezone(dt.UTC).isoformat(timespec="seconds") if value else ""


def _csv_row(values: tuple) -> list[str]:
    (email, first, last, status, sent, delivered, deferred, opened, clicked, hard, soft,
     complained, unsubscribed, rejected, error, message_id) = values  # fmt: skip
    bounced = "hard" if hard else "soft" if soft else ""
    cells = [
        email, first, last, status, _stamp(sent), _stamp(delivered), _stamp(deferred),
        _stamp(opened), _stamp(clicked), bounced, _stamp(hard or soft), _stamp(complained),
        _stamp(unsubscribed), _stamp(rejected), error, message_id,
    ]  # fmt: skip
    return [neutralise(cell or "") for cell in cells]


def delivery_rows(campaign: Campaign) -> Iterator[list[list[str]]]:
    """Batches of CSV rows, recipient by recipient in sending order (chunk, id)."""
    last = DeliveryChunk.objects.filter(campaign=campaign).aggregate(n=Max("number"))["n"]
    if last is None:
        return
    base = Delivery.objects.filter(campaign=campaign).order_by("chunk", "pk")
    for start in range(0, last + 1, CSV_CHUNKS_PER_QUERY):
        batch = base.filter(chunk__gte=start, chunk__lt=start + CSV_CHUNKS_PER_QUERY)
        rows = [_csv_row(values) for values in batch.values_list(*_CSV_FIELDS)]
        if rows:
            yield rows


def stream_delivery_csv(campaign: Campaign) -> Iterator[bytes]:
    """The campaign's recipients as CSV, streamed batch by batch (constant memory)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    buffer.write("\ufeff")  # so Excel reads UTF-8
    writer.writerow(CSV_COLUMNS)
    for batch in delivery_rows(campaign):
        writer.writerows(batch)
        yield buffer.getvalue().encode("utf-8")
        buffer.seek(0)
        buffer.truncate()
    if buffer.tell():
        yield buffer.getvalue().encode("utf-8")
