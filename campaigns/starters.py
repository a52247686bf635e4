"""Starter templates for the emergency blast: a message ready to send in one click.

Each starter is filled in from the sender settings when a campaign is made from it (shop
link, phone, reply-to), so the owner does not have to type them during an outage. Lines
whose setting is empty are left out rather than printed blank. Merge fields such as
``{{ first_name|default:"friend" }}`` stay in the body and are filled per recipient.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from campaigns.models import SenderSettings


@dataclass(frozen=True)
class Starter:
    key: str
    title: str
    description: str
    subject: str
    preheader: str
    body: Callable[[SenderSettings], str]


GREETING = 'Hi {{ first_name|default:"friend" }},'


def _shop_name(sender: SenderSettings) -> str:
    return sender.from_name or "us"


def _ways_to_reach_us(sender: SenderSettings) -> str:
    lines = []
    if sender.shop_url:
        lines.append(f"- **Shop directly on our website:** [{sender.shop_url}]({sender.shop_url})")
    lines.append("- **Reply to this email**: it comes straight to us.")
    if sender.phone:
        lines.append(f"- **Call or text us:** {sender.phone}")
    return "\n".join(lines)


def _still_here(sender: SenderSettings) -> str:
    return f"""{GREETING}

Social media is down right now, so you may not be able to reach us there. We're still
here, and it's business as usual:

{_ways_to_reach_us(sender)}

We'll let you know as soon as things are back to normal. Thank you for sticking with us!

{_shop_name(sender)}
"""


def _were_back(sender: SenderSettings) -> str:
    shop = ""
    if sender.shop_url:
        shop = f" You can always find us at [{sender.shop_url}]({sender.shop_url})."
    return f"""{GREETING}

Good news: the outage is over and you can reach us on social media again.

Thank you for your patience while things were down.{shop} Being on this list means you'll
hear from us even when the platforms go quiet.

{_shop_name(sender)}
"""


def _order_during_outage(sender: SenderSettings) -> str:
    return f"""{GREETING}

If you tried to order from us or sent us a message while social media was down, it may
not have reached us. We're sorry for the trouble.

Please get in touch and we'll sort it out right away:

{_ways_to_reach_us(sender)}

Any order you placed is safe; if something looks wrong, just reply to this email.

{_shop_name(sender)}
"""


STARTERS: dict[str, Starter] = {
    starter.key: starter
    for starter in [
        Starter(
            key="still-here",
            title="We're still here",
            description="The platform is down: here is how to reach us (shop link, reply, phone).",
            subject="We're still here",
            preheader="Social media is down, but you can still reach us.",
            body=_still_here,
        ),
        Starter(
            key="were-back",
            title="We're back",
            description="The outage is over; thank your customers for waiting.",
            subject="We're back!",
            preheader="The outage is over. Thanks for your patience.",
            body=_were_back,
        ),
        Starter(
            key="order-during-outage",
            title="Your order during the outage",
            description="Orders or messages sent during the outage may not have reached you.",
            subject="About your order during the outage",
            preheader="If you ordered or wrote to us during the outage, please get in touch.",
            body=_order_during_outage,
        ),
    ]
}


def starter_fields(starter: Starter, sender: SenderSettings) -> dict[str, str]:
    """The campaign fields a starter fills, with the sender's details written in."""
    return {
        "name": starter.title,
        "subject": starter.subject,
        "preheader": starter.preheader,
        "body": starter.body(sender),
    }
