import base64
from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from audience import services
from audience.models import ConsentEvent, Contact, SuppressedEmail
from audience.tokens import make_token
from tests.factories import ContactFactory, SignupFormFactory, TagFactory

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("eager_tasks")]

EVIDENCE = services.Evidence(method="form-html", ip="203.0.113.7", user_agent="Firefox")


def _subscribe(form, email="Anna@Example.com ", **fields):
    return services.contact_subscribe(form=form, email=services.normalize_email(email),
                                      evidence=EVIDENCE, **fields)  # fmt: skip


def test_signup_creates_a_pending_contact_with_its_consent_record(
    django_capture_on_commit_callbacks, mailoutbox
):
    tag = TagFactory(name="footer")
    form = SignupFormFactory()
    form.tags.add(tag)
    with django_capture_on_commit_callbacks(execute=True):
        contact = _subscribe(form, first_name="Anna", phone="+14155550100")

    contact.refresh_from_db()
    assert contact.email == "anna@example.com"
    assert contact.status == Contact.Status.PENDING
    assert contact.source == Contact.Source.FORM
    assert list(contact.tags.all()) == [tag]
    event = contact.consent_events.get()
    assert (event.kind, event.status_before, event.status_after) == ("signup", "", "pending")
    assert event.ip == "203.0.113.7"
    assert event.user_agent == "Firefox"
    assert event.signup_form == form
    assert event.consent_text == form.consent_text
    assert len(mailoutbox) == 1
    assert mailoutbox[0].to == ["anna@example.com"]
    assert "/confirm/" in mailoutbox[0].body


def test_signup_compares_email_case_insensitively():
    form = SignupFormFactory()
    first = _subscribe(form, email="Sam@Shop.com")
    second = _subscribe(form, email="  sam@SHOP.com")
    assert first.pk == second.pk
    assert Contact.objects.count() == 1


def test_repeated_signups_send_at_most_one_confirmation_per_window(
    django_capture_on_commit_callbacks, mailoutbox
):
    form = SignupFormFactory()
    with django_capture_on_commit_callbacks(execute=True):
        for _ in range(5):
            _subscribe(form)
    assert len(mailoutbox) == 1

    # After the window a new signup may send a fresh link.
    Contact.objects.update(confirmation_sent_at=timezone.now() - timedelta(minutes=11))
    with django_capture_on_commit_callbacks(execute=True):
        _subscribe(form)
    assert len(mailoutbox) == 2


def test_signup_of_a_subscribed_contact_changes_nothing_and_sends_nothing(
    django_capture_on_commit_callbacks, mailoutbox
):
    ContactFactory(email="anna@example.com", first_name="Anna", status="subscribed")
    with django_capture_on_commit_callbacks(execute=True):
        contact = _subscribe(SignupFormFactory(), first_name="Mallory")
    assert contact.status == "subscribed"
    assert contact.first_name == "Anna"  # a public form never overwrites what we have
    assert mailoutbox == []


@pytest.mark.parametrize(
    ("status", "mailed"), [("unsubscribed", 1), ("bounced", 1), ("complained", 0)]
)
def test_a_signup_never_resubscribes_a_suppressed_contact_by_itself(
    status, mailed, django_capture_on_commit_callbacks, mailoutbox
):
    ContactFactory(email="anna@example.com", status=status)
    form = SignupFormFactory(double_opt_in=False)  # even a single opt-in form
    with django_capture_on_commit_callbacks(execute=True):
        contact = _subscribe(form)
    contact.refresh_from_db()
    assert contact.status == status  # only its owner's click can change it
    assert len(mailoutbox) == mailed


def test_a_suppressed_contact_comes_back_only_by_the_link_of_its_own_new_request(
    django_capture_on_commit_callbacks, mailoutbox
):
    contact = ContactFactory(email="anna@example.com", status="unsubscribed")
    with django_capture_on_commit_callbacks(execute=True):
        _subscribe(SignupFormFactory())
    contact.refresh_from_db()
    assert contact.status == "unsubscribed"
    assert contact.optin_requested_at is not None
    confirmed = services.contact_confirm(
        contact=contact, requested_at=contact.optin_requested_at,
        evidence=services.Evidence(method="confirm-link"),
    )  # fmt: skip
    assert confirmed is not None
    contact.refresh_from_db()
    assert (contact.status, contact.optin_requested_at) == ("subscribed", None)
    event = contact.consent_events.get(kind="confirm")
    assert (event.status_before, event.status_after) == ("unsubscribed", "subscribed")


def test_single_opt_in_form_subscribes_a_new_contact_at_once(mailoutbox):
    contact = _subscribe(SignupFormFactory(double_opt_in=False))
    assert contact.status == "subscribed"
    assert contact.confirmed_at is not None
    assert mailoutbox == []


def test_confirm_subscribes_and_records_the_event():
    contact = ContactFactory(status="pending")
    evidence = services.Evidence(method="confirm-link", ip="198.51.100.1")
    services.contact_confirm(
        contact=contact, requested_at=contact.optin_requested_at, evidence=evidence
    )
    contact.refresh_from_db()
    assert contact.status == "subscribed"
    event = contact.consent_events.get()
    assert (event.kind, event.status_before, event.status_after, event.method) == (
        "confirm", "pending", "subscribed", "confirm-link")  # fmt: skip


def test_unsubscribe_is_recorded_once():
    contact = ContactFactory(status="subscribed")
    evidence = services.Evidence(method="one-click")
    services.contact_unsubscribe(contact=contact, evidence=evidence)
    services.contact_unsubscribe(contact=contact, evidence=evidence)
    contact.refresh_from_db()
    assert contact.status == "unsubscribed"
    assert contact.unsubscribed_at is not None
    assert contact.consent_events.filter(kind="unsubscribe").count() == 1


def test_preferences_update_records_what_changed():
    contact = ContactFactory(first_name="Ann", phone="")
    services.contact_update_preferences(
        contact=contact, first_name="Anna", last_name=contact.last_name, phone="+447911123456",
        evidence=services.Evidence(method="preferences"),
    )  # fmt: skip
    event = contact.consent_events.get(kind="preferences")
    assert event.detail == {"changed": ["first_name", "phone"]}


def test_erase_keeps_only_a_hash_and_a_new_signup_lifts_it():
    contact = ContactFactory(email="gone@example.com")
    services.contact_erase(contact=contact)
    assert not Contact.objects.filter(email="gone@example.com").exists()
    assert not ConsentEvent.objects.exists()
    suppressed = SuppressedEmail.objects.get()
    assert suppressed.email_hash == services.email_hash("gone@example.com")
    assert "gone" not in suppressed.email_hash

    _subscribe(SignupFormFactory(), email="Gone@example.com")
    assert not SuppressedEmail.objects.exists()
    assert Contact.objects.get(email="gone@example.com").status == "pending"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("(415) 555-0100", "+14155550100"), ("+44 7911 123456", "+447911123456"), ("", "")],
)
def test_phone_is_stored_in_e164(raw, expected):
    assert services.normalize_phone(raw) == expected


@pytest.mark.parametrize("raw", ["12", "not a phone", "+1 555", "9" * 60])
def test_invalid_phone_is_refused(raw):
    with pytest.raises(ValidationError):
        services.normalize_phone(raw)


def test_text_cleaning_strips_line_breaks_but_keeps_unicode():
    assert services.clean_text("Zoë\r\nBcc: x@evil", max_length=100, field="n") == "Zoë Bcc: x@evil"
    assert services.clean_text("  李 小龍  ", max_length=100, field="n") == "李 小龍"


def test_bulk_tag_and_untag():
    contacts = ContactFactory.create_batch(3)
    tag = services.tag_get_or_create(name="VIP")
    assert services.tag_get_or_create(name="vip") == tag
    qs = Contact.objects.filter(pk__in=[c.pk for c in contacts])
    services.contacts_tag(contacts=qs, tag=tag)
    services.contacts_tag(contacts=qs, tag=tag)  # idempotent
    assert tag.contacts.count() == 3
    services.contacts_untag(contacts=qs[:1], tag=tag)
    assert tag.contacts.count() == 2


def test_confirmation_subject_is_plain_text(mailoutbox, django_capture_on_commit_callbacks):
    form = SignupFormFactory(title="We're still here & open")
    with django_capture_on_commit_callbacks(execute=True):
        _subscribe(form)
    assert mailoutbox[0].subject == "Please confirm your subscription: We're still here & open"


def test_links_do_not_reveal_the_address():
    contact = ContactFactory(email="secretname@example.com")
    payload = make_token("unsubscribe", contact).split(":")[0]
    decoded = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    assert b"secret" not in decoded


def test_a_known_address_is_taken_in_its_request_and_applied_by_the_worker(
    django_capture_on_commit_callbacks, mailoutbox
):
    """The public view's direct write does for a known address what it does for a new
    one, one statement, so the answer's time does not tell them apart; the worker's
    task applies it after commit, with the consent rules of any signup."""
    from django.db import connection

    from audience.models import SignupDeferred

    known = ContactFactory(email="anna@example.com", status="unsubscribed")
    form = SignupFormFactory()
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        result = _subscribe(form, defer_known=True)
    if connection.vendor != "postgresql":
        assert result.pk == known.pk  # SQLite (the quickstart) writes it in the request
        return
    assert result is None
    assert SignupDeferred.objects.count() == 1
    known.refresh_from_db()
    assert known.optin_requested_at is None  # nothing applied yet
    for callback in callbacks:
        callback()  # the kick: the worker's task (eager here) applies it
    assert not SignupDeferred.objects.exists()
    known.refresh_from_db()
    assert known.status == "unsubscribed"
    assert known.optin_requested_at is not None
    event = known.consent_events.get(kind="signup")
    assert (event.ip, event.signup_form_id) == ("203.0.113.7", form.pk)
    assert [m.to for m in mailoutbox] == [["anna@example.com"]]


def test_saying_no_to_a_new_request_wins_over_a_signup_from_before_it(mailoutbox):
    contact = ContactFactory(email="anna@example.com", status="unsubscribed")
    form = SignupFormFactory()
    _subscribe(form)  # someone asks for the address to come back
    before_no = timezone.now()
    services.contact_unsubscribe(contact=contact, evidence=services.Evidence(method="one-click"))
    late = services.Signup(
        form=form, email="anna@example.com", evidence=EVIDENCE,
        consent_text=form.consent_text, double_opt_in=True, at=before_no,
    )  # fmt: skip  # a signup from before the "no", applied after it (it waited in the buffer)
    services.contacts_subscribe_batch([late])
    contact.refresh_from_db()
    assert (contact.status, contact.optin_requested_at) == ("unsubscribed", None)


# --- resend confirmation, mark subscribed with evidence (the contact page) ---------------

ADMIN = services.Evidence(method="admin", ip="192.0.2.1", actor="owner")


def _pending(**fields):
    return ContactFactory(
        status=Contact.Status.PENDING,
        confirmation_sent_at=timezone.now() - timedelta(hours=2),
        **fields,
    )


def test_resend_mails_a_fresh_link_for_the_same_request_once_per_window(
    mailoutbox, django_capture_on_commit_callbacks, client
):
    contact = _pending()
    requested = contact.optin_requested_at
    old_token = make_token("confirm", contact)
    with django_capture_on_commit_callbacks(execute=True):
        done = services.contact_confirmation_resend(contact=contact, evidence=ADMIN)
    assert done.queued
    assert [m.to for m in mailoutbox] == [[contact.email]]
    contact.refresh_from_db()
    assert contact.optin_requested_at == requested  # the same episode: no new request
    assert not contact.confirmation_due  # sent
    event = contact.consent_events.get()
    assert (event.kind, event.actor, event.detail) == (
        "admin", "owner", {"action": "resend-confirmation"}
    )  # fmt: skip

    # Clicking again at once (or from a second tab) sends nothing, and says when it may.
    with django_capture_on_commit_callbacks(execute=True):
        again = services.contact_confirmation_resend(contact=contact, evidence=ADMIN)
    assert not again.queued
    assert again.retry_at > timezone.now()
    assert len(mailoutbox) == 1
    assert contact.consent_events.count() == 1

    # Both links are for the open request: the earlier one still confirms it.
    assert client.post(f"/confirm/{old_token}/").status_code == 200
    contact.refresh_from_db()
    assert contact.status == Contact.Status.SUBSCRIBED


@pytest.mark.parametrize("status", ["subscribed", "unsubscribed", "bounced", "complained"])
def test_resend_is_only_for_pending_contacts(
    status, mailoutbox, django_capture_on_commit_callbacks
):
    contact = ContactFactory(status=status)
    with django_capture_on_commit_callbacks(execute=True):
        done = services.contact_confirmation_resend(contact=contact, evidence=ADMIN)
    assert not done.queued and done.retry_at is None
    assert "Only a pending contact" in done.reason
    assert not mailoutbox
    assert not contact.consent_events.exists()


def test_mark_subscribed_records_the_owners_evidence_and_ends_the_request(client):
    contact = _pending()
    token = make_token("confirm", contact)
    Contact.objects.filter(pk=contact.pk).update(confirmation_due=True)
    done = services.contact_mark_subscribed(
        contact=contact, statement="  Signed the paper sheet at the market, 12 May ",
        evidence=ADMIN,
    )  # fmt: skip
    done.refresh_from_db()
    assert done.status == Contact.Status.SUBSCRIBED
    assert done.confirmed_at is not None
    assert not done.confirmation_due  # the owed mail is not sent any more
    event = done.consent_events.get()
    assert (event.kind, event.status_before, event.status_after) == (
        "admin",
        "pending",
        "subscribed",
    )
    assert event.consent_text == "Signed the paper sheet at the market, 12 May"
    assert (event.actor, event.ip, event.detail) == (
        "owner",
        "192.0.2.1",
        {"action": "mark-subscribed"},
    )
    # The request is answered: its link confirms nothing more.
    client.post(f"/confirm/{token}/")
    assert done.consent_events.count() == 1


@pytest.mark.parametrize("status", ["unsubscribed", "bounced", "complained"])
def test_mark_subscribed_never_brings_back_a_suppressed_contact(status):
    contact = ContactFactory(status=status)
    with pytest.raises(ValidationError) as refused:
        services.contact_mark_subscribed(contact=contact, statement="They said so", evidence=ADMIN)
    assert "only their own act" in refused.value.messages[0]
    contact.refresh_from_db()
    assert contact.status == status
    assert not contact.consent_events.exists()


def test_mark_subscribed_needs_a_statement_and_a_pending_contact():
    contact = _pending()
    with pytest.raises(ValidationError) as refused:
        services.contact_mark_subscribed(contact=contact, statement=" \n ", evidence=ADMIN)
    assert "how this person gave their consent" in refused.value.message_dict["statement"][0]
    assert Contact.objects.get(pk=contact.pk).status == Contact.Status.PENDING
    subscribed = ContactFactory(status="subscribed")
    with pytest.raises(ValidationError, match="already subscribed"):
        services.contact_mark_subscribed(contact=subscribed, statement="x", evidence=ADMIN)
