"""The admin dashboard's audience figures: who is on the list and who signed up when.

Every read here stays bounded at a million contacts. Counting contacts by status is a
full scan of the table however it is indexed (PostgreSQL has no count the index keeps),
so above EXACT_COUNT_LIMIT contacts the figures come from PostgreSQL's planner
statistics (pg_statistic, refreshed by autovacuum's ANALYZE) instead: a few EXPLAINs,
well under a millisecond each, within a percent or so of the truth on a list that size
(bench/dashboard.py measures both the time and the error). The planner assumes columns
are independent, which a list's status and phone are not (a shop that collected phones
on one form), so "reachable by phone" is the share counted in a block sample of about
PHONE_SAMPLE_ROWS rows (TABLESAMPLE SYSTEM) times the subscribed estimate. The page says
"about" when the figures are estimates.

The statistics see a rare status (bounced, complained: a few in a thousand) only a few
times in their sample, so its estimate can be off by half; a status estimated at up to
RARE_STATUS_LIMIT contacts is counted exactly instead, a count capped at
RARE_STATUS_LIMIT + 1 rows through the (status, id) index: a few milliseconds at most.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta

from django.core.cache import cache
from django.db import connection
from django.db.models import Count, Q, QuerySet
from django.db.models.functions import TruncDate
from django.utils import timezone

from audience.models import Contact, SignupForm

# Up to this many contacts the dashboard counts exactly (one index-only GROUP BY, a few
# tens of milliseconds at 100,000); above it, PostgreSQL's planner estimates.
EXACT_COUNT_LIMIT = 100_000
# A status estimated at up to this many contacts is counted exactly (bounded, indexed).
RARE_STATUS_LIMIT = 20_000
# Rows the phone share is counted on above the limit: a few milliseconds, ±1% or so.
PHONE_SAMPLE_ROWS = 20_000
# The signups chart: today's figures are counted again after a minute, the days before
# once a day (signups_per_day).
SIGNUPS_CACHE_SECONDS = 60
PAST_CACHE_SECONDS = 6 * 3600
SIGNUP_WINDOWS = (30, 90)


@dataclass(frozen=True)
class AudienceCounts:
    by_status: dict[str, int]  # every Contact.Status value, zero where none
    total: int
    reachable_by_email: int  # subscribed (every contact has an address)
    reachable_by_phone: int  # subscribed with a phone number
    estimated: bool  # True when the figures are PostgreSQL's planner estimates
    # The statuses counted exactly even so (rare ones, on a big list); all when not estimated.
    exact_statuses: frozenset[str] = frozenset(Contact.Status.values)


def audience_counts() -> AudienceCounts:
    if connection.vendor == "postgresql":
        # The planner's row count for the whole table (reltuples scaled to the table's
        # current size, so right even before the first ANALYZE) picks the path: a
        # millisecond, where even a bounded count read 100,000 index entries (12 ms).
        total = _planner_rows(Contact.objects.all())
        if total > EXACT_COUNT_LIMIT:
            return _estimated_counts(total=total)
    return _exact_counts()


def _exact_counts() -> AudienceCounts:
    rows = (
        Contact.objects.order_by()
        .values("status")
        .annotate(n=Count("pk"), with_phone=Count("pk", filter=~Q(phone="")))
    )
    by_status = dict.fromkeys(Contact.Status.values, 0)
    with_phone = 0
    for row in rows:
        by_status[row["status"]] = row["n"]
        if row["status"] == Contact.Status.SUBSCRIBED:
            with_phone = row["with_phone"]
    return AudienceCounts(
        by_status=by_status,
        total=sum(by_status.values()),
        reachable_by_email=by_status[Contact.Status.SUBSCRIBED],
        reachable_by_phone=with_phone,
        estimated=False,
    )


def _planner_rows(queryset: QuerySet) -> int:
    """PostgreSQL's estimate of the rows a queryset returns, without running it."""
    plan = json.loads(queryset.order_by().explain(format="json"))
    return int(plan[0]["Plan"]["Plan Rows"])


def _estimated_counts(*, total: int | None = None) -> AudienceCounts:
    contacts = Contact.objects.all()
    by_status = {
        status: _planner_rows(contacts.filter(status=status)) for status in Contact.Status.values
    }
    # The planner never estimates fewer than one row; a status the statistics did not
    # see in their sample is shown as none rather than as "about 1".
    by_status = {status: (n if n > 1 else 0) for status, n in by_status.items()}
    exact = set()
    for status, n in by_status.items():
        if n <= RARE_STATUS_LIMIT:
            counted = contacts.filter(status=status).order_by()[: RARE_STATUS_LIMIT + 1].count()
            if counted <= RARE_STATUS_LIMIT:  # else the estimate was far off: keep it
                by_status[status] = counted
                exact.add(status)
    if total is None:
        total = _planner_rows(contacts)
    subscribed = by_status[Contact.Status.SUBSCRIBED]
    return AudienceCounts(
        by_status=by_status,
        total=total,
        reachable_by_email=subscribed,
        reachable_by_phone=round(subscribed * _sampled_phone_share(total)),
        estimated=True,
        exact_statuses=frozenset(exact),
    )


def _sampled_phone_share(total: int) -> float:
    """The share of subscribed contacts with a phone, counted in a block sample."""
    percent = min(100.0, 100.0 * PHONE_SAMPLE_ROWS / max(total, 1))
    table = connection.ops.quote_name(Contact._meta.db_table)
    with connection.cursor() as cursor:
        # REPEATABLE: the same pages each view, so the figure does not jitter on reload.
        cursor.execute(
            "SELECT count(*) FILTER (WHERE phone <> ''), count(*) "  # noqa: S608 (our table name)
            f"FROM {table} TABLESAMPLE SYSTEM (%s) REPEATABLE (0) WHERE status = %s",
            [percent, Contact.Status.SUBSCRIBED],
        )
        with_phone, sampled = cursor.fetchone()
    return with_phone / sampled if sampled else 0.0


def signups_per_day(*, days: int = max(SIGNUP_WINDOWS)) -> dict:
    """New contacts per day over the last `days` days (today included), by source and form.

    Returns {"days": [iso dates], "by_source": {label: [count per day]}, "by_form":
    {form name: [count per day]}}, with a zero for every day without signups, ready for
    the chart. Days are the site's TIME_ZONE days.

    The days before today are aggregated once a day (PAST_CACHE_SECONDS at most: they
    change only by an erasure, or a buffered signup drained just after midnight; imports
    are dated the day they run), today's every SIGNUPS_CACHE_SECONDS; so a page view reads
    at most today's new contacts, not the window's (a million imported last week cost
    0.8-1.1 s to aggregate, measured; bench/dashboard.py).
    """
    today = timezone.localdate()
    key = f"dashboard:signups:{days}:{today.isoformat()}"
    data = cache.get(key)
    if data is None:
        first = today - timedelta(days=days - 1)
        past_key = f"dashboard:signups-before:{first.isoformat()}:{today.isoformat()}"
        past = cache.get(past_key)
        if past is None:
            past = _signup_counts(first=first, until=today)
            cache.set(past_key, past, PAST_CACHE_SECONDS)
        data = _signups_chart(
            first=first, days=days, counts=past + _signup_counts(first=today, until=None)
        )
        cache.set(key, data, SIGNUPS_CACHE_SECONDS)
    return data


def _local_midnight(day: date) -> datetime:
    return timezone.make_aware(datetime.combine(day, time.min))


def _signup_counts(*, first: date, until: date | None) -> list[tuple[date, str, int | None, int]]:
    """(day, source, form id, new contacts) from the first day to before `until`."""
    contacts = Contact.objects.filter(created_at__gte=_local_midnight(first))
    if until is not None:
        contacts = contacts.filter(created_at__lt=_local_midnight(until))
    rows = (
        contacts.annotate(day=TruncDate("created_at"))
        .order_by()
        .values_list("day", "source", "signup_form_id")
        .annotate(n=Count("pk"))
    )
    return [tuple(row) for row in rows]


def _signups_chart(
    *, first: date, days: int, counts: list[tuple[date, str, int | None, int]]
) -> dict:
    day_list = [first + timedelta(days=i) for i in range(days)]
    index = {day: i for i, day in enumerate(day_list)}
    by_source: dict[str, list[int]] = {}
    by_form_id: dict[int, list[int]] = {}
    for day, source, form_id, n in counts:
        position = index.get(day)
        if position is None:  # created "in the future" by a skewed clock: not on the chart
            continue
        by_source.setdefault(source, [0] * days)[position] += n
        if form_id is not None:
            by_form_id.setdefault(form_id, [0] * days)[position] += n
    source_labels = dict(Contact.Source.choices)
    names: dict[int, str] = {}
    for form_id, name in (
        SignupForm.objects.filter(pk__in=by_form_id)
        .order_by("name", "pk")
        .values_list("pk", "name")
    ):
        # Two forms may share a name; each keeps a line of its own on the chart.
        names[form_id] = name if name not in names.values() else f"{name} (#{form_id})"
    return {
        "days": [day.isoformat() for day in day_list],
        "by_source": {
            str(source_labels.get(source, source)): counts
            for source, counts in sorted(by_source.items())
        },
        "by_form": {
            # A form deleted since keeps its signups under its old id.
            names.get(form_id, f"Form #{form_id}"): by_form_id[form_id]
            for form_id in [*names, *(f for f in by_form_id if f not in names)]
            if form_id in by_form_id
        },
    }
