"""Every write to the audience goes through here, and every status change writes its
ConsentEvent in the same transaction (the way Zulip's do_* functions write their audit log).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import timedelta

import phonenumbers
import psycopg
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import connection, transaction
from django.db.models import QuerySet
from django.utils import timezone

from audience.models import ConsentEvent, Contact, SignupForm, SuppressedEmail, Tag

Status = Contact.Status
SUPPRESSED = {Status.UNSUBSCRIBED, Status.BOUNCED, Status.COMPLAINED}

# Anything that could end up in a mail header must not carry line breaks (header
# injection) or other control characters; names keep every other Unicode character.
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]")


def clean_text(value: str | None, *, max_length: int, field: str) -> str:
    value = _CONTROL.sub(" ", value or "").strip()
    value = re.sub(r" {2,}", " ", value)
    if len(value) > max_length:
        raise ValidationError({field: f"Please use at most {max_length} characters."})
    return value


def normalize_email(raw: str | None) -> str:
    """Trim and lower-case; raise ValidationError({"email": …}) if it is no address."""
    email = (raw or "").strip().lower()
    if not email:
        raise ValidationError({"email": "Please enter your email address."})
    if len(email) > 254 or _CONTROL.search(email):
        raise ValidationError({"email": "Please enter a valid email address."})
    try:
        validate_email(email)
    except ValidationError:
        raise ValidationError({"email": "Please enter a valid email address."}) from None
    return email


def normalize_phone(raw: str | None, *, region: str | None = None) -> str:
    """Return the number in E.164, or "" for an empty value; raise on an invalid one."""
    raw = (raw or "").strip()
    if not raw:
        return ""
    if len(raw) > 40:
        raise ValidationError({"phone": "Please enter a valid phone number."})
    try:
        number = phonenumbers.parse(raw, region or settings.PHONE_DEFAULT_REGION)
    except phonenumbers.NumberParseException:
        raise ValidationError({"phone": "Please enter a valid phone number."}) from None
    if not phonenumbers.is_valid_number(number):
        raise ValidationError({"phone": "Please enter a valid phone number."})
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def email_hash(email: str) -> str:
    return hashlib.sha256(email.strip().lower().encode()).hexdigest()


@dataclass(frozen=True)
class Evidence:
    """Who did it, from where: copied onto every ConsentEvent."""

    method: str
    ip: str | None = None
    user_agent: str = ""
    actor: str = ""


def _record(
    contact: Contact,
    *,
    kind: str,
    before: str,
    evidence: Evidence,
    signup_form: SignupForm | None = None,
    consent_text: str = "",
    detail: dict | None = None,
) -> ConsentEvent:
    return ConsentEvent.objects.create(
        contact=contact,
        kind=kind,
        method=evidence.method,
        status_before=before,
        status_after=contact.status,
        ip=evidence.ip,
        user_agent=(evidence.user_agent or "")[:500],
        actor=evidence.actor,
        signup_form=signup_form,
        consent_text=consent_text,
        detail=detail or {},
    )


# --- capture --------------------------------------------------------------------


def contact_subscribe(
    *,
    form: SignupForm,
    email: str,
    first_name: str = "",
    last_name: str = "",
    phone: str = "",
    evidence: Evidence,
) -> Contact:
    """A visitor signed up through `form`. Inputs must already be cleaned.

    The caller answers the visitor the same way whatever happened here, so nothing
    about the address (new, pending, subscribed) leaks through the public form.
    """
    fields = {"first_name": first_name, "last_name": last_name, "phone": phone}
    if connection.vendor == "postgresql":
        contact = _contact_insert_new(form=form, email=email, evidence=evidence, **fields)
        if contact is not None:
            if contact.status == Status.PENDING:
                _queue_confirmation()
            return contact
    return _contact_subscribe_any(form=form, email=email, evidence=evidence, **fields)


def _contact_insert_new(
    *, form: SignupForm, email: str, first_name: str, last_name: str, phone: str,
    evidence: Evidence,
) -> Contact | None:  # fmt: skip
    """The common case, a new address, in one statement and one round trip: lift any
    erasure suppression, insert the contact, its consent event and the form's tags.
    Returns None when the address is already a contact (ON CONFLICT did nothing).

    This is the signup hot path (bench/signup.py): the ORM path below costs eight
    round trips for the same work. One statement is atomic without a transaction.
    """
    now = timezone.now()
    pending = form.double_opt_in
    status = Status.PENDING if pending else Status.SUBSCRIBED
    params = {
        "hash": email_hash(email), "email": email, "first_name": first_name,
        "last_name": last_name, "phone": phone, "status": status,
        "source": Contact.Source.FORM, "form": form.pk, "now": now,
        "confirmed_at": None if pending else now,
        # A new contact has had no confirmation yet: claim the window at insert time.
        "confirmation_sent_at": now if pending else None, "confirmation_due": pending,
        "kind": ConsentEvent.Kind.SIGNUP, "method": evidence.method, "ip": evidence.ip,
        "user_agent": (evidence.user_agent or "")[:500], "actor": evidence.actor,
        "consent_text": form.consent_text,
        "detail": json.dumps({"double_opt_in": form.double_opt_in}),
        "tags": [tag.pk for tag in form.tags.all()],
    }  # fmt: skip
    sql = f"""
        WITH lifted AS (
            DELETE FROM {SuppressedEmail._meta.db_table} WHERE email_hash = %(hash)s
        ), created AS (
            INSERT INTO {Contact._meta.db_table} (email, first_name, last_name, phone, status,
                attributes, source, signup_form_id, created_at, updated_at, confirmed_at,
                unsubscribed_at, confirmation_sent_at, confirmation_due)
            VALUES (%(email)s, %(first_name)s, %(last_name)s, %(phone)s, %(status)s, '{{}}',
                %(source)s, %(form)s, %(now)s, %(now)s, %(confirmed_at)s, NULL,
                %(confirmation_sent_at)s, %(confirmation_due)s)
            ON CONFLICT (email) DO NOTHING
            RETURNING id
        ), evidence AS (
            INSERT INTO {ConsentEvent._meta.db_table} (contact_id, created_at, kind, method,
                status_before, status_after, ip, user_agent, signup_form_id, consent_text,
                actor, detail)
            SELECT id, %(now)s, %(kind)s, %(method)s, '', %(status)s, %(ip)s::inet,
                %(user_agent)s, %(form)s, %(consent_text)s, %(actor)s, %(detail)s::jsonb
            FROM created
        ), tagged AS (
            INSERT INTO {Contact.tags.through._meta.db_table} (contact_id, tag_id)
            SELECT created.id, tag_id FROM created, unnest(%(tags)s::bigint[]) AS tag_id
        )
        SELECT id FROM created
    """  # noqa: S608 (table names from model metadata; every value is a parameter)
    row = _execute_prepared(sql, params)
    if row is None:
        return None
    contact = Contact(
        id=row[0], email=email, first_name=first_name, last_name=last_name, phone=phone,
        status=status, source=Contact.Source.FORM, signup_form=form, created_at=now,
        updated_at=now, confirmed_at=params["confirmed_at"],
        confirmation_sent_at=params["confirmation_sent_at"], confirmation_due=pending,
    )  # fmt: skip
    contact._state.adding = False
    contact._state.db = "default"
    return contact


def _execute_prepared(sql: str, params: dict) -> tuple | None:
    """Run a hot statement as a prepared statement and return its first row.

    Django's cursors bind parameters on the client, so PostgreSQL parses and plans the
    signup's four-part statement on every call; a server-side cursor with prepare=True
    has it planned once per connection (about a fifth of a signup's CPU, on both sides,
    measured with bench/signup.py). Behind PgBouncer this needs session pooling, or
    PgBouncer 1.21+ with max_prepared_statements set.
    """
    # What Django's own cursor() checks first: a dead connection, a broken transaction.
    connection.close_if_health_check_failed()
    connection.ensure_connection()
    connection.validate_no_broken_transaction()
    with connection.wrap_database_errors, psycopg.Cursor(connection.connection) as cursor:
        cursor.execute(sql, params, prepare=True)
        return cursor.fetchone()


@transaction.atomic
def _contact_subscribe_any(
    *, form: SignupForm, email: str, first_name: str, last_name: str, phone: str,
    evidence: Evidence,
) -> Contact:  # fmt: skip
    """Any address, new or known, through the ORM (SQLite, and known addresses)."""
    # Signing up anew is the owner's own act: it lifts an erasure's suppression.
    SuppressedEmail.objects.filter(email_hash=email_hash(email)).delete()
    now = timezone.now()
    pending = form.double_opt_in
    contact, created = Contact.objects.select_for_update().get_or_create(
        email=email,
        defaults={
            "first_name": first_name,
            "last_name": last_name,
            "phone": phone,
            "source": Contact.Source.FORM,
            "signup_form": form,
            "status": Status.PENDING if pending else Status.SUBSCRIBED,
            "confirmed_at": None if pending else now,
            # A new contact has had no confirmation yet: claim the window at insert time.
            "confirmation_sent_at": now if pending else None,
            "confirmation_due": pending,
        },
    )
    before = "" if created else contact.status
    if not created:
        _fill_gaps(contact, first_name=first_name, last_name=last_name, phone=phone)
        if contact.status != Status.SUBSCRIBED:
            # A suppressed address (unsubscribed, bounced, complained) always goes through
            # double opt-in: anyone can type anyone's address into a form.
            pending = pending or contact.status in SUPPRESSED
            contact.status = Status.PENDING if pending else Status.SUBSCRIBED
            contact.confirmed_at = contact.confirmed_at if pending else now
            contact.save(update_fields=["status", "confirmed_at", "updated_at"])

    tags = list(form.tags.all())
    if tags:
        through = Contact.tags.through
        through.objects.bulk_create(
            [through(contact_id=contact.pk, tag_id=tag.pk) for tag in tags], ignore_conflicts=True
        )
    _record(
        contact,
        kind=ConsentEvent.Kind.SIGNUP,
        before=before,
        evidence=evidence,
        signup_form=form,
        consent_text=form.consent_text,
        detail={"double_opt_in": form.double_opt_in},
    )
    if contact.status == Status.PENDING:
        if created:
            _queue_confirmation()
        else:
            confirmation_request(contact=contact)
    return contact


def _fill_gaps(contact: Contact, **values: str) -> None:
    """An unauthenticated form may fill gaps but never overwrite what a contact told us."""
    changed = [f for f, v in values.items() if v and not getattr(contact, f)]
    for field in changed:
        setattr(contact, field, values[field])
    if changed:
        contact.save(update_fields=[*changed, "updated_at"])


def _queue_confirmation() -> None:
    """The contact's confirmation_due is set: have it sent once this transaction commits."""
    from audience import confirmations  # imports audience.tokens, which imports us

    transaction.on_commit(confirmations.kick)


def confirmation_request(*, contact: Contact) -> bool:
    """Queue a double opt-in mail unless one went out in the last window."""
    return bool(confirmations_request(contacts=Contact.objects.filter(pk=contact.pk)))


def confirmations_request(*, contacts: QuerySet[Contact]) -> int:
    """Owe a double opt-in mail to each pending contact in `contacts` that was not sent one
    in the last window; return how many. One UPDATE, whatever the number of contacts.

    The window is claimed with that conditional UPDATE, so two concurrent signups for the
    same address (or a bot hammering one victim's address) queue at most one mail.
    """
    now = timezone.now()
    window = timedelta(seconds=settings.CONFIRMATION_RESEND_SECONDS)
    claimed = (
        contacts.filter(status=Status.PENDING)
        .exclude(confirmation_sent_at__gt=now - window)
        .update(confirmation_sent_at=now, confirmation_due=True)
    )
    if claimed:
        _queue_confirmation()
    return claimed


@transaction.atomic
def contact_confirm(*, contact: Contact, evidence: Evidence) -> Contact:
    contact = Contact.objects.select_for_update().get(pk=contact.pk)
    if contact.status == Status.SUBSCRIBED:
        return contact
    before = contact.status
    contact.status = Status.SUBSCRIBED
    contact.confirmed_at = timezone.now()
    contact.save(update_fields=["status", "confirmed_at", "updated_at"])
    _record(contact, kind=ConsentEvent.Kind.CONFIRM, before=before, evidence=evidence)
    return contact


@transaction.atomic
def contact_unsubscribe(
    *, contact: Contact, evidence: Evidence, detail: dict | None = None
) -> Contact:
    contact = Contact.objects.select_for_update().get(pk=contact.pk)
    if contact.status in SUPPRESSED:
        return contact
    before = contact.status
    contact.status = Status.UNSUBSCRIBED
    contact.unsubscribed_at = timezone.now()
    contact.save(update_fields=["status", "unsubscribed_at", "updated_at"])
    _record(
        contact, kind=ConsentEvent.Kind.UNSUBSCRIBE, before=before, evidence=evidence, detail=detail
    )
    return contact


@transaction.atomic
def contact_suppress(
    *, contact: Contact, status: str, evidence: Evidence, detail: dict | None = None
) -> Contact:
    """The provider says the address bounced or its owner complained: never mail it again.

    A complaint outranks everything; a bounce does not overwrite an unsubscribe or a
    complaint, which carry more about the person's wishes.
    """
    if status not in (Status.BOUNCED, Status.COMPLAINED):
        raise ValueError(f"contact_suppress takes bounced or complained, not {status!r}")
    contact = Contact.objects.select_for_update().get(pk=contact.pk)
    if contact.status == status or (status == Status.BOUNCED and contact.status in SUPPRESSED):
        return contact
    before = contact.status
    contact.status = status
    contact.save(update_fields=["status", "updated_at"])
    kind = ConsentEvent.Kind.BOUNCE if status == Status.BOUNCED else ConsentEvent.Kind.COMPLAINT
    _record(contact, kind=kind, before=before, evidence=evidence, detail=detail)
    return contact


@transaction.atomic
def contact_update_preferences(
    *, contact: Contact, first_name: str, last_name: str, phone: str, evidence: Evidence
) -> Contact:
    contact = Contact.objects.select_for_update().get(pk=contact.pk)
    old = {"first_name": contact.first_name, "last_name": contact.last_name, "phone": contact.phone}
    new = {"first_name": first_name, "last_name": last_name, "phone": phone}
    if old == new:
        return contact
    for field, value in new.items():
        setattr(contact, field, value)
    contact.save(update_fields=[*new, "updated_at"])
    changed = sorted(field for field in new if old[field] != new[field])
    _record(
        contact,
        kind=ConsentEvent.Kind.PREFERENCES,
        before=contact.status,
        evidence=evidence,
        detail={"changed": changed},
    )
    return contact


# --- admin bulk actions ---------------------------------------------------------------


def tag_get_or_create(*, name: str) -> Tag:
    name = clean_text(name, max_length=100, field="tag")
    if not name:
        raise ValidationError({"tag": "Name the tag."})
    tag = Tag.objects.filter(name__iexact=name).first()
    return tag or Tag.objects.create(name=name)


def contacts_tag(*, contacts: QuerySet[Contact], tag: Tag) -> int:
    through = Contact.tags.through
    ids = list(contacts.values_list("pk", flat=True))
    through.objects.bulk_create(
        [through(contact_id=pk, tag_id=tag.pk) for pk in ids], ignore_conflicts=True
    )
    return len(ids)


def contacts_untag(*, contacts: QuerySet[Contact], tag: Tag) -> int:
    deleted, _ = Contact.tags.through.objects.filter(
        tag=tag, contact_id__in=contacts.values("pk")
    ).delete()
    return deleted


def contacts_unsubscribe(*, contacts: QuerySet[Contact], evidence: Evidence) -> int:
    done = 0
    for contact in contacts.exclude(status__in=SUPPRESSED).only("pk").iterator():
        contact_unsubscribe(contact=contact, evidence=evidence)
        done += 1
    return done


@transaction.atomic
def contact_erase(*, contact: Contact, actor: str = "") -> SuppressedEmail:
    """GDPR erasure: delete the contact and its history; keep only a hash of the address
    so it is never imported or mailed again unless its owner signs up anew."""
    suppressed, _ = SuppressedEmail.objects.get_or_create(
        email_hash=email_hash(contact.email), defaults={"reason": "erased"}
    )
    contact.delete()
    return suppressed


# --- quickstart ---------------------------------------------------------------------


def demo_form_ensure() -> SignupForm:
    form, created = SignupForm.objects.get_or_create(
        public_key="demo",
        defaults={
            "name": "Demo shop footer",
            "title": "We're still here",
            "intro": "When social media goes quiet, we'll write to you directly.",
            "name_field": "optional",
            "phone_field": "optional",
            "consent_text": "Yes, email me news and offers. I can unsubscribe at any time.",
            "allowed_origins": settings.SITE_URL,
        },
    )
    if created:
        form.tags.add(tag_get_or_create(name="demo"))
    return form
