"""Who did it, from where: the evidence every ConsentEvent carries, read off a request.

One reading for the public views and the admin alike, so that behind a proxy both take
the visitor's address from CLIENT_IP_HEADER and never the proxy's own REMOTE_ADDR.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache

from django.conf import settings
from django.http import HttpRequest

from audience.services import Evidence


def client_ip(request: HttpRequest) -> str | None:
    # request.META, not request.headers, here and on the signup path: building the
    # headers mapping costs a signup more than everything it reads from it.
    first = (request.META.get(settings.CLIENT_IP_HEADER, "") or "").split(",", 1)[0].strip()
    return _normal_ip(first) if len(first) <= 45 else None  # 45: the longest IPv6 text


@lru_cache(maxsize=4096)
def _normal_ip(text: str) -> str | None:
    """The address normalised; None if it is no address. Cached: the same visitors come
    back, and parsing was a tenth of what the signup view itself spent."""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def from_request(
    request: HttpRequest, method: str, *, ip: str | None = None, actor: str = ""
) -> Evidence:
    return Evidence(
        method=method,
        ip=ip or client_ip(request),
        user_agent=request.META.get("HTTP_USER_AGENT", "")[:500],
        actor=actor,
    )
