"""Every write to the audience goes through here, and every status change writes its
ConsentEvent in the same transaction (the way Zulip's do_* functions write their audit log).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from datetime import datetime, timedelta

import phonenumbers
import psycopg
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import DataError, IntegrityError, connection, transaction
from django.db.models import QuerySet, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from audience import consent, welcome
from audience.models import (
    ConsentEvent,
    Contact,
    SignupDeferred,
    SignupForm,
    Store,
    SuppressedEmail,
    Tag,
    WelcomeEmail,
)

logger = logging.getLogger(__name__)
Status = Contact.Status
SUPPRESSED = consent.SUPPRESSED

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
    at: datetime | None = None,
) -> ConsentEvent:
    return ConsentEvent.objects.create(
        contact=contact,
        created_at=at or timezone.now(),
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


@dataclass(frozen=True)
class Signup:
    """One visitor's signup through a form, cleaned, with its evidence: what the signup
    buffer (audience.intake) carries from the request to the database."""

    form: SignupForm | None  # None: the form was deleted while the signup was buffered
    email: str
    evidence: Evidence
    consent_text: str  # exactly as shown to the visitor
    double_opt_in: bool
    at: datetime
    first_name: str = ""
    last_name: str = ""
    phone: str = ""


def contact_subscribe(
    *,
    form: SignupForm,
    email: str,
    first_name: str = "",
    last_name: str = "",
    phone: str = "",
    evidence: Evidence,
    defer_known: bool = False,
) -> Contact | None:
    """A visitor signed up through `form`. Inputs must already be cleaned.

    The caller answers the visitor the same way whatever happened here, so nothing
    about the address (new, pending, subscribed) leaks through the public form. With
    `defer_known` (the public view's direct write, on PostgreSQL), an address that is
    already a contact is stored as a SignupDeferred by the same one statement that
    would have inserted it, and applied by a worker (signups_apply_deferred): the
    request then costs the same whether the address is known or not. Returns None then.
    """
    signup = Signup(
        form=form, email=email, first_name=first_name, last_name=last_name, phone=phone,
        evidence=evidence, consent_text=form.consent_text, double_opt_in=form.double_opt_in,
        at=timezone.now(),
    )  # fmt: skip
    if connection.vendor == "postgresql":
        now = timezone.now()
        created = _contacts_insert_new([signup], now=now, defer_known=defer_known)
        if created:
            contact = _contact_as_inserted(signup, created[email], now)
            if contact.confirmation_due:
                _queue_confirmation()
            if _owes_welcome(signup):
                welcome.welcome_queue()  # the statement wrote its row
            return contact
        if defer_known:
            _queue_confirmation()  # the same task applies deferred signups first
            return None
    return _contact_subscribe_any(signup)


def contacts_subscribe_batch(signups: list[Signup]) -> list[int]:
    """Signups taken from the buffer (audience.intake), in the caller's transaction.

    New addresses go in with one statement; known ones, and an address signing up twice
    in the batch, one by one as contact_subscribe would. Returns the positions of the
    signups the database refused (bad data: none pass the form's cleaning), each rolled
    back alone, so the caller can set them aside instead of losing the batch.
    """
    rest = range(len(signups))
    if connection.vendor == "postgresql" and signups:
        first: dict[str, int] = {}
        for position, signup in enumerate(signups):
            first.setdefault(signup.email, position)
        try:
            with transaction.atomic():
                created = _contacts_insert_new([signups[i] for i in first.values()])
        except (IntegrityError, DataError):
            logger.warning("A batch of buffered signups failed; storing them one by one")
            created = {}
        rest = [i for i, s in enumerate(signups) if first[s.email] != i or s.email not in created]
        if any(_decide_new_signup(signups[first[email]]).mail for email in created):
            _queue_confirmation()
        if any(_owes_welcome(signups[first[email]]) for email in created):
            welcome.welcome_queue()
    failed = []
    for position in rest:
        try:
            with transaction.atomic():
                _contact_subscribe_any(signups[position])
        except (IntegrityError, DataError, ValidationError):
            logger.exception("A buffered signup could not be stored: %r", signups[position])
            failed.append(position)
    return failed


def _insert_row(s: Signup, now: datetime) -> list:
    """One signup as a row of the JSON array _contacts_insert_new reads (one parameter:
    psycopg adapts a list per column element by element in Python, three times the
    CPU of one json.dumps; bench/signup.py's worker), with what consent.decide says a
    new address does: its status, whether a double opt-in request opens and is mailed."""
    outcome = _decide_new_signup(s)
    opened = now.isoformat() if outcome.open_request else None
    return [
        s.email, s.first_name, s.last_name, s.phone, outcome.status, s.form and s.form.pk,
        s.at.isoformat(), s.evidence.method, s.evidence.ip,
        (s.evidence.user_agent or "")[:500], s.evidence.actor, s.consent_text,
        s.double_opt_in, email_hash(s.email), opened, outcome.mail,
        outcome.status == Status.SUBSCRIBED and _welcome_on(s.form),
    ]  # fmt: skip


def _welcome_on(form: SignupForm | None) -> bool:
    return form is not None and form.welcome_enabled


def _owes_welcome(signup: Signup) -> bool:
    """A new address's signup is subscribed at once (single opt-in) through a form with a
    welcome: _contacts_insert_new owes the welcome in its statement."""
    return _welcome_on(signup.form) and _decide_new_signup(signup).status == Status.SUBSCRIBED


def _incoming(signup: Signup) -> consent.Incoming:
    ask = consent.ask_of_signup(double_opt_in=signup.double_opt_in)
    return consent.Incoming(consent.Via.SIGNUP, ask, signup.at)


def _resend_window() -> timedelta:
    return timedelta(seconds=settings.CONFIRMATION_RESEND_SECONDS)


def _decide_new_signup(signup: Signup) -> consent.Outcome:
    # A new address's outcome does not depend on the clock: `now` is not read.
    return consent.decide(None, _incoming(signup), now=signup.at, resend_window=_resend_window())


def _contacts_insert_new(
    signups: list[Signup], *, now: datetime | None = None, defer_known: bool = False
) -> dict[str, int]:
    """The common case, new addresses, in one statement and one round trip: lift any
    erasure suppression, insert the contacts, their consent events and their forms'
    tags. Returns {email: id} of the contacts inserted; an address already a contact is
    left out (ON CONFLICT did nothing). Emails must be distinct.

    This is the signup hot path (bench/signup.py), one row at a time when a signup is
    written in its request, a buffer's batch at a time otherwise; the ORM path below
    costs eight round trips a signup for the same work. One statement is atomic.
    """
    now = now or timezone.now()
    params = {
        "rows": json.dumps([_insert_row(s, now) for s in signups], ensure_ascii=False),
        "source": Contact.Source.FORM, "kind": ConsentEvent.Kind.SIGNUP,
        "pending": Status.PENDING, "now": now, "defer": defer_known,
        "owed": WelcomeEmail.State.OWED,
    }  # fmt: skip
    sql = f"""
        WITH input AS (
            SELECT r->>0 AS email, r->>1 AS first_name, r->>2 AS last_name, r->>3 AS phone,
                r->>4 AS status, (r->>5)::bigint AS form_id, (r->>6)::timestamptz AS at,
                r->>7 AS method, (r->>8)::inet AS ip, r->>9 AS user_agent, r->>10 AS actor,
                r->>11 AS consent_text,
                jsonb_build_object('double_opt_in', (r->>12)::boolean) AS detail,
                r->>13 AS hash, (r->>14)::timestamptz AS requested_at,
                (r->>15)::boolean AS mail, (r->>16)::boolean AS welcome, r
            FROM jsonb_array_elements(%(rows)s::jsonb) AS r
        ), lifted AS (
            -- Signing up lifts an erasure's suppression, but only one from before the
            -- signup: an erasure asked for after it (while it waited in the buffer) wins.
            DELETE FROM {SuppressedEmail._meta.db_table} AS suppressed USING input
            WHERE suppressed.email_hash = input.hash AND suppressed.created_at <= input.at
        ), created AS (
            INSERT INTO {Contact._meta.db_table} (email, first_name, last_name, phone, status,
                attributes, source, signup_form_id, created_at, updated_at, confirmed_at,
                unsubscribed_at, confirmation_sent_at, confirmation_due, optin_requested_at)
            SELECT email, first_name, last_name, phone, status, '{{}}', %(source)s, form_id,
                at, at, CASE WHEN status <> %(pending)s THEN at END, NULL,
                -- A new contact has had no confirmation yet: claim the window at insert.
                -- The resend window runs from now, when the mail is owed, even for a
                -- signup that waited in the buffer.
                CASE WHEN mail THEN %(now)s END, mail, requested_at
            FROM input
            WHERE NOT EXISTS (
                SELECT 1 FROM {SuppressedEmail._meta.db_table} AS suppressed
                WHERE suppressed.email_hash = input.hash AND suppressed.created_at > input.at
            )
            ON CONFLICT (email) DO NOTHING
            RETURNING id, email, status
        ), evidence AS (
            INSERT INTO {ConsentEvent._meta.db_table} (contact_id, created_at, kind, method,
                status_before, status_after, ip, user_agent, signup_form_id, consent_text,
                actor, detail)
            SELECT created.id, at, %(kind)s, method, '', created.status, ip, user_agent,
                form_id, consent_text, actor, detail
            FROM created JOIN input USING (email)
        ), tagged AS (
            INSERT INTO {Contact.tags.through._meta.db_table} (contact_id, tag_id)
            SELECT created.id, form_tag.tag_id
            FROM created JOIN input USING (email)
            JOIN {SignupForm.tags.through._meta.db_table} AS form_tag
                ON form_tag.signupform_id = input.form_id
        ), welcomed AS (
            -- Subscribed at once through a form with a welcome (audience.welcome): owed
            -- in this same statement, so it commits with the contact or not at all.
            INSERT INTO {WelcomeEmail._meta.db_table} (contact_id, signup_form_id, state,
                created_at, message_id, error)
            SELECT created.id, form_id, %(owed)s, %(now)s, '', ''
            FROM created JOIN input USING (email)
            WHERE input.welcome
            ON CONFLICT (contact_id) DO NOTHING
        ), deferred AS (
            -- A known address (with defer): kept whole for a worker to apply, written
            -- by this same statement so that the request costs the same either way.
            INSERT INTO {SignupDeferred._meta.db_table} (signup, created_at)
            SELECT jsonb_build_object('email', email, 'first_name', first_name,
                'last_name', last_name, 'phone', phone, 'form_id', form_id,
                'at', r->>6, 'method', method, 'ip', ip, 'user_agent', user_agent,
                'actor', actor, 'consent_text', consent_text,
                'double_opt_in', (r->>12)::boolean), %(now)s
            FROM input
            WHERE %(defer)s AND email NOT IN (SELECT email FROM created)
        )
        SELECT email, id FROM created
    """  # noqa: S608 (table names from model metadata; every value is a parameter)
    return dict(_execute_prepared(sql, params))


def _contact_as_inserted(signup: Signup, contact_id: int, now: datetime) -> Contact:
    """The Contact _contacts_insert_new wrote, without reading it back."""
    outcome = _decide_new_signup(signup)
    contact = Contact(
        id=contact_id, email=signup.email, first_name=signup.first_name,
        last_name=signup.last_name, phone=signup.phone, status=outcome.status,
        source=Contact.Source.FORM, signup_form=signup.form, created_at=signup.at,
        updated_at=signup.at,
        confirmed_at=signup.at if outcome.status != Status.PENDING else None,
        confirmation_sent_at=now if outcome.mail else None, confirmation_due=outcome.mail,
        optin_requested_at=now if outcome.open_request else None,
    )  # fmt: skip
    contact._state.adding = False
    contact._state.db = "default"
    return contact


def _execute_prepared(sql: str, params: dict) -> list[tuple]:
    """Run a hot statement as a prepared statement and return its rows.

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
        return cursor.fetchall()


def contact_state(contact: Contact) -> consent.State:
    """A stored contact as consent.decide sees it (the contact should be locked)."""
    last_signup = (
        ConsentEvent.objects.filter(contact_id=contact.pk, kind=ConsentEvent.Kind.SIGNUP)
        .order_by("-created_at")
        .values_list("created_at", flat=True)
        .first()
    )
    return consent.State(
        status=contact.status,
        request_open=contact.optin_requested_at is not None,
        confirmation_sent_at=contact.confirmation_sent_at,
        unsubscribed_at=contact.unsubscribed_at,
        last_signup_at=last_signup,
    )


@transaction.atomic
def _contact_subscribe_any(signup: Signup) -> Contact | None:
    """Any address, new or known, through the ORM (SQLite, and known addresses), as
    consent.decide says. None if the address was erased after the signup."""
    email, form = signup.email, signup.form
    # Signing up anew is the owner's own act: it lifts an erasure's suppression, unless
    # the erasure came after this signup (which waited in the buffer): then it wins.
    suppression = SuppressedEmail.objects.filter(email_hash=email_hash(email)).first()
    if suppression is not None:
        if suppression.created_at > signup.at:
            logger.info("A buffered signup older than its address's erasure was dropped")
            return None
        suppression.delete()
    now = timezone.now()
    new = _decide_new_signup(signup)
    contact, created = Contact.objects.select_for_update().get_or_create(
        email=email,
        defaults={
            "first_name": signup.first_name,
            "last_name": signup.last_name,
            "phone": signup.phone,
            "source": Contact.Source.FORM,
            "signup_form": form,
            "status": new.status,
            "created_at": signup.at,
            "confirmed_at": signup.at if new.status != Status.PENDING else None,
            # The mail window runs from now, when the mail is owed, even for a signup
            # that waited in the buffer.
            "confirmation_sent_at": now if new.mail else None,
            "confirmation_due": new.mail,
            "optin_requested_at": now if new.open_request else None,
        },
    )
    status_before = "" if created else contact.status
    if created:
        outcome = new
    else:
        outcome = consent.decide(
            contact_state(contact), _incoming(signup), now=now, resend_window=_resend_window()
        )
        if not outcome.writes:
            return contact
        _apply_request(contact, outcome, now=now)
    if status_before != Status.SUBSCRIBED:
        welcome.welcome_owe(contact=contact, signup_form=form)
    tags = list(form.tags.all()) if form is not None else []
    if tags:
        through = Contact.tags.through
        through.objects.bulk_create(
            [through(contact_id=contact.pk, tag_id=tag.pk) for tag in tags], ignore_conflicts=True
        )
    if outcome.event:
        _record(
            contact,
            kind=ConsentEvent.Kind.SIGNUP,
            before="" if created else contact.status,
            evidence=signup.evidence,
            signup_form=form,
            consent_text=signup.consent_text,
            detail={"double_opt_in": signup.double_opt_in},
            at=signup.at,
        )
    if outcome.mail:
        _queue_confirmation()
    return contact


def _apply_request(contact: Contact, outcome: consent.Outcome, *, now: datetime) -> None:
    """Open a double opt-in request and owe its mail on a known, locked contact, as the
    outcome says; its status is the outcome's (a signup never changes it by itself)."""
    fields = []
    if outcome.status != contact.status:
        contact.status = outcome.status
        fields.append("status")
    if outcome.open_request:
        contact.optin_requested_at = now
        fields.append("optin_requested_at")
    if outcome.mail:
        contact.confirmation_sent_at, contact.confirmation_due = now, True
        fields += ["confirmation_sent_at", "confirmation_due"]
    if fields:
        contact.save(update_fields=[*fields, "updated_at"])


def signups_apply_deferred(*, limit: int = 500) -> tuple[int, bool]:
    """Apply the signups deferred by contact_subscribe(defer_known=True), oldest first,
    each as _contact_subscribe_any decides; return (applied, more_left). Safe on many
    workers at once (SKIP LOCKED). A signup that cannot be applied is logged and kept."""
    if connection.vendor != "postgresql":
        return 0, False  # only PostgreSQL's insert defers
    applied, forms = 0, {}
    with transaction.atomic():
        rows = list(
            SignupDeferred.objects.select_for_update(skip_locked=True).order_by("pk")[:limit]
        )
        done = []
        for row in rows:
            try:
                with transaction.atomic():
                    _contact_subscribe_any(_deferred_signup(row.signup, forms))
            except (IntegrityError, DataError, ValidationError, KeyError, ValueError):
                logger.exception("Deferred signup %s could not be applied; kept", row.pk)
                continue
            done.append(row.pk)
        SignupDeferred.objects.filter(pk__in=done).delete()
        applied = len(done)
    # Rows kept because they failed do not make "more": the sweep tries them again.
    return applied, applied == limit


def _deferred_signup(data: dict, forms: dict) -> Signup:
    form_id = data["form_id"]
    if form_id not in forms:
        forms[form_id] = SignupForm.objects.filter(pk=form_id).first() if form_id else None
    evidence = Evidence(
        method=data["method"], ip=data["ip"], user_agent=data["user_agent"],
        actor=data["actor"],
    )  # fmt: skip
    return Signup(
        form=forms[form_id], email=data["email"], evidence=evidence,
        consent_text=data["consent_text"], double_opt_in=data["double_opt_in"],
        at=datetime.fromisoformat(data["at"]), first_name=data["first_name"],
        last_name=data["last_name"], phone=data["phone"],
    )  # fmt: skip


def _queue_confirmation() -> None:
    """The contact's confirmation_due is set: have it sent once this transaction commits."""
    from audience import confirmations  # imports audience.tokens, which imports us

    transaction.on_commit(confirmations.kick)


def confirmation_request(*, contact: Contact) -> bool:
    """Queue a double opt-in mail unless one went out in the last window."""
    return bool(confirmations_request(contacts=Contact.objects.filter(pk=contact.pk)))


def confirmations_request(*, contacts: QuerySet[Contact]) -> int:
    """Owe a double opt-in mail to each pending contact in `contacts` that was not sent one
    in the last window, opening its request if none is open; return how many. One
    UPDATE, whatever the number of contacts.

    The window is claimed with that conditional UPDATE, so two concurrent signups for the
    same address (or a bot hammering one victim's address) queue at most one mail.
    """
    now = timezone.now()
    claimed = (
        contacts.filter(status=Status.PENDING)
        .exclude(confirmation_sent_at__gt=now - _resend_window())
        .update(
            confirmation_sent_at=now,
            confirmation_due=True,
            optin_requested_at=Coalesce("optin_requested_at", Value(now)),
        )
    )
    if claimed:
        _queue_confirmation()
    return claimed


@dataclass(frozen=True)
class Resend:
    """What contact_confirmation_resend did: queued, or why not and when it may."""

    queued: bool
    reason: str = ""
    retry_at: datetime | None = None


@transaction.atomic
def contact_confirmation_resend(*, contact: Contact, evidence: Evidence) -> Resend:
    """The owner asked, from the contact's page, to send a pending contact's double
    opt-in mail again: owe it for the contact's current request (a fresh link for the
    same request: an earlier link keeps working, no new episode is opened unless none
    is open), with an admin ConsentEvent naming who asked.

    Rate-limited by the same conditional UPDATE as every other confirmation (one mail
    per CONFIRMATION_RESEND_SECONDS per contact), so repeated clicks, two tabs or two
    admins queue one mail, and nobody can use the button to flood an inbox.
    """
    contact = Contact.objects.select_for_update().get(pk=contact.pk)
    if contact.status != Status.PENDING:
        return Resend(False, f"Only a pending contact is sent a confirmation ({contact.status}).")
    if not confirmations_request(contacts=Contact.objects.filter(pk=contact.pk)):
        retry_at = (contact.confirmation_sent_at or timezone.now()) + _resend_window()
        return Resend(False, "A confirmation was sent moments ago.", retry_at)
    contact.refresh_from_db(fields=["confirmation_sent_at", "optin_requested_at"])
    _record(
        contact, kind=ConsentEvent.Kind.ADMIN, before=contact.status, evidence=evidence,
        detail={"action": "resend-confirmation"},
    )  # fmt: skip
    return Resend(True)


@transaction.atomic
def contact_mark_subscribed(*, contact: Contact, statement: str, evidence: Evidence) -> Contact:
    """The owner has consent evidence of their own for a pending contact (a signed paper
    form, an order with the box ticked) and says so: the contact is subscribed, with a
    ConsentEvent holding that statement and the acting user.

    Only from pending. A contact who unsubscribed, bounced or complained is moved back to
    subscribed by nothing but their own act (ARCHITECTURE.md): their own confirm link or
    signup, never an admin's word.
    """
    statement = clean_text(statement, max_length=2000, field="statement")
    if not statement:
        raise ValidationError({"statement": "Say how this person gave their consent."})
    contact = Contact.objects.select_for_update().get(pk=contact.pk)
    if contact.status in SUPPRESSED:
        raise ValidationError(
            f"This contact is {contact.get_status_display().lower()}: only their own act "
            "(their confirm link, or signing up again) can subscribe them again, not an admin."
        )
    if contact.status != Status.PENDING:
        raise ValidationError("This contact is already subscribed.")
    before = contact.status
    contact.status = Status.SUBSCRIBED
    contact.confirmed_at = timezone.now()
    closed = _close_request(contact)  # the open request is answered: its mail not owed
    contact.save(update_fields=["status", "confirmed_at", *closed, "updated_at"])
    _record(
        contact, kind=ConsentEvent.Kind.ADMIN, before=before, evidence=evidence,
        consent_text=statement, detail={"action": "mark-subscribed"},
    )  # fmt: skip
    _welcome_owe_confirmed(contact)
    return contact


@transaction.atomic
def contact_confirm(
    *, contact: Contact, requested_at: datetime, evidence: Evidence
) -> Contact | None:
    """The owner clicked the confirm link of the double opt-in request opened at
    `requested_at`. Subscribes the contact if that request is still its open one (not
    closed by a confirmation, an unsubscribe or a bounce since, nor replaced); else
    None, and nothing changes."""
    contact = Contact.objects.select_for_update().get(pk=contact.pk)
    if contact.optin_requested_at != requested_at or not consent.may_confirm(
        contact_state(contact)
    ):
        return None
    before = contact.status
    contact.status = Status.SUBSCRIBED
    contact.confirmed_at = timezone.now()
    contact.optin_requested_at = None
    contact.confirmation_due = False
    contact.save(
        update_fields=[
            "status", "confirmed_at", "optin_requested_at", "confirmation_due", "updated_at"
        ]
    )  # fmt: skip
    _record(contact, kind=ConsentEvent.Kind.CONFIRM, before=before, evidence=evidence)
    _welcome_owe_confirmed(contact)
    return contact


def _welcome_owe_confirmed(contact: Contact) -> None:
    """`contact` confirmed (or was marked subscribed): owe the welcome of the form its
    latest signup came through, else of the store it is a customer of (a store's customer
    asked by double opt-in is welcomed by that store once they confirm)."""
    form = _confirmed_form(contact)
    store = None
    if form is None:
        store = (
            Store.objects.filter(customers__contact=contact, enabled=True)
            .order_by("-customers__id")
            .first()
        )
    welcome.welcome_owe(contact=contact, signup_form=form, store=store)


def _confirmed_form(contact: Contact) -> SignupForm | None:
    """The form of the signup a confirmation answers: the latest one through a form (an
    imported contact who signs up later has none of its own), else the contact's."""
    form_id = (
        ConsentEvent.objects.filter(
            contact_id=contact.pk, kind=ConsentEvent.Kind.SIGNUP, signup_form__isnull=False
        )
        .order_by("-created_at", "-id")
        .values_list("signup_form_id", flat=True)
        .first()
    )
    if form_id is None:
        return contact.signup_form
    return SignupForm.objects.filter(pk=form_id).first()


def _close_request(contact: Contact) -> list[str]:
    """An open double opt-in request ends with any suppression: its links stop working
    and its mail, if not sent yet, is not sent."""
    contact.optin_requested_at = None
    contact.confirmation_due = False
    return ["optin_requested_at", "confirmation_due"]


@transaction.atomic
def contact_unsubscribe(
    *, contact: Contact, evidence: Evidence, detail: dict | None = None
) -> Contact:
    contact = Contact.objects.select_for_update().get(pk=contact.pk)
    before = contact.status
    if before in SUPPRESSED:
        if contact.optin_requested_at is not None:
            # Asked to come back (a signup), then said no: the request ends, and the
            # owner's answer is evidence too; a signup older than it changes nothing.
            contact.unsubscribed_at = timezone.now()
            closed = _close_request(contact)
            contact.save(update_fields=["unsubscribed_at", *closed, "updated_at"])
            _record(
                contact, kind=ConsentEvent.Kind.UNSUBSCRIBE, before=before, evidence=evidence,
                detail=detail,
            )  # fmt: skip
        return contact
    contact.status = Status.UNSUBSCRIBED
    contact.unsubscribed_at = timezone.now()
    closed = _close_request(contact)
    contact.save(update_fields=["status", "unsubscribed_at", *closed, "updated_at"])
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
    complaint, which carry more about the person's wishes. Either ends an open double
    opt-in request.
    """
    if status not in (Status.BOUNCED, Status.COMPLAINED):
        raise ValueError(f"contact_suppress takes bounced or complained, not {status!r}")
    contact = Contact.objects.select_for_update().get(pk=contact.pk)
    if contact.status == status or (status == Status.BOUNCED and contact.status in SUPPRESSED):
        if contact.optin_requested_at is not None:
            contact.save(update_fields=[*_close_request(contact), "updated_at"])
        return contact
    before = contact.status
    contact.status = status
    contact.save(update_fields=["status", *_close_request(contact), "updated_at"])
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


# --- admin ---------------------------------------------------------------------------

ADMIN_FIELDS = ("email", "first_name", "last_name", "phone", "attributes")


@transaction.atomic
def contact_create(
    *,
    email: str,
    first_name: str = "",
    last_name: str = "",
    phone: str = "",
    attributes: dict | None = None,
    tags: list[Tag] | tuple[Tag, ...] = (),
    evidence: Evidence,
) -> Contact:
    """A contact added by hand in the admin. Inputs must already be cleaned.

    Someone typing an address in is no proof of its owner's consent: the contact is
    pending and is sent a double opt-in mail, as a signup would be. Written with an
    admin ConsentEvent naming the user who did it.
    """
    now = timezone.now()
    contact = Contact.objects.create(
        email=email, first_name=first_name, last_name=last_name, phone=phone,
        attributes=attributes or {}, source=Contact.Source.ADMIN, status=Status.PENDING,
        optin_requested_at=now, confirmation_sent_at=now, confirmation_due=True,
    )  # fmt: skip
    if tags:
        contact.tags.set(tags)
    _record(contact, kind=ConsentEvent.Kind.ADMIN, before="", evidence=evidence)
    _queue_confirmation()
    return contact


@transaction.atomic
def contact_update(
    *,
    contact: Contact,
    values: dict[str, object],
    tags: list[Tag] | tuple[Tag, ...] | None = None,
    evidence: Evidence,
) -> Contact:
    """Details of a contact edited in the admin (ADMIN_FIELDS and tags), with an admin
    ConsentEvent saying what changed and who changed it.

    The status is not edited here: only its owner moves a contact back to subscribed.
    A new address is not the one that consented: a subscribed or pending contact whose
    address changes is pending again, with a new double opt-in request to the new
    address (the old request's links stop working).
    """
    contact = Contact.objects.select_for_update().get(pk=contact.pk)
    changed = sorted(f for f in ADMIN_FIELDS if f in values and getattr(contact, f) != values[f])
    for field in changed:
        setattr(contact, field, values[field])
    fields = list(changed)
    before = contact.status
    if "email" in changed and contact.status in SUPPRESSED:
        # A request opened for the old address must not be confirmed from the new one.
        fields += _close_request(contact)
    elif "email" in changed:
        now = timezone.now()
        contact.status = Status.PENDING
        contact.optin_requested_at = now
        contact.confirmation_sent_at, contact.confirmation_due = now, True
        fields += ["status", "optin_requested_at", "confirmation_sent_at", "confirmation_due"]
        _queue_confirmation()
    if tags is not None:
        old = set(contact.tags.values_list("pk", flat=True))
        if old != {tag.pk for tag in tags}:
            contact.tags.set(tags)
            changed.append("tags")
    if fields:
        contact.save(update_fields=[*fields, "updated_at"])
    if changed:
        _record(
            contact, kind=ConsentEvent.Kind.ADMIN, before=before, evidence=evidence,
            detail={"changed": changed},
        )  # fmt: skip
    return contact


# --- admin bulk actions ---------------------------------------------------------------


def tag_get_or_create(*, name: str) -> Tag:
    name = clean_text(name, max_length=100, field="tag")
    if not name:
        raise ValidationError({"tag": "Name the tag."})
    tag = Tag.objects.filter(name__iexact=name).first()
    if tag is not None:
        return tag
    try:
        with transaction.atomic():  # a savepoint: the caller's transaction goes on
            return Tag.objects.create(name=name)
    except IntegrityError:
        # Made meanwhile by a concurrent call (two API calls naming one new tag): our
        # insert waited for its commit. Use that one.
        return Tag.objects.get(name__iexact=name)


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


# --- Soft bounces (campaigns.feedback calls these once per campaign message) -----------


@transaction.atomic
def contact_soft_bounce(
    *, contact: Contact, evidence: Evidence, detail: dict | None = None
) -> Contact:
    """One more campaign message in a row soft-bounced (the provider's temporary failure).

    At SOFT_BOUNCE_LIMIT in a row the address is treated as bounced: suppressed with a
    ConsentEvent, like a hard bounce. The caller counts each message once (the first soft
    bounce of its Delivery), so a provider's retries of one message are one in the row.
    """
    contact = Contact.objects.select_for_update().get(pk=contact.pk)
    contact.soft_bounce_count += 1
    contact.save(update_fields=["soft_bounce_count"])
    limit = settings.SOFT_BOUNCE_LIMIT
    if contact.soft_bounce_count >= limit and contact.status not in SUPPRESSED:
        detail = {
            **(detail or {}),
            "soft_bounces": contact.soft_bounce_count,
            "reason": f"{contact.soft_bounce_count} messages in a row soft-bounced "
            f"(SOFT_BOUNCE_LIMIT={limit})",
        }
        return contact_suppress(
            contact=contact, status=Status.BOUNCED, evidence=evidence, detail=detail
        )
    return contact


def contact_soft_bounce_reset(*, contact: Contact) -> bool:
    """A campaign message reached the address: its soft bounces are no longer in a row.
    A conditional UPDATE, so the usual delivered event with nothing to reset writes
    nothing."""
    return bool(
        Contact.objects.filter(pk=contact.pk, soft_bounce_count__gt=0).update(soft_bounce_count=0)
    )
