"""Reads that mean something: searches, exports, segments."""

from __future__ import annotations

import re
import time

from django.core.exceptions import ValidationError
from django.db.models import Q, QuerySet

from audience.models import Contact, SignupForm
from audience.services import normalize_phone

_PHONEISH = re.compile(r"^\+?[\d\s().-]{4,}$")


def contacts_search(queryset: QuerySet[Contact], term: str) -> QuerySet[Contact]:
    """Find contacts by address, phone or name, using prefix lookups the indexes serve."""
    term = term.strip()
    if "@" in term:
        return queryset.filter(email__startswith=term.lower())
    if _PHONEISH.match(term):
        try:
            prefix = normalize_phone(term)
        except ValidationError:
            # A partial number: match the digits typed against the start of the E.164 value.
            prefix = "+" + re.sub(r"\D", "", term)
        return queryset.filter(phone__startswith=prefix)
    words = term.split()
    if len(words) >= 2:
        return queryset.filter(
            first_name__istartswith=words[0], last_name__istartswith=" ".join(words[1:])
        )
    return queryset.filter(
        Q(email__startswith=term.lower())
        | Q(first_name__istartswith=term)
        | Q(last_name__istartswith=term)
    )


def contact_personal_data(contact: Contact) -> dict:
    """Everything we hold about one person (GDPR Art. 15 / 20)."""
    return {
        "email": contact.email,
        "first_name": contact.first_name,
        "last_name": contact.last_name,
        "phone": contact.phone,
        "status": contact.status,
        "source": contact.source,
        "signup_form": contact.signup_form.name if contact.signup_form else None,
        "tags": sorted(contact.tags.values_list("name", flat=True)),
        "attributes": contact.attributes,
        "created_at": contact.created_at,
        "confirmed_at": contact.confirmed_at,
        "unsubscribed_at": contact.unsubscribed_at,
        "sms_consent": contact.sms_consent,
        "sms_consent_at": contact.sms_consent_at,
        "sms_opt_in_level": contact.sms_opt_in_level,
        # Which connected stores know the person, and as which of their customers.
        "store_customers": [
            {"store": store, "customer_id": remote_id}
            for store, remote_id in contact.store_customers.order_by("id").values_list(
                "store__name", "remote_id"
            )
        ],
        "consent_events": [
            {
                "at": event.created_at,
                "kind": event.kind,
                "method": event.method,
                "status_before": event.status_before,
                "status_after": event.status_after,
                "ip": event.ip,
                "user_agent": event.user_agent,
                "signup_form": event.signup_form.name if event.signup_form else None,
                "consent_text": event.consent_text,
                "detail": event.detail,
            }
            for event in contact.consent_events.select_related("signup_form").order_by(
                "created_at", "id"
            )
        ],
    }


# Every public signup reads its form and the form's tags; a few seconds' cache per
# process saves two queries a signup. Edits clear it at once in the process that made
# them (audience.apps connects the signals) and within FORM_CACHE_SECONDS elsewhere.
FORM_CACHE_SECONDS = 5.0
_active_forms: dict[str, tuple[float, SignupForm]] = {}


def signup_form_active(key: str) -> SignupForm | None:
    now = time.monotonic()
    hit = _active_forms.get(key)
    if hit is not None and hit[0] > now:
        return hit[1]
    form = SignupForm.objects.prefetch_related("tags").filter(public_key=key, enabled=True).first()
    if form is None:
        _active_forms.pop(key, None)
        return None
    _active_forms[key] = (now + FORM_CACHE_SECONDS, form)
    return form


def signup_form_cache_clear(**kwargs) -> None:
    _active_forms.clear()
