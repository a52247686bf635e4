"""contact_sync: a store's customer or an API client's contact, applied to the audience.

The rule itself is held to a table in test_consent_sync.py; these check what is written:
the status and its times, the evidence, the details and tags, the double opt-in request
when an opted-out contact is stated as subscribed, and erased addresses.
"""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.test import TestCase
from django.utils import timezone

from audience.consent import Ask
from audience.models import ConsentEvent, Contact, Store, SuppressedEmail, Tag
from audience.services import Evidence, contact_erase, contact_unsubscribe, tag_get_or_create
from audience.sync import Record, SmsState, contact_sync
from tests.factories import ContactFactory, TagFactory
from tests.polling import wait_for

# Eager: what the owed confirmation mail holds is checked here, its way through a worker
# in test_confirmations.py.
pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("eager_tasks")]

Status = Contact.Status
EVIDENCE = Evidence(method="shopify", actor="store:Ada's shop")


def _sync(email="new@example.com", ask=Ask.SUBSCRIBE, **fields):
    # Committed as a webhook's or an API call's transaction is: owed mail is then sent.
    with TestCase.captureOnCommitCallbacks(execute=True):
        return contact_sync(record=Record(email=email, ask=ask, **fields), evidence=EVIDENCE)


def test_new_customer_with_recorded_opt_in_is_subscribed_as_of_that_opt_in():
    opted_in = timezone.now() - timedelta(days=3)
    synced = _sync(
        consent_at=opted_in, first_name="Ada", phone="+14155550100",
        consent_text="Email me with news and offers", detail={"opt_in_level": "single_opt_in"},
    )  # fmt: skip
    contact = Contact.objects.get(email="new@example.com")
    assert synced.created and synced.subscribed and synced.contact == contact
    assert (contact.status, contact.source, contact.first_name, contact.phone) == (
        Status.SUBSCRIBED, Contact.Source.API, "Ada", "+14155550100",
    )  # fmt: skip
    assert contact.confirmed_at == opted_in
    event = contact.consent_events.get()
    assert (event.kind, event.method, event.status_before, event.status_after) == (
        ConsentEvent.Kind.SYNC, "shopify", "", Status.SUBSCRIBED,
    )  # fmt: skip
    assert event.created_at == opted_in
    assert event.consent_text == "Email me with news and offers"
    assert event.detail == {"opt_in_level": "single_opt_in"}


def test_new_customer_without_consent_is_kept_pending_and_not_mailed():
    synced = _sync(ask=Ask.STORE)
    contact = synced.contact
    assert (contact.status, contact.confirmation_due, contact.optin_requested_at) == (
        Status.PENDING, False, None,
    )  # fmt: skip
    assert not synced.subscribed


def test_new_contact_asked_to_confirm_first_is_sent_a_double_opt_in(mailoutbox):
    contact = _sync(ask=Ask.CONFIRM_FIRST).contact
    assert contact.status == Status.PENDING
    assert contact.optin_requested_at is not None
    assert [m.to for m in mailoutbox] == [["new@example.com"]]


def test_pending_contact_is_subscribed_by_the_stores_opt_in_and_its_request_closed():
    contact = ContactFactory(status=Status.PENDING, optin_requested_at=timezone.now())
    synced = _sync(email=contact.email)
    contact.refresh_from_db()
    assert synced.subscribed and synced.status_before == Status.PENDING
    assert contact.status == Status.SUBSCRIBED
    assert contact.optin_requested_at is None


@pytest.mark.parametrize("status", [Status.UNSUBSCRIBED, Status.BOUNCED])
def test_opted_out_contact_stated_subscribed_is_asked_to_confirm_not_subscribed(status, mailoutbox):
    contact = ContactFactory(
        status=status, optin_requested_at=None, unsubscribed_at=timezone.now() - timedelta(days=9)
    )
    synced = _sync(email=contact.email, consent_at=timezone.now() - timedelta(days=1))
    contact.refresh_from_db()
    assert contact.status == status
    assert not synced.subscribed
    assert contact.optin_requested_at is not None  # its owner's click decides
    assert [m.to for m in mailoutbox] == [[contact.email]]
    event = contact.consent_events.get()
    assert (event.kind, event.status_after, event.detail["via"]) == (
        ConsentEvent.Kind.SIGNUP, status, "sync",
    )  # fmt: skip


def test_complained_contact_stated_subscribed_is_neither_subscribed_nor_mailed(mailoutbox):
    contact = ContactFactory(status=Status.COMPLAINED, optin_requested_at=None)
    _sync(email=contact.email)
    contact.refresh_from_db()
    assert contact.status == Status.COMPLAINED
    assert contact.optin_requested_at is None
    assert mailoutbox == []


def test_consent_older_than_an_unsubscribe_changes_nothing(mailoutbox):
    contact = ContactFactory(status=Status.SUBSCRIBED)
    contact_unsubscribe(contact=contact, evidence=Evidence(method="link"))
    _sync(email=contact.email, consent_at=timezone.now() - timedelta(hours=1))
    contact.refresh_from_db()
    assert contact.status == Status.UNSUBSCRIBED
    assert contact.optin_requested_at is None
    assert mailoutbox == []


def test_an_unsubscribe_older_than_the_contacts_confirmation_changes_nothing():
    contact = ContactFactory(status=Status.SUBSCRIBED, confirmed_at=timezone.now())
    _sync(email=contact.email, ask=Ask.UNSUBSCRIBED, consent_at=timezone.now() - timedelta(days=1))
    contact.refresh_from_db()
    assert contact.status == Status.SUBSCRIBED


def test_stores_unsubscribe_suppresses_and_dates_it_when_the_store_did():
    contact = ContactFactory(status=Status.SUBSCRIBED, confirmed_at=timezone.now() - timedelta(9))
    said_no = timezone.now() - timedelta(minutes=5)
    _sync(email=contact.email, ask=Ask.UNSUBSCRIBED, consent_at=said_no)
    contact.refresh_from_db()
    assert (contact.status, contact.unsubscribed_at) == (Status.UNSUBSCRIBED, said_no)


def test_consent_dated_in_the_future_does_not_outrank_a_later_unsubscribe():
    contact = ContactFactory(status=Status.PENDING)
    _sync(email=contact.email, consent_at=timezone.now() + timedelta(days=365))
    contact.refresh_from_db()
    assert contact.confirmed_at <= timezone.now()
    contact_unsubscribe(contact=contact, evidence=Evidence(method="link"))
    # The same record replayed, its date still in the future: taken as stated now, it
    # asks its owner to confirm (a request), and the unsubscribe stands.
    _sync(email=contact.email, consent_at=timezone.now() + timedelta(days=365))
    contact.refresh_from_db()
    assert contact.status == Status.UNSUBSCRIBED


def test_details_stated_replace_stored_ones_and_missing_ones_are_kept():
    contact = ContactFactory(first_name="Ada", last_name="Lovelace", phone="+14155550100")
    synced = _sync(email=contact.email, first_name="Augusta", last_name=None, phone="")
    contact.refresh_from_db()
    assert (contact.first_name, contact.last_name, contact.phone) == (
        "Augusta", "Lovelace", "+14155550100",
    )  # fmt: skip
    assert synced.changed == ("first_name",)
    event = contact.consent_events.get()
    assert (event.kind, event.detail["changed"]) == (ConsentEvent.Kind.SYNC, ["first_name"])


def test_a_record_that_changes_nothing_writes_nothing():
    contact = ContactFactory(first_name="Ada")
    synced = _sync(email=contact.email, first_name="Ada")
    assert synced.changed == () and not synced.subscribed
    assert not contact.consent_events.exists()


def test_tags_of_the_record_and_the_store_are_added_and_none_removed():
    kept, stated, of_store = TagFactory(), TagFactory(), TagFactory()
    contact = ContactFactory()
    contact.tags.add(kept)
    store = Store.objects.create(kind=Store.Kind.SHOPIFY, name="Shop", secret="s")
    store.tags.add(of_store)
    contact_sync(
        record=Record(email=contact.email, ask=Ask.STORE, tags=(stated,)),
        evidence=EVIDENCE,
        store=store,
    )
    assert set(contact.tags.all()) == {kept, stated, of_store}


def test_sms_consent_is_stored_apart_and_an_older_one_does_not_win():
    contact = ContactFactory()
    later, earlier = timezone.now() - timedelta(hours=1), timezone.now() - timedelta(days=2)
    _sync(email=contact.email, sms=SmsState("subscribed", later, "single_opt_in"))
    _sync(email=contact.email, sms=SmsState("unsubscribed", earlier, ""))
    contact.refresh_from_db()
    assert (contact.sms_consent, contact.sms_consent_at, contact.sms_opt_in_level) == (
        "subscribed", later, "single_opt_in",
    )  # fmt: skip
    assert contact.status == Status.SUBSCRIBED  # the email status is its own


def test_erased_address_is_not_brought_back_by_a_sync():
    contact = ContactFactory()
    contact_erase(contact=contact, actor="admin")
    synced = _sync(email=contact.email, consent_at=timezone.now() - timedelta(days=1))
    assert synced.contact is None
    assert not Contact.objects.filter(email=contact.email).exists()


def test_erased_address_that_opted_in_again_since_is_asked_to_confirm(mailoutbox):
    contact = ContactFactory()
    contact_erase(contact=contact, actor="admin")
    synced = _sync(email=contact.email, consent_at=timezone.now())
    assert synced.contact.status == Status.PENDING and not synced.subscribed
    assert [m.to for m in mailoutbox] == [[contact.email]]
    assert not SuppressedEmail.objects.exists()


def _blocked_on_a_lock() -> bool:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return cursor.fetchone()[0] > 0


@pytest.mark.skipif(
    connection.vendor != "postgresql",
    reason="SQLite has one writer at a time: two creates cannot be in flight at once",
)
@pytest.mark.django_db(transaction=True)
def test_two_first_statements_racing_about_one_new_address_make_one_contact_with_both():
    """Two webhooks (or API calls) about a customer nobody has stored yet, at once: the
    second's insert waits on the first's, then applies to the contact the first made."""
    email, results, errors = "race@example.com", {}, []
    first_inserted, first_may_commit = threading.Event(), threading.Event()

    def first():
        try:
            with transaction.atomic():
                results["first"] = contact_sync(
                    record=Record(email=email, ask=Ask.STORE), evidence=EVIDENCE
                )
                first_inserted.set()
                first_may_commit.wait(10)
        except Exception as exc:
            errors.append(exc)
        finally:
            connection.close()

    def second():
        try:
            results["second"] = contact_sync(
                record=Record(
                    email=email,
                    ask=Ask.SUBSCRIBE,
                    first_name="Ada",
                    consent_at=timezone.now() - timedelta(minutes=1),
                ),
                evidence=EVIDENCE,
            )
        except Exception as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    threads[0].start()
    assert first_inserted.wait(10)
    threads[1].start()
    assert wait_for(_blocked_on_a_lock, timeout=10)  # the second insert waits on the first
    first_may_commit.set()
    for thread in threads:
        thread.join(15)
    assert errors == []
    assert results["first"].created and not results["second"].created
    contact = Contact.objects.get(email=email)
    assert (contact.status, contact.first_name) == (Status.SUBSCRIBED, "Ada")
    assert [e.status_after for e in contact.consent_events.order_by("id")] == [
        Status.PENDING, Status.SUBSCRIBED,
    ]  # fmt: skip


@pytest.mark.skipif(
    connection.vendor != "postgresql",
    reason="SQLite has one writer at a time: two creates cannot be in flight at once",
)
@pytest.mark.django_db(transaction=True)
def test_two_calls_naming_one_new_tag_at_once_share_it():
    """Two API upserts tagging with a tag nobody has yet: the second's insert waits on
    the first's, then uses the tag the first made instead of failing."""
    results, errors = {}, []
    first_made, first_may_commit = threading.Event(), threading.Event()

    def first():
        try:
            with transaction.atomic():
                results["first"] = tag_get_or_create(name="Launch")
                first_made.set()
                first_may_commit.wait(10)
        except Exception as exc:
            errors.append(exc)
        finally:
            connection.close()

    def second():
        try:
            results["second"] = tag_get_or_create(name="launch")
        except Exception as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    threads[0].start()
    assert first_made.wait(10)
    threads[1].start()
    assert wait_for(_blocked_on_a_lock, timeout=10)
    first_may_commit.set()
    for thread in threads:
        thread.join(15)
    assert errors == []
    assert results["first"].pk == results["second"].pk
    assert list(Tag.objects.values_list("name", flat=True)) == ["Launch"]
