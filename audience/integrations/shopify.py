"""Shopify: its webhook signature, and its customer payloads as sync Records.

Shopify signs each webhook with HMAC-SHA256 over the raw body, base64, in
X-Shopify-Hmac-Sha256, keyed with the app's client secret (or, for webhooks made under
Settings > Notifications, the signing key shown there). X-Shopify-Webhook-Id is the
same on every retry of one delivery. A customer's marketing consent is
`email_marketing_consent` ({state, opt_in_level, consent_updated_at}); API versions
before 2022-04 sent `accepts_marketing` instead.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping

from audience.consent import Ask
from audience.integrations import privacy
from audience.integrations.customers import store_customer_sync
from audience.integrations.records import (
    customer_tags,
    parse_time,
    phone_or_none,
    sms_state,
    text_or_none,
    valid_email,
)
from audience.models import Store
from audience.services import Evidence
from audience.sync import Record

CUSTOMER_TOPICS = ("customers/create", "customers/update")
CONSENT_TOPIC = "customers_email_marketing_consent/update"

# Shopify's "pending" is Shopify's own double opt-in in progress (it mails the
# customer): ours would be a second one. The contact waits, pending, for Shopify's
# "subscribed" when the customer confirms.
_ASKS = {"subscribed": Ask.SUBSCRIBE, "unsubscribed": Ask.UNSUBSCRIBED}


def signature_valid(store: Store, headers: Mapping[str, str], body: bytes) -> bool:
    given = headers.get("X-Shopify-Hmac-Sha256", "").strip().encode("ascii", "replace")
    digest = hmac.new(store.secret.encode(), body, hashlib.sha256).digest()
    if not hmac.compare_digest(given, base64.b64encode(digest)):
        return False
    # One app secret signs for every shop that installed the app: a post signed right
    # but naming another shop is not this store's.
    domain = headers.get("X-Shopify-Shop-Domain", "").strip().lower()
    return not store.domain or domain == store.domain.strip().lower()


def delivery(headers: Mapping[str, str]) -> tuple[str, str]:
    return headers.get("X-Shopify-Topic", "").strip(), headers.get("X-Shopify-Webhook-Id", "")


def handle(*, store: Store, topic: str, payload: dict, evidence: Evidence, detail: dict) -> str:
    if topic in CUSTOMER_TOPICS:
        return _customer(store, payload, evidence, detail)
    if topic == CONSENT_TOPIC:
        consented = {
            "id": payload.get("customer_id"),
            "email": payload.get("email_address"),
            "email_marketing_consent": payload.get("email_marketing_consent"),
        }
        return _customer(store, consented, evidence, detail)
    customer = payload.get("customer") if isinstance(payload.get("customer"), dict) else {}
    remote_id = str(customer.get("id") or "")[:64]
    email = valid_email(customer.get("email")) or ""
    if topic == "customers/redact":
        return privacy.store_customer_redact(store=store, remote_id=remote_id, email=email)
    if topic == "customers/data_request":
        return privacy.store_data_request(store=store, remote_id=remote_id, email=email)
    if topic == "shop/redact":
        return privacy.store_redact(store=store)
    return "ignored: not a topic Stillhere takes"


def _customer(store: Store, payload: dict, evidence: Evidence, detail: dict) -> str:
    email = valid_email(payload.get("email"))
    if email is None:
        return "skipped: no valid email address"  # Shopify allows phone-only customers
    consent = payload.get("email_marketing_consent")
    updated_at = parse_time(payload.get("updated_at"))
    if isinstance(consent, dict):
        state = str(consent.get("state") or "")
        level = str(consent.get("opt_in_level") or "")[:40]
        consent_at = parse_time(consent.get("consent_updated_at"))
    elif isinstance(payload.get("accepts_marketing"), bool):
        state = "subscribed" if payload["accepts_marketing"] else "not_subscribed"
        level = ""
        consent_at = parse_time(payload.get("accepts_marketing_updated_at"))
    else:
        state, level, consent_at = "", "", None
    ask = _ASKS.get(state, Ask.STORE)
    if ask == Ask.STORE and state != "pending" and store.confirm_unconsented:
        ask = Ask.CONFIRM_FIRST
    address = (
        payload.get("default_address") if isinstance(payload.get("default_address"), dict) else {}
    )
    region = text_or_none(address.get("country_code"), 2)
    record = Record(
        email=email,
        ask=ask,
        # Undated consent is dated by the customer's last change at the shop, never
        # "now": a late retry must not outrank an unsubscribe made here since.
        consent_at=consent_at or updated_at,
        first_name=text_or_none(payload.get("first_name"), 100),
        last_name=text_or_none(payload.get("last_name"), 100),
        phone=phone_or_none(payload.get("phone") or address.get("phone"), region),
        tags=customer_tags(payload.get("tags")),
        sms=sms_state(payload.get("sms_marketing_consent")),
        consent_text=f"Shopify email marketing consent: {state or 'none'}"
        + (f" ({level})" if level else ""),
        detail={**detail, "state": state, "opt_in_level": level},
    )
    return store_customer_sync(
        store=store,
        remote_id=str(payload.get("id") or email)[:64],
        updated_at=updated_at,
        record=record,
        evidence=evidence,
    )
