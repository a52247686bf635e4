"""The campaign report's running tallies: CampaignReport counters and CampaignTimeline
buckets, moved with F() as the sender marks messages sent and as provider events arrive,
so the report reads a few rows however many recipients a campaign had (bench/report.py).

Callers move a tally only for a change that really happened (rows an UPDATE actually
changed), which is what makes a re-posted webhook count once.
"""

from __future__ import annotations

import datetime as dt

from django.db import IntegrityError, transaction
from django.db.models import F

from campaigns.models import CampaignReport, CampaignTimeline

Kind = CampaignTimeline.Kind

# Sending and delivery happen in minutes; opens and clicks trickle in over days.
_BUCKET = {Kind.SENT: "minute", Kind.DELIVERED: "minute", Kind.OPENED: "hour", Kind.CLICKED: "hour"}


def bucket_start(kind: str, when: dt.datetime) -> dt.datetime:
    when = when.astimezone(dt.UTC).replace(second=0, microsecond=0)
    return when.replace(minute=0) if _BUCKET[kind] == "hour" else when


def report_add(*, campaign_id: int, **deltas: int) -> None:
    """Add to the campaign's counters (delivered=1, soft_bounced=-1, …)."""
    updates = {name: F(name) + delta for name, delta in deltas.items() if delta}
    if not updates:
        return
    if CampaignReport.objects.filter(campaign_id=campaign_id).update(**updates):
        return
    # The campaign's first event: make its row (a racing event may make it first).
    try:
        with transaction.atomic():
            CampaignReport.objects.create(campaign_id=campaign_id)
    except IntegrityError:
        pass
    CampaignReport.objects.filter(campaign_id=campaign_id).update(**updates)


def timeline_add(*, campaign_id: int, kind: str, when: dt.datetime, count: int = 1) -> None:
    if count <= 0:
        return
    start = bucket_start(kind, when)
    bucket = CampaignTimeline.objects.filter(campaign_id=campaign_id, kind=kind, start=start)
    if bucket.update(count=F("count") + count):
        return
    try:
        with transaction.atomic():
            CampaignTimeline.objects.create(
                campaign_id=campaign_id, kind=kind, start=start, count=count
            )
            return
    except IntegrityError:
        pass  # another worker made the bucket between our UPDATE and INSERT
    bucket.update(count=F("count") + count)
