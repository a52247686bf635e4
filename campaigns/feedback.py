"""What providers tell us after sending, through anymail's normalised tracking webhooks.

Every provider's webhook (Mailgun, Postmark, SES, Brevo, …) arrives at
/anymail/<esp>/tracking/, anymail checks its signature or basic auth and sends the
`tracking` signal with a normalised event. Here: bounces and complaints suppress the
contact (with a ConsentEvent), provider-side unsubscribes unsubscribe, and opens and
clicks mark the Delivery, which the "engaged within N days" segment rule reads.
"""

from __future__ import annotations

import logging

from anymail.signals import AnymailTrackingEvent, EventType, RejectReason, tracking
from django.core.exceptions import ValidationError
from django.db.models.functions import Coalesce
from django.dispatch import receiver
from django.utils import timezone

from audience import services as audience_services
from audience.models import Contact
from campaigns.models import Delivery

logger = logging.getLogger(__name__)

# A provider that refuses to send names why; these reasons say the address is bad.
_REJECT_AS_BOUNCE = {RejectReason.BOUNCED, RejectReason.INVALID}


@receiver(tracking, dispatch_uid="campaigns.feedback")
def _on_tracking(sender, event: AnymailTrackingEvent, esp_name: str, **kwargs) -> None:
    feedback_record(event=event, esp_name=esp_name)


def feedback_record(*, event: AnymailTrackingEvent, esp_name: str) -> str:
    """Apply one provider event; returns what was done (for logs and tests)."""
    try:
        email = audience_services.normalize_email(event.recipient)
    except ValidationError:
        return "ignored: no recipient"
    contact = Contact.objects.filter(email=email).first()
    if contact is None:
        return "ignored: unknown recipient"  # erased, or never ours
    evidence = audience_services.Evidence(method=f"provider-{esp_name.lower()}")
    detail = {
        "event": event.event_type,
        "campaign": (event.metadata or {}).get("campaign"),
        "description": (event.description or "")[:500],
        "mta_response": (event.mta_response or "")[:500],
        "message_id": event.message_id or "",
    }
    kind = event.event_type
    if kind == EventType.REJECTED:
        if event.reject_reason in _REJECT_AS_BOUNCE:
            kind = EventType.BOUNCED
        elif event.reject_reason == RejectReason.SPAM:
            kind = EventType.COMPLAINED
        elif event.reject_reason == RejectReason.UNSUBSCRIBED:
            kind = EventType.UNSUBSCRIBED
    if kind == EventType.BOUNCED:
        audience_services.contact_suppress(
            contact=contact, status=Contact.Status.BOUNCED, evidence=evidence, detail=detail
        )
        return "bounced"
    if kind == EventType.COMPLAINED:
        audience_services.contact_suppress(
            contact=contact, status=Contact.Status.COMPLAINED, evidence=evidence, detail=detail
        )
        return "complained"
    if kind == EventType.UNSUBSCRIBED:
        audience_services.contact_unsubscribe(contact=contact, evidence=evidence, detail=detail)
        return "unsubscribed"
    if kind in (EventType.OPENED, EventType.CLICKED):
        return _engagement(contact=contact, event=event)
    return f"ignored: {event.event_type}"


def _engagement(*, contact: Contact, event: AnymailTrackingEvent) -> str:
    campaign_id = (event.metadata or {}).get("campaign")
    try:
        campaign_id = int(campaign_id)
    except (TypeError, ValueError):
        return "ignored: no campaign"
    when = event.timestamp or timezone.now()
    # The first open or click is what counts; a click implies the message was opened.
    fields = {"opened_at": Coalesce("opened_at", when)}
    if event.event_type == EventType.CLICKED:
        fields["clicked_at"] = Coalesce("clicked_at", when)
    updated = Delivery.objects.filter(campaign_id=campaign_id, contact=contact).update(**fields)
    return f"{event.event_type}" if updated else "ignored: no delivery"
