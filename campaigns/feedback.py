"""What providers tell us after sending, through anymail's normalised tracking webhooks.

Every provider's webhook (Mailgun, Postmark, SES, Brevo, …) arrives at
/anymail/<esp>/tracking/, anymail checks its signature or basic auth and sends the
`tracking` signal with a normalised event. Here:

- the contact: hard bounces and complaints suppress it (with a ConsentEvent),
  provider-side unsubscribes unsubscribe it, soft bounces count towards
  SOFT_BOUNCE_LIMIT in a row and a delivered message resets that count;
- the Delivery the event is about (found by the campaign in the message's metadata and
  the recipient, or by the provider's message id): the first event of each kind stamps
  its time (delivered_at, opened_at, …), and only that first stamp moves the campaign
  report's counters and timeline (campaigns.tallies). Providers re-post a webhook they
  are unsure we got, and re-send deferral notices for one message; state decides, so
  each counts once whatever the provider's event id says. An event whose message id is
  not the one we recorded for that recipient counts nowhere.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from anymail.signals import AnymailTrackingEvent, EventType, RejectReason, tracking
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import F
from django.dispatch import receiver
from django.utils import timezone

from audience import services as audience_services
from audience.models import Contact
from campaigns import tallies
from campaigns.models import CampaignLink, Delivery, LinkClick

logger = logging.getLogger(__name__)

# A provider that refuses to send names why; these reasons say the address is bad.
_REJECT_AS_BOUNCE = {RejectReason.BOUNCED, RejectReason.INVALID}

# SparkPost's bounce classes that say the address itself is bad (invalid recipient,
# no RCPT, undeterminable, admin failure); the others (mailbox full, DNS, transient,
# too large, generic) may clear up, so they are soft.
# https://support.sparkpost.com/docs/deliverability/bounce-classification-codes
_SPARKPOST_HARD = {"10", "25", "30", "90"}


class Outcome:
    DELIVERED = "delivered"
    DEFERRED = "deferred"
    SOFT_BOUNCE = "soft_bounce"
    HARD_BOUNCE = "hard_bounce"
    COMPLAINED = "complained"
    UNSUBSCRIBED = "unsubscribed"
    OPENED = "opened"
    CLICKED = "clicked"
    REJECTED = "rejected"


@receiver(tracking, dispatch_uid="campaigns.feedback")
def _on_tracking(sender, event: AnymailTrackingEvent, esp_name: str, **kwargs) -> None:
    feedback_record(event=event, esp_name=esp_name)


def _esp(esp_name: str) -> str:
    return esp_name.lower().replace(" ", "_")


def _esp_field(event: AnymailTrackingEvent, *path: str):
    value = event.esp_event
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def _is_soft_bounce(event: AnymailTrackingEvent, esp: str) -> bool:
    """Whether a BOUNCED event is a soft (temporary) one. Anymail calls both "bounced";
    each provider says which in its own field."""
    if esp == "postmark":
        return _esp_field(event, "Type") == "SoftBounce"
    if esp == "amazon_ses":
        # SES: Permanent is hard; Transient (mailbox full, too large) and Undetermined
        # (SES could not tell) may clear up, so they wait for the soft-bounce row.
        return _esp_field(event, "bounce", "bounceType") in ("Transient", "Undetermined")
    if esp == "resend":
        return _esp_field(event, "data", "bounce", "type") in ("Transient", "Undetermined")
    if esp in ("brevo", "sendinblue"):
        return _esp_field(event, "event") == "soft_bounce"
    if esp == "sparkpost":
        msys = _esp_field(event, "msys") or {}
        inner = next(iter(msys.values()), {}) if isinstance(msys, dict) else {}
        bounce_class = str(inner.get("bounce_class", "")) if isinstance(inner, dict) else ""
        return bool(bounce_class) and bounce_class not in _SPARKPOST_HARD
    if esp == "mailjet":
        return _esp_field(event, "hard_bounce") is False
    return False


def classify(event: AnymailTrackingEvent, esp_name: str) -> str | None:
    """The event as one of Outcome's kinds, or None for what the report does not count
    (queued, sent, autoresponder, unknown)."""
    esp = _esp(esp_name)
    kind = event.event_type
    if kind == EventType.REJECTED:
        if event.reject_reason in _REJECT_AS_BOUNCE:
            kind = EventType.BOUNCED
        elif event.reject_reason == RejectReason.SPAM:
            kind = EventType.COMPLAINED
        elif event.reject_reason == RejectReason.UNSUBSCRIBED:
            kind = EventType.UNSUBSCRIBED
        else:
            return Outcome.REJECTED
    if kind == EventType.FAILED:
        return Outcome.REJECTED
    if kind == EventType.DEFERRED:
        # Mailgun has no delay event: its "failed" with severity "temporary" is the
        # receiving server's temporary refusal, which anymail calls deferred.
        if esp == "mailgun" and _esp_field(event, "event-data", "event") == "failed":
            return Outcome.SOFT_BOUNCE
        return Outcome.DEFERRED
    if kind == EventType.BOUNCED:
        return Outcome.SOFT_BOUNCE if _is_soft_bounce(event, esp) else Outcome.HARD_BOUNCE
    return {
        EventType.DELIVERED: Outcome.DELIVERED,
        EventType.COMPLAINED: Outcome.COMPLAINED,
        EventType.UNSUBSCRIBED: Outcome.UNSUBSCRIBED,
        EventType.OPENED: Outcome.OPENED,
        EventType.CLICKED: Outcome.CLICKED,
    }.get(kind)


@dataclass
class _Target:
    pk: int
    campaign_id: int


def _delivery_for(contact: Contact, event: AnymailTrackingEvent) -> _Target | None:
    """The Delivery this event is about, or None. By (campaign, contact) when the message
    carried our metadata (unique index), else by the contact's deliveries with this
    message id (contact index: a contact has a handful). A recipient we sent nothing
    with this message id (a test send, someone else's mail, a forged id) is no one's."""
    campaign_id = (event.metadata or {}).get("campaign")
    deliveries = Delivery.objects.filter(contact=contact, status=Delivery.Status.SENT)
    try:
        deliveries = deliveries.filter(campaign_id=int(campaign_id))
    except (TypeError, ValueError):
        if not event.message_id:
            return None
        deliveries = deliveries.filter(message_id=event.message_id)
    row = deliveries.values_list("pk", "campaign_id", "message_id").first()
    if row is None:
        return None
    pk, campaign_id, message_id = row
    if event.message_id and message_id and message_id != event.message_id:
        return None
    return _Target(pk=pk, campaign_id=campaign_id)


def _stamp(target: _Target, field: str, when) -> bool:
    """Set the delivery's ``field`` if it is still empty; True only for the first."""
    unset = Delivery.objects.filter(pk=target.pk, **{f"{field}__isnull": True})
    return bool(unset.update(**{field: when}))


def feedback_record(*, event: AnymailTrackingEvent, esp_name: str) -> str:
    """Apply one provider event; returns what was done (for logs and tests)."""
    try:
        email = audience_services.normalize_email(event.recipient)
    except ValidationError:
        return "ignored: no recipient"
    contact = Contact.objects.filter(email=email).only("pk", "status", "soft_bounce_count").first()
    if contact is None:
        return "ignored: unknown recipient"  # erased, or never ours
    outcome = classify(event, esp_name)
    if outcome is None:
        return f"ignored: {event.event_type}"
    with transaction.atomic():
        target = _delivery_for(contact, event)
        first = _report(target, outcome, event) if target else False
        done = _contact(contact, outcome, event, esp_name, counted=first)
    if target is None:
        return f"{done}: no delivery"
    return done if first else f"{done}: already counted"


def _report(target: _Target, outcome: str, event: AnymailTrackingEvent) -> bool:
    """Stamp the delivery and move the report's tallies; True if this was the first."""
    when = event.timestamp or timezone.now()
    campaign_id = target.campaign_id
    Kind = tallies.Kind
    if outcome in (Outcome.OPENED, Outcome.CLICKED):
        # A click implies the message was opened (images off, or a text-only client).
        opened = _stamp(target, "opened_at", when)
        clicked = outcome == Outcome.CLICKED and _stamp(target, "clicked_at", when)
        tallies.report_add(campaign_id=campaign_id, opened=int(opened), clicked=int(clicked))
        if opened:
            tallies.timeline_add(campaign_id=campaign_id, kind=Kind.OPENED, when=when)
        if clicked:
            tallies.timeline_add(campaign_id=campaign_id, kind=Kind.CLICKED, when=when)
        link = outcome == Outcome.CLICKED and _link_click(target, event.click_url, when)
        return opened or clicked or link
    if outcome == Outcome.HARD_BOUNCE:
        if not _stamp(target, "hard_bounced_at", when):
            return False
        # A message that soft-bounced and then bounced for good counts once, as hard.
        was_soft = Delivery.objects.filter(pk=target.pk, soft_bounced_at__isnull=False).exists()
        tallies.report_add(campaign_id=campaign_id, hard_bounced=1, soft_bounced=-int(was_soft))
        return True
    if outcome == Outcome.SOFT_BOUNCE:
        unset = Delivery.objects.filter(
            pk=target.pk, soft_bounced_at__isnull=True, hard_bounced_at__isnull=True
        )
        if not unset.update(soft_bounced_at=when):
            return False
        tallies.report_add(campaign_id=campaign_id, soft_bounced=1)
        return True
    field, counter = {
        Outcome.DELIVERED: ("delivered_at", "delivered"),
        Outcome.DEFERRED: ("deferred_at", "deferred"),
        Outcome.COMPLAINED: ("complained_at", "complained"),
        Outcome.UNSUBSCRIBED: ("unsubscribed_at", "unsubscribed"),
        Outcome.REJECTED: ("rejected_at", "rejected"),
    }[outcome]
    if not _stamp(target, field, when):
        return False
    tallies.report_add(campaign_id=campaign_id, **{counter: 1})
    if outcome == Outcome.DELIVERED:
        tallies.timeline_add(campaign_id=campaign_id, kind=Kind.DELIVERED, when=when)
    return True


def _link_click(target: _Target, url: str | None, when) -> bool:
    """Count the recipient once among the link's clickers; True if they were new."""
    url = (url or "").strip()[:2000]
    if not url:
        return False
    link, _ = CampaignLink.objects.get_or_create(campaign_id=target.campaign_id, url=url)
    try:
        with transaction.atomic():
            LinkClick.objects.create(link=link, delivery_id=target.pk, clicked_at=when)
    except IntegrityError:
        return False  # this recipient's click on this link is counted already
    CampaignLink.objects.filter(pk=link.pk).update(clickers=F("clickers") + 1)
    return True


def _contact(
    contact: Contact, outcome: str, event: AnymailTrackingEvent, esp_name: str, *, counted: bool
) -> str:
    """What the event means for the address. Suppressions apply whether or not a
    campaign's Delivery matched (a confirmation mail bounces too); the soft-bounce row
    counts campaign messages, each once (``counted``: the delivery's first soft bounce)."""
    # As EMAIL_PROVIDER names it: "Amazon SES" is provider-amazon_ses.
    evidence = audience_services.Evidence(method=f"provider-{_esp(esp_name)}")
    detail = {
        "event": event.event_type,
        "campaign": (event.metadata or {}).get("campaign"),
        "description": (event.description or "")[:500],
        "mta_response": (event.mta_response or "")[:500],
        "message_id": event.message_id or "",
    }
    if outcome == Outcome.HARD_BOUNCE:
        audience_services.contact_suppress(
            contact=contact, status=Contact.Status.BOUNCED, evidence=evidence, detail=detail
        )
        return "bounced"
    if outcome == Outcome.COMPLAINED:
        audience_services.contact_suppress(
            contact=contact, status=Contact.Status.COMPLAINED, evidence=evidence, detail=detail
        )
        return "complained"
    if outcome == Outcome.UNSUBSCRIBED:
        audience_services.contact_unsubscribe(contact=contact, evidence=evidence, detail=detail)
        return "unsubscribed"
    if outcome == Outcome.SOFT_BOUNCE:
        if counted:
            audience_services.contact_soft_bounce(
                contact=contact, evidence=evidence, detail={**detail, "soft_bounce": True}
            )
        return "soft bounce"
    if outcome == Outcome.DELIVERED and counted and contact.soft_bounce_count:
        audience_services.contact_soft_bounce_reset(contact=contact)
    return outcome
