"""WooCommerce: its webhook signature, and its customers as sync Records.

WooCommerce signs each delivery with HMAC-SHA256 over the raw body, base64, in
X-WC-Webhook-Signature, keyed with the webhook's Secret; X-WC-Webhook-Delivery-ID names
the delivery. When a webhook is saved it first posts an unsigned ping
(`webhook_id=<n>`, form-encoded) and keeps the webhook only if that is answered 2xx.

WooCommerce records no marketing consent on a customer: a synced customer is kept as
pending and not mailed, unless the store is set to ask them to confirm
(Store.confirm_unconsented): then a double opt-in email decides.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Mapping

from audience.consent import Ask
from audience.integrations.customers import store_customer_sync
from audience.integrations.records import parse_time, phone_or_none, text_or_none, valid_email
from audience.models import Store
from audience.services import Evidence
from audience.sync import Record

CUSTOMER_TOPICS = ("customer.created", "customer.updated")

_PING = re.compile(rb"webhook_id=\d{1,20}")


def signature_valid(store: Store, headers: Mapping[str, str], body: bytes) -> bool:
    given = headers.get("X-WC-Webhook-Signature", "").strip().encode("ascii", "replace")
    digest = hmac.new(store.secret.encode(), body, hashlib.sha256).digest()
    return hmac.compare_digest(given, base64.b64encode(digest))


def is_ping(headers: Mapping[str, str], body: bytes) -> bool:
    """The unsigned post WooCommerce sends when the webhook is saved: it carries no
    customer, so answering it changes and stores nothing."""
    return "X-WC-Webhook-Signature" not in headers and _PING.fullmatch(body.strip()) is not None


def delivery(headers: Mapping[str, str]) -> tuple[str, str]:
    return (
        headers.get("X-WC-Webhook-Topic", "").strip(),
        headers.get("X-WC-Webhook-Delivery-ID", ""),
    )


def handle(*, store: Store, topic: str, payload: dict, evidence: Evidence, detail: dict) -> str:
    if topic not in CUSTOMER_TOPICS:
        return "ignored: not a topic Stillhere takes"
    billing = payload.get("billing") if isinstance(payload.get("billing"), dict) else {}
    email = valid_email(payload.get("email")) or valid_email(billing.get("email"))
    if email is None:
        return "skipped: no valid email address"
    region = text_or_none(billing.get("country"), 2)
    record = Record(
        email=email,
        ask=Ask.CONFIRM_FIRST if store.confirm_unconsented else Ask.STORE,
        first_name=text_or_none(payload.get("first_name") or billing.get("first_name"), 100),
        last_name=text_or_none(payload.get("last_name") or billing.get("last_name"), 100),
        phone=phone_or_none(billing.get("phone"), region),
        consent_text="WooCommerce customer (no marketing consent recorded)",
        detail=detail,
    )
    updated_at = parse_time(payload.get("date_modified_gmt")) or parse_time(
        payload.get("date_created_gmt")
    )
    return store_customer_sync(
        store=store,
        remote_id=str(payload.get("id") or email)[:64],
        updated_at=updated_at,
        record=record,
        evidence=evidence,
    )
