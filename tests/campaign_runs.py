"""What the tests that run a real blast share: an audience, a started campaign, its status."""

from __future__ import annotations

from audience.models import Contact
from campaigns import lifecycle
from campaigns.models import Campaign


def recipients(n: int) -> list[str]:
    """`n` subscribed contacts, plus a few who must never be mailed."""
    emails = [f"r{i}@example.com" for i in range(n)]
    Contact.objects.bulk_create(
        [Contact(email=email, status=Contact.Status.SUBSCRIBED) for email in emails]
        + [Contact(email=f"u{i}@example.com", status=Contact.Status.UNSUBSCRIBED) for i in range(5)]
        + [Contact(email=f"p{i}@example.com", status=Contact.Status.PENDING) for i in range(5)]
    )
    return emails


def start(**kwargs) -> Campaign:
    """The outage message, with merge fields, started (snapshot and chunks queued)."""
    campaign = Campaign.objects.create(
        name="We're still here",
        subject="Hi {{ first_name|default:'friend' }}, we're still here",
        body="Hello **{{ first_name|default:'friend' }}**, order at https://shop.example.",
        **kwargs,
    )
    return lifecycle.campaign_start(campaign=campaign)


def status(campaign: Campaign) -> str:
    return Campaign.objects.values_list("status", flat=True).get(pk=campaign.pk)
