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

_SALTS = {
    "confirm": "audience.confirm",
    "unsubscribe": "audience.unsubscribe",
    "preferences": "audience.preferences",
}


def make_token(purpose: str, contact: Contact) -> str:
    # The address is part of the signed value: after an erasure and a new signup under
    # a reused id (impossible with sequences, but cheap to rule out) old links fail.
    return signing.dumps([contact.pk, contact.email[:3]], salt=_SALTS[purpose], compress=True)


def read_token(purpose: str, token: str) -> Contact | None:
    max_age = settings.CONFIRMATION_MAX_AGE_DAYS * 86400 if purpose == "confirm" else None
    try:
        pk, prefix = signing.loads(token, salt=_SALTS[purpose], max_age=max_age)
    except (signing.BadSignature, ValueError, TypeError):
        return None
    contact = Contact.objects.filter(pk=pk).first()
    if contact is None or contact.email[:3] != prefix:
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
