"""Reading a store's customer fields: each one checked, none trusted to be well formed.

A field that cannot be read is left out (None: keep what is stored), never the reason a
customer is lost; only a customer without a valid email address is skipped.
"""

from __future__ import annotations

from datetime import UTC, datetime

from django.core.exceptions import ValidationError

from audience.models import SmsConsent, Tag
from audience.services import clean_text, normalize_email, normalize_phone, tag_get_or_create
from audience.sync import SmsState

MAX_TAGS = 20  # per customer: a store's tag list is not ours to mirror whole


def valid_email(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        return normalize_email(value)
    except ValidationError:
        return None


def text_or_none(value: object, max_length: int) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        return clean_text(value, max_length=max_length, field="text") or None
    except ValidationError:
        return clean_text(value[:max_length], max_length=max_length, field="text") or None


def phone_or_none(value: object, region: str | None) -> str | None:
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        return normalize_phone(value, region=region.upper() if region else None) or None
    except ValidationError:
        return None


def parse_time(value: object) -> datetime | None:
    """ISO 8601 as Shopify sends it (with an offset) or WooCommerce's *_gmt (without:
    UTC)."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def customer_tags(value: object) -> tuple[Tag, ...]:
    """Shopify's "tags": one string, comma-separated."""
    if not isinstance(value, str):
        return ()
    names = []
    for raw in value.split(","):
        name = text_or_none(raw, 100)
        if name and name.lower() not in {n.lower() for n in names}:
            names.append(name)
    return tuple(tag_get_or_create(name=name) for name in names[:MAX_TAGS])


_SMS_STATES = {choice.value for choice in SmsConsent if choice.value}


def sms_state(value: object) -> SmsState | None:
    if not isinstance(value, dict) or value.get("state") not in _SMS_STATES:
        return None
    return SmsState(
        state=value["state"],
        at=parse_time(value.get("consent_updated_at")),
        opt_in_level=str(value.get("opt_in_level") or "")[:40],
    )
