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
    return signing.dumps([contact.pk, _fingerprint(contact)], salt=_SALTS[purpose])


def _fingerprint(contact: Contact) -> str:
    return email_hash(contact.email)[:10]


def read_token(purpose: str, token: str) -> Contact | None:
    max_age = settings.CONFIRMATION_MAX_AGE_DAYS * 86400 if purpose == "confirm" else None
    try:
        pk, prefix = signing.loads(token, salt=_SALTS[purpose], max_age=max_age)
    except (signing.BadSignature, ValueError, TypeError):
        return None
    contact = Contact.objects.filter(pk=pk).first()
    if contact is None or _fingerprint(contact) != prefix:
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
