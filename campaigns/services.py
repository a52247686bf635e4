"""Writes to campaigns that change no status: test sends, duplicates, the emergency
draft. Every status change (start, schedule, pause, resume, cancel, finish) is
campaigns.lifecycle's, with its CampaignEvent; the sending itself is campaigns.sending's."""

from __future__ import annotations

import logging
from types import SimpleNamespace

from django.core.exceptions import ValidationError
from django.core.mail import get_connection
from django.utils import timezone

from audience.models import Contact

# The status changes moved to campaigns.lifecycle. These names stay importable from here
# because tests, the benchmarks and the fault tests (and other work in flight) call them
# as services.campaign_start & co.; new code imports campaigns.lifecycle.
from campaigns.lifecycle import (  # noqa: F401
    campaign_cancel,
    campaign_pause,
    campaign_resume,
    campaign_schedule,
    campaign_start,
    campaign_unschedule,
    campaigns_resume_due,
    campaigns_start_due,
)
from campaigns.models import Campaign, SenderSettings
from campaigns.rendering import render_message

logger = logging.getLogger(__name__)


def sender_problems(sender: SenderSettings) -> list[str]:
    """What stops sending, in words the shop owner can act on (empty when ready)."""
    problems = []
    if not (sender.from_email or "").strip():
        problems.append(
            "Set the From address in Sender settings: the email your customers see "
            "the message come from (on a domain your email provider has verified)."
        )
    if not (sender.postal_address or "").strip():
        problems.append(
            "Set the postal address in Sender settings: the law (CAN-SPAM) requires "
            "a physical address at the foot of every campaign."
        )
    return problems


def campaign_send_test(
    *, campaign: Campaign, emails: list[str], as_contact: Contact | None = None
) -> int:
    """Send the campaign as `as_contact` would get it (or as each address's own contact,
    or a stand-in) to the given addresses, subject marked [Test]. No Delivery rows."""
    from django.core.mail import EmailMultiAlternatives

    sender = SenderSettings.load()
    problems = sender_problems(sender)
    if problems:
        raise ValidationError(problems)
    emails = [e.strip() for e in emails if e and e.strip()]
    if not emails:
        raise ValidationError("Give at least one address to send the test to.")
    messages = []
    for email in emails:
        contact = as_contact or Contact.objects.filter(email=email.lower()).first()
        if contact is None:
            contact = SimpleNamespace(
                pk=0,
                id=0,
                email=email,
                first_name="",
                last_name="",
                phone="",
                attributes={},
            )
        rendered = render_message(campaign=campaign, contact=contact, sender=sender)
        message = EmailMultiAlternatives(
            subject=f"[Test] {rendered.subject}",
            body=rendered.text,
            from_email=rendered.from_email,
            to=[email],
            reply_to=rendered.reply_to,
            headers=rendered.headers,
        )
        message.attach_alternative(rendered.html, "text/html")
        messages.append(message)
    with get_connection(fail_silently=False) as conn:
        return conn.send_messages(messages) or 0


# --- authoring (the emergency blast) ------------------------------------------------------


def campaign_create_from_starter(*, starter, segment=None, actor: str = "") -> Campaign:
    """A draft emergency campaign filled from a starter template and the sender settings,
    to everyone subscribed or to one segment. Sending it is campaign_start's job, after
    the owner has seen the confirmation page (or passed --yes to `manage.py blast`)."""
    from campaigns.starters import starter_fields

    fields = starter_fields(starter, SenderSettings.load())
    fields["name"] = f"{fields['name']} ({timezone.localtime():%Y-%m-%d %H:%M})"
    return Campaign.objects.create(
        **fields,
        audience=Campaign.Audience.SEGMENT if segment else Campaign.Audience.EVERYONE,
        segment=segment,
        is_emergency=True,
        created_by=actor,
    )


def campaign_duplicate(*, campaign: Campaign, actor: str = "") -> Campaign:
    """A new draft with the same message and audience: how a sent, cancelled or failed
    campaign is sent again (what went out stays as it was, as the record)."""
    copy = Campaign.objects.create(
        name=f"{campaign.name} (copy)"[:200],
        subject=campaign.subject,
        preheader=campaign.preheader,
        body=campaign.body,
        audience=campaign.audience,
        segment=campaign.segment,
        send_mode=campaign.send_mode,
        is_emergency=campaign.is_emergency,
        created_by=actor,
    )
    copy.tags.set(campaign.tags.all())
    return copy
