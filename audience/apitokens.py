"""API tokens: made and revoked in the admin, checked on every API call (config.api_auth).

A token is a random string shown once; the database keeps its SHA-256, so a token is
found by its hash through the unique index and a copy of the database opens no door.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from django.contrib.auth.base_user import AbstractBaseUser
from django.db.models import Q
from django.utils import timezone

from audience.models import ApiToken

# last_used_at is for the owner ("is this client still around?"): to the minute is
# enough, and a write per call would double what a busy client costs the database.
LAST_USED_RESOLUTION = timedelta(minutes=1)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def api_token_create(
    *,
    name: str,
    can_read_contacts: bool = True,
    can_write_contacts: bool = False,
    can_send_campaigns: bool = False,
    created_by: AbstractBaseUser | None = None,
) -> tuple[ApiToken, str]:
    """A new token and its text; the text is not stored and cannot be had again."""
    token = secrets.token_urlsafe(32)
    api_token = ApiToken.objects.create(
        name=name, key_hash=token_hash(token), prefix=token[:8],
        can_read_contacts=can_read_contacts, can_write_contacts=can_write_contacts,
        can_send_campaigns=can_send_campaigns, created_by=created_by,
    )  # fmt: skip
    return api_token, token


def api_tokens_revoke(*, tokens) -> int:
    """Revoke the tokens not revoked yet; their next call gets a 401."""
    return tokens.filter(revoked_at__isnull=True).update(revoked_at=timezone.now())


def api_token_find(token: str) -> ApiToken | None:
    """The token with this text, revoked or not; None if there is none."""
    if not token or len(token) > 200:
        return None
    return ApiToken.objects.filter(key_hash=token_hash(token)).first()


def api_token_touch(*, api_token: ApiToken) -> None:
    """Note that the token was used now, at most once per LAST_USED_RESOLUTION: the
    loaded row says whether it is due, and a conditional UPDATE keeps two processes
    from both writing it."""
    now = timezone.now()
    since = now - LAST_USED_RESOLUTION
    if api_token.last_used_at is not None and api_token.last_used_at > since:
        return
    ApiToken.objects.filter(
        Q(last_used_at__isnull=True) | Q(last_used_at__lte=since), pk=api_token.pk
    ).update(last_used_at=now)
    api_token.last_used_at = now
