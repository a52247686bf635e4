"""Signed links for a contact: confirm, unsubscribe, preferences.

Links carry a signature, never a bare id, so nobody can walk the id space to
unsubscribe or read other people's details. Confirm links expire; unsubscribe links
in old emails must keep working, so they do not.
"""

from __future__ import annotations

from django.conf import settings
from django.core import signing
from django.urls import reverse

from audience.models import Contact
from audience.services import email_hash

_SALTS = {
    "confirm": "audience.confirm",
    "unsubscribe": "audience.unsubscribe",
    "preferences": "audience.preferences",
}


def make_token(purpose: str, contact: Contact) -> str:
    # A fingerprint of the address is part of the signed value, so a link stops working
    # if the row behind the id ever holds another address. A hash, not the address
    # itself: the payload of a signed value is readable by anyone who has the link.
    value = [contact.pk, _fingerprint(contact)]
    if purpose == "confirm":
        # Bound to the double opt-in request it was issued for: once that request is
        # closed (confirmed, unsubscribed, bounced) or replaced, the link confirms nothing.
        value.append(_request_stamp(contact))
    return signing.dumps(value, salt=_SALTS[purpose])


def _fingerprint(contact: Contact) -> str:
    return email_hash(contact.email)[:10]


def _request_stamp(contact: Contact) -> int | None:
    opened = contact.optin_requested_at
    return None if opened is None else round(opened.timestamp() * 1_000_000)


def read_token(purpose: str, token: str) -> Contact | None:
    """The contact a link is for, or None if the link is forged, expired, for another
    address or (a confirm link) for a request that is no longer the contact's open one."""
    max_age = settings.CONFIRMATION_MAX_AGE_DAYS * 86400 if purpose == "confirm" else None
    try:
        value = signing.loads(token, salt=_SALTS[purpose], max_age=max_age)
        pk, prefix, *rest = value
    except (signing.BadSignature, ValueError, TypeError):
        return None
    if purpose == "confirm" and (len(rest) != 1 or rest[0] is None):
        return None  # a link from before requests were bound, or for no request at all
    contact = Contact.objects.filter(pk=pk).first()
    if contact is None or _fingerprint(contact) != prefix:
        return None
    if purpose == "confirm" and _request_stamp(contact) != rest[0]:
        return None
    return contact


def contact_url(purpose: str, contact: Contact) -> str:
    names = {
        "confirm": "audience:confirm",
        "unsubscribe": "audience:unsubscribe",
        "preferences": "audience:preferences",
    }
    path = reverse(names[purpose], args=[make_token(purpose, contact)])
    return settings.SITE_URL + path
