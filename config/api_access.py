"""Who may call /api/v1 and how often: bearer tokens (audience.ApiToken), a permission
per token flag, a rate per token, and errors as JSON.

Every refusal is JSON with a `detail`: no token or a bad one is 401 (with a
WWW-Authenticate header, so DRF answers 401 rather than 403), a token without the flag
an endpoint needs is 403, too many calls are 429 with Retry-After.
"""

from __future__ import annotations

import math
import time

from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.permissions import BasePermission
from rest_framework.throttling import BaseThrottle

from audience import apitokens, throttle
from audience.models import ApiToken

REALM = 'Bearer realm="stillhere"'


class ApiClient(AnonymousUser):
    """request.user for a call made with a token: authenticated as that token, with no
    Django permissions (what it may do is the token's flags, checked below)."""

    def __init__(self, api_token: ApiToken) -> None:
        self.api_token = api_token
        self.username = api_token.actor

    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def is_anonymous(self) -> bool:
        return False

    def __str__(self) -> str:
        return self.username


class BearerTokenAuthentication(BaseAuthentication):
    def authenticate(self, request):
        header = get_authorization_header(request).split()
        if not header or header[0].lower() != b"bearer":
            return None  # no credentials: the permission check answers 401
        if len(header) != 2:
            raise exceptions.AuthenticationFailed(
                "Send the token as: Authorization: Bearer <token>."
            )
        try:
            text = header[1].decode("ascii")
        except UnicodeDecodeError:
            raise exceptions.AuthenticationFailed("That token is not valid.") from None
        api_token = apitokens.api_token_find(text)
        if api_token is None:
            raise exceptions.AuthenticationFailed("That token is not valid.")
        if api_token.revoked_at is not None:
            raise exceptions.AuthenticationFailed("That token was revoked.")
        apitokens.api_token_touch(api_token=api_token)
        return ApiClient(api_token), api_token

    def authenticate_header(self, request) -> str:
        return REALM


class _TokenFlag(BasePermission):
    flag = ""

    def has_permission(self, request, view) -> bool:
        api_token = request.auth
        # No token: False, and DRF answers 401 since an authenticator was tried.
        return isinstance(api_token, ApiToken) and getattr(api_token, self.flag)


class CanReadContacts(_TokenFlag):
    flag = "can_read_contacts"
    message = "This token may not read contacts (its \u201cread contacts\u201d is off)."


class CanWriteContacts(_TokenFlag):
    flag = "can_write_contacts"
    message = "This token may not change contacts (its \u201cwrite contacts\u201d is off)."


class CanSendCampaigns(_TokenFlag):
    flag = "can_send_campaigns"
    message = "This token may not send campaigns (its \u201csend campaigns\u201d is off)."


class TokenRateThrottle(BaseThrottle):
    """API_RATE calls per token, counted in a fixed window in the cache (Redis in
    production, so the limit holds across web processes: audience.throttle)."""

    def allow_request(self, request, view) -> bool:
        api_token = request.auth
        if not isinstance(api_token, ApiToken):
            return True  # refused before it gets anywhere (401)
        self.rate = settings.API_RATE
        return not throttle.over_limit([(f"api:{api_token.pk}", self.rate)])

    def wait(self) -> float:
        # Until the window ends, rounded up: DRF writes Retry-After as whole seconds, and
        # "0" would invite the client straight back into the same full window.
        _limit, period = throttle.parse_rate(self.rate)
        return math.ceil(period - (time.time() % period))
