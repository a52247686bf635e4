"""The segment rules that read campaigns' own tables, plugged into audience.segments.

The audience owns the rule vocabulary but sits below campaigns, so it cannot import
Delivery or Campaign; campaigns registers these two rules from CampaignsConfig.ready.
Both are ``EXISTS`` subqueries correlated on the contact, so a segment stays ONE query.
"""

from __future__ import annotations

import datetime as dt

from django.db.models import Exists, OuterRef, Q

from audience.segments import (
    PluggedRule,
    RuleField,
    check_days,
    check_id,
    rule_error,
    rule_register,
)
from campaigns.models import Campaign, Delivery


def _engaged_check(index: int, op: str, value) -> None:
    check_days(index, value)


def _engaged_condition(op: str, value, now: dt.datetime) -> Q:
    since = now - dt.timedelta(days=int(value))
    deliveries = Delivery.objects.filter(contact_id=OuterRef("pk")).filter(
        Q(opened_at__gte=since) | Q(clicked_at__gte=since)
    )
    exists = Exists(deliveries)
    return Q(exists) if op == "within_days" else ~Q(exists)


def _campaign_check(index: int, op: str, value) -> None:
    pk = check_id(index, value, "campaign")
    if not Campaign.objects.filter(pk=pk).exists():
        raise rule_error(index, f"there is no campaign with id {pk}.")


def _campaign_condition(op: str, value, now: dt.datetime) -> Q:
    # Served by the (campaign, contact) unique index.
    exists = Exists(
        Delivery.objects.filter(
            contact_id=OuterRef("pk"), campaign_id=int(value), status=Delivery.Status.SENT
        )
    )
    return Q(exists) if op == "received" else ~Q(exists)


def _campaign_choices() -> list:
    # Bounded: the rule builder offers the latest 200 campaigns.
    return list(Campaign.objects.order_by("-created_at").values_list("pk", "name")[:200])


RULES: dict[str, PluggedRule] = {
    "engaged": PluggedRule(
        field=RuleField(
            "Engaged (opened or clicked)",
            {"within_days": "within N days", "not_within_days": "not within N days"},
            "days",
        ),
        check=_engaged_check,
        condition=_engaged_condition,
    ),
    "campaign": PluggedRule(
        field=RuleField(
            "Campaign", {"received": "received", "not_received": "did not receive"}, "campaign"
        ),
        check=_campaign_check,
        condition=_campaign_condition,
        choices=_campaign_choices,
    ),
}


def register() -> None:
    """Plug the rules into the audience's vocabulary (CampaignsConfig.ready)."""
    for key, rule in RULES.items():
        rule_register(key=key, rule=rule)
