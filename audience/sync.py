"""One contact stated by a system of record: a connected store's customer, an API client.

A store or an API client says "this person, with these details, and this consent as my
records hold it". `contact_sync` applies that to the audience the way consent.decide
says for Via.SYNC (a store's recorded opt-in completes a pending contact; nothing it says
brings back an address that said no, it asks by double opt-in instead; consent older
than the contact's last change of status changes no status), and writes the evidence.

Unlike a signup form, the caller is the shop's own system: the details it sends (names,
phone, SMS consent) replace what is stored, and a detail it leaves out (None, or empty)
is kept. Tags are only ever added.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from django.db import IntegrityError, transaction
from django.utils import timezone

from audience import consent, welcome
from audience.models import ConsentEvent, Contact, Store, SuppressedEmail, Tag
from audience.services import (
    Evidence,
    _apply_request,
    _close_request,
    _queue_confirmation,
    _record,
    _resend_window,
    contact_state,
    email_hash,
)

Status = Contact.Status


@dataclass(frozen=True)
class SmsState:
    """SMS marketing consent as the source records it (Shopify's sms_marketing_consent).
    Stored now, kept apart from the email status; the SMS sender will read it."""

    state: str  # a Contact.SmsConsent value
    at: datetime | None = None
    opt_in_level: str = ""


@dataclass(frozen=True)
class Record:
    email: str  # normalized (services.normalize_email)
    ask: consent.Ask
    consent_at: datetime | None = None  # when the source recorded that consent; None: now
    first_name: str | None = None  # None (or empty): keep what is stored
    last_name: str | None = None
    phone: str | None = None  # normalized (services.normalize_phone)
    tags: tuple[Tag, ...] = ()  # added, never removed
    sms: SmsState | None = None
    consent_text: str = ""
    detail: dict = field(default_factory=dict)  # onto the ConsentEvent (e.g. opt_in_level)


@dataclass(frozen=True)
class Synced:
    contact: Contact | None  # None: refused, the address was erased (see contact_sync)
    created: bool = False
    status_before: str = ""  # "" when created
    subscribed: bool = False  # this call moved the contact to subscribed
    changed: tuple[str, ...] = ()  # the details (names, phone, sms) it replaced


ERASED = Synced(contact=None)

_DETAILS = ("first_name", "last_name", "phone")


def _sync_state(contact: Contact) -> consent.State:
    """The stored contact as decide sees it, with when its status last changed: synced
    consent older than that (a webhook delivered late) does not win over it."""
    changes = [t for t in (contact.confirmed_at, contact.unsubscribed_at) if t is not None]
    state = contact_state(contact)
    return consent.State(
        status=state.status,
        request_open=state.request_open,
        confirmation_sent_at=state.confirmation_sent_at,
        unsubscribed_at=state.unsubscribed_at,
        last_signup_at=state.last_signup_at,
        status_changed_at=max(changes) if changes else None,
    )


@transaction.atomic
def contact_sync(
    *,
    record: Record,
    evidence: Evidence,
    source: str = Contact.Source.API,
    store: Store | None = None,
) -> Synced:
    """Create or update the contact `record` states, as consent.decide(Via.SYNC) says.

    An erased address (a SuppressedEmail) is refused (ERASED), unless the record carries
    an opt-in given after the erasure: then it is a new address, asked by double opt-in
    (a store's word is no proof the person who asked to be forgotten wants mail again).
    `store`, when given, adds its tags, and its welcome email (if turned on) is owed to a
    contact this call subscribes.
    """
    now = timezone.now()
    # A source's clock is not ours to trust blindly: consent "from the future" would
    # outrank every later unsubscribe.
    at = min(record.consent_at or now, now)
    ask = record.ask
    suppression = SuppressedEmail.objects.filter(email_hash=email_hash(record.email)).first()
    if suppression is not None:
        opted_in_since = ask in (consent.Ask.SUBSCRIBE, consent.Ask.CONFIRM_FIRST) and (
            record.consent_at is not None and record.consent_at > suppression.created_at
        )
        if not opted_in_since:
            return ERASED
        suppression.delete()
        ask = consent.Ask.CONFIRM_FIRST
    incoming = consent.Incoming(via=consent.Via.SYNC, ask=ask, at=at)
    contact = Contact.objects.select_for_update().filter(email=record.email).first()
    if contact is None:
        try:
            with transaction.atomic():  # a savepoint: what it wrote goes if it fails
                return _create(
                    record, incoming, evidence=evidence, source=source, store=store, now=now
                )
        except IntegrityError:
            # Another call (a second webhook about the same customer, an API client's
            # retry) created the address since we looked, and committed: its insert held
            # ours until then. Apply this record to that contact, as if it came second.
            contact = Contact.objects.select_for_update().get(email=record.email)
    before = contact.status
    outcome = consent.decide(
        _sync_state(contact), incoming, now=now, resend_window=_resend_window()
    )
    fields = _replace_details(contact, record)
    changed = tuple(fields)
    if outcome.writes and outcome.status != before:
        contact.status = outcome.status
        fields.append("status")
        if outcome.status == Status.SUBSCRIBED:
            contact.confirmed_at = at
            fields.append("confirmed_at")
        elif outcome.status == Status.UNSUBSCRIBED:
            contact.unsubscribed_at = at
            fields.append("unsubscribed_at")
    if outcome.close_request:
        fields += _close_request(contact)
    if fields:
        contact.save(update_fields=[*dict.fromkeys(fields), "updated_at"])
    if outcome.open_request or outcome.mail:
        # Asked again (a subscription stated for an opted-out contact): a double opt-in
        # request its owner must click, exactly as a signup for a known address opens.
        _apply_request(contact, outcome, now=now)
    _add_tags(contact, record, store)
    subscribed = before != Status.SUBSCRIBED and contact.status == Status.SUBSCRIBED
    if contact.status != before:
        _record_sync(contact, record, before=before, evidence=evidence, at=at)
    elif outcome.event:
        # No status change: the request to confirm is a signup of the store's customer.
        _record(
            contact, kind=ConsentEvent.Kind.SIGNUP, before=before, evidence=evidence,
            consent_text=record.consent_text,
            detail={**record.detail, "via": "sync", "consent_at": at.isoformat()},
        )  # fmt: skip
    elif changed:
        _record(
            contact, kind=ConsentEvent.Kind.SYNC, before=before, evidence=evidence,
            detail={**record.detail, "changed": sorted(changed)},
        )  # fmt: skip
    if outcome.mail:
        _queue_confirmation()
    if subscribed:
        welcome.welcome_owe(contact=contact, store=store)
    return Synced(contact=contact, status_before=before, subscribed=subscribed, changed=changed)


def _create(
    record: Record,
    incoming: consent.Incoming,
    *,
    evidence: Evidence,
    source: str,
    store: Store | None,
    now: datetime,
) -> Synced:
    outcome = consent.decide(None, incoming, now=now, resend_window=_resend_window())
    status, at = outcome.status, incoming.at
    contact = Contact(
        email=record.email, source=source, status=status, created_at=now,
        confirmed_at=at if status == Status.SUBSCRIBED else None,
        unsubscribed_at=at if status == Status.UNSUBSCRIBED else None,
        optin_requested_at=now if outcome.open_request else None,
        confirmation_sent_at=now if outcome.mail else None, confirmation_due=outcome.mail,
    )  # fmt: skip
    _replace_details(contact, record)
    contact.save(force_insert=True)
    _add_tags(contact, record, store)
    _record_sync(contact, record, before="", evidence=evidence, at=at)
    if outcome.mail:
        _queue_confirmation()
    subscribed = status == Status.SUBSCRIBED
    if subscribed:
        welcome.welcome_owe(contact=contact, store=store)
    return Synced(contact=contact, created=True, subscribed=subscribed)


def _replace_details(contact: Contact, record: Record) -> list[str]:
    """Set what the record states and the contact lacks or holds otherwise; return the
    fields changed. SMS consent older than the stored one (out of order) is kept out."""
    changed = []
    for name in _DETAILS:
        value = getattr(record, name)
        if value and getattr(contact, name) != value:
            setattr(contact, name, value)
            changed.append(name)
    sms = record.sms
    if sms is not None and sms.state:
        stored_at = contact.sms_consent_at
        newer = sms.at is None or stored_at is None or sms.at >= stored_at
        if newer and (contact.sms_consent, contact.sms_opt_in_level) != (
            sms.state,
            sms.opt_in_level,
        ):
            contact.sms_consent = sms.state
            contact.sms_consent_at = sms.at or timezone.now()
            contact.sms_opt_in_level = sms.opt_in_level
            changed += ["sms_consent", "sms_consent_at", "sms_opt_in_level"]
    return changed


def _add_tags(contact: Contact, record: Record, store: Store | None) -> None:
    tags = {tag.pk for tag in record.tags}
    if store is not None:
        tags |= set(store.tags.values_list("pk", flat=True))
    if tags:
        through = Contact.tags.through
        through.objects.bulk_create(
            [through(contact_id=contact.pk, tag_id=pk) for pk in sorted(tags)],
            ignore_conflicts=True,
        )


def _record_sync(
    contact: Contact, record: Record, *, before: str, evidence: Evidence, at: datetime
) -> None:
    _record(
        contact, kind=ConsentEvent.Kind.SYNC, before=before, evidence=evidence,
        consent_text=record.consent_text, detail=record.detail, at=at,
    )  # fmt: skip
