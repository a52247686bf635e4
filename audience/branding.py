"""Who the audience's own mail is from and how it looks: the shop's name, addresses, logo
and accent colour, as the owner set them once for every email (the sender settings).

The sender settings are a campaigns model, and the audience must not import campaigns
(ARCHITECTURE.md: campaigns build on the audience, never the other way). So the audience
asks for a `Brand` through one function that the campaigns app hands in when it starts
(`brand_source_set`, from campaigns.apps): the arrow stays campaigns → audience, and the
audience alone (campaigns not installed, or sender settings never filled in) still sends,
from DEFAULT_FROM_EMAIL.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from email.utils import formataddr

from django.conf import settings


@dataclass(frozen=True)
class Brand:
    """The sender as a mail needs it. Field names are the sender settings' own, so the
    merge-field context (audience.mailmerge) reads either alike."""

    from_name: str = ""
    from_email: str = ""
    reply_to: str = ""
    postal_address: str = ""
    shop_url: str = ""
    phone: str = ""
    logo_url: str = ""
    accent_color: str = ""

    @property
    def from_header(self) -> str:
        """The From header: the owner's name and address, or DEFAULT_FROM_EMAIL while no
        address is set (a name alone is no address to send from)."""
        if not self.from_email:
            return settings.DEFAULT_FROM_EMAIL
        return formataddr((self.from_name, self.from_email)) if self.from_name else self.from_email

    @property
    def reply_to_list(self) -> list[str]:
        return [self.reply_to] if self.reply_to else []


_source: dict[str, Callable[[], Brand]] = {}


def brand_source_set(source: Callable[[], Brand]) -> None:
    """Say where the brand comes from (called once, by the campaigns app's ready())."""
    _source["brand"] = source


def brand_current() -> Brand:
    """The brand as stored now. Read once per batch of mail, not once per message."""
    source = _source.get("brand")
    return source() if source is not None else Brand()
