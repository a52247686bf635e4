"""The configured email providers, as objects: the primary (EMAIL_PROVIDER) and the
optional failover (EMAIL_FAILOVER_PROVIDER), each with its backend and its own
credentials, and the one way to open a connection to either.

Both the campaign sender (campaigns.sending, which switches a whole campaign over, see
campaigns.providers) and the confirmation mail (audience.emails, which falls over
message by message through `send_failing_over`) go through here, so the two paths
share the provider list, the connection and the fall-over rule.

Here, in config, rather than in campaigns: the audience sends mail too and must not
import campaigns. Nothing here reads settings at import time.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from django.conf import settings
from django.core.mail import get_connection

logger = logging.getLogger(__name__)

PRIMARY = "primary"
SECONDARY = "secondary"

# After the primary failed a confirmation mail for a passing reason, this process sends
# confirmations through the failover for this long before trying the primary again, so
# a dead primary costs one timeout a minute, not one per message.
PRIMARY_RETRY_SECONDS = 60.0


@dataclass(frozen=True)
class Provider:
    role: str  # PRIMARY or SECONDARY
    name: str  # the EMAIL_PROVIDER value: "mailgun", "postmark", "smtp", …
    backend: str  # the Django email backend's dotted path
    # The backend's keyword arguments: the failover's own credentials. Empty for the
    # primary, whose credentials are settings.ANYMAIL / EMAIL_HOST…, as without failover.
    options: dict = field(default_factory=dict, compare=False)

    @property
    def label(self) -> str:
        return self.name if self.role == PRIMARY else f"{self.name} (failover)"


def primary() -> Provider:
    # Read each time: tests (and nothing else) change the settings at run time.
    return Provider(PRIMARY, settings.EMAIL_PROVIDER, settings.EMAIL_BACKEND)


def secondary() -> Provider | None:
    """The failover provider, or None when none is configured."""
    name = getattr(settings, "EMAIL_FAILOVER_PROVIDER", "")
    backend = getattr(settings, "EMAIL_FAILOVER_BACKEND", "")
    if not name or not backend:
        return None
    return Provider(SECONDARY, name, backend, dict(settings.EMAIL_FAILOVER_OPTIONS))


def by_role(role: str) -> Provider:
    """The provider for `role`; the primary when no failover is configured (any more)."""
    if role == SECONDARY:
        return secondary() or primary()
    return primary()


def connection_for(provider: Provider, **kwargs):
    """An (unopened) connection to `provider`, with its own credentials; `kwargs` as for
    django.core.mail.get_connection. The primary's is exactly get_connection()'s."""
    if provider.role == PRIMARY:
        return get_connection(provider.backend, fail_silently=False, **kwargs)
    # Anymail backends read each setting from their kwargs before settings.ANYMAIL (its
    # get_anymail_setting), so the failover's key never mixes with the primary's.
    return get_connection(provider.backend, fail_silently=False, **{**provider.options, **kwargs})


_primary_failed = {"at": float("-inf")}
_lock = threading.Lock()


def send_failing_over(messages: Sequence, *, transient: Callable[[BaseException], bool]) -> int:
    """Send `messages` through the primary; if it fails for a passing reason
    (`transient(exc)`: 5xx, 429, a timeout), send them through the failover instead.
    Without a failover, or when the failover fails too, the error goes up as it came.

    For transactional mail (the double opt-in): a message may reach someone twice when
    the primary took it but its answer never came, which is better than not at all."""
    backup = secondary()
    if backup is not None:
        with _lock:
            skip_primary = time.monotonic() - _primary_failed["at"] < PRIMARY_RETRY_SECONDS
        if skip_primary:
            return _send(backup, messages)
    try:
        return _send(primary(), messages)
    except Exception as exc:
        if backup is None or not transient(exc):
            raise
        with _lock:
            _primary_failed["at"] = time.monotonic()
        logger.warning("%s failed (%s); sending through %s", primary().name, exc, backup.label)
        return _send(backup, messages)


def forget_primary_failure() -> None:
    """Try the primary first again at once (tests; a fresh process starts so)."""
    with _lock:
        _primary_failed["at"] = float("-inf")


def _send(provider: Provider, messages: Sequence) -> int:
    with connection_for(provider) as conn:
        return conn.send_messages(list(messages)) or 0
