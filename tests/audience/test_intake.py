"""The signup buffer (audience.buffer, used by audience.intake): with a Redis that keeps its
data, a public signup is counted and put in a Redis stream while the visitor waits, and a
drain moves the stream into contacts later. Also the rate limits every signup is counted
against (audience.throttle).

What a shop owner relies on: every signup that was answered "thanks" becomes a contact,
exactly once, with the consent evidence as it was at signup time (time, IP, user agent,
method, the text the visitor was shown), whatever fails on the way.

The buffer only exists when the cache is Redis; those tests are skipped otherwise (CI
runs them). `services.contacts_subscribe_batch`, which the drain writes through, needs no
Redis and is tested on every database at the end of this file.
"""

from __future__ import annotations

import json
import secrets
import socket
from collections import Counter
from datetime import timedelta

import pytest
import redis.exceptions
from django.conf import settings as django_settings
from django.core.cache import cache
from django.db import DatabaseError, connection
from django.utils import timezone

from audience import buffer as signup_buffer
from audience import intake, services, throttle
from audience.forms import render_stamp
from audience.models import ConsentEvent, Contact, SignupBufferCursor, SuppressedEmail
from audience.tasks import drain_signups
from tests.factories import ContactFactory, SignupFormFactory, TagFactory
from tests.polling import wait_for

pytestmark = pytest.mark.usefixtures("site_url")

SHOP = "https://shop.example.com"
JSON = {"HTTP_ACCEPT": "application/json", "HTTP_ORIGIN": SHOP}

needs_redis = pytest.mark.skipif(
    "redis" not in django_settings.CACHES["default"]["BACKEND"].lower(),
    reason="the signup buffer exists only when the cache is Redis (set REDIS_URL)",
)
needs_postgresql = pytest.mark.skipif(
    connection.vendor != "postgresql",
    reason="only PostgreSQL refuses what its columns cannot hold (SQLite stores any text)",
)


@pytest.fixture
def buffer(settings):
    """The signup buffer on, as in production with a Redis that keeps its data. Forced:
    the shared test Redis need not run with appendonly yes, and these tests are about
    the buffer itself (tests/faults/test_buffer_redis_restart.py covers the choice)."""
    settings.SIGNUP_BUFFER = "force"
    settings.SIGNUP_BUFFER_SECONDS = 0


@pytest.fixture
def queued_drains(monkeypatch):
    """The drain tasks signups queue, recorded instead of sent to a broker: each test
    drains when it chooses (the worker test below leaves the real path alone)."""
    queued = []
    monkeypatch.setattr(drain_signups, "apply_async", lambda **kwargs: queued.append(kwargs))
    return queued


@pytest.fixture
def form():
    form = SignupFormFactory(public_key="shop", phone_field="optional")
    form.tags.add(TagFactory(name="newsletter"))
    return form


def _post(client, form, data, **headers):
    payload = {"consent": "on", "ts": render_stamp(form), **data}
    return client.post(f"/f/{form.public_key}/submit", payload, **headers)


def _signed_up(client, form, email, **headers):
    response = _post(client, form, {"email": email}, **{**JSON, **headers})
    assert response.status_code == 200, response.content
    return response


def _stream() -> str:
    return cache.make_key(intake.STREAM)


def _redis():
    return signup_buffer.client()


def _set_aside() -> list[tuple[bytes, dict]]:
    return _redis().xrange(cache.make_key(intake.FAILED_STREAM))


def _entry(form, email, *, first_name="", ip="198.51.100.30", at=None) -> dict:
    """A version-1 buffer entry, as the version before audience.buffer wrote it and as a
    Redis may still hold at the upgrade (for entries a test puts in directly)."""
    values = [
        1, form.pk, email, first_name, "", "", "form-script", ip, "Mozilla/5.0",
        form.consent_text, form.double_opt_in, timezone.now().timestamp() if at is None else at,
        secrets.token_hex(8),
    ]  # fmt: skip
    return {"v": json.dumps(values)}


def _signup_events(email):
    return ConsentEvent.objects.filter(contact__email=email, kind="signup").order_by("id")


# --- the buffer, through the public form ------------------------------------------------


@pytest.mark.usefixtures("buffer")
@needs_redis
@pytest.mark.django_db
def test_a_buffered_signup_is_answered_at_once_and_stored_with_its_evidence_by_the_drain(
    client, form, queued_drains, eager_tasks, mailoutbox, django_capture_on_commit_callbacks
):
    before = timezone.now()
    response = _post(
        client, form, {"email": "Anna@Example.com", "first_name": "Anna", "phone": "+14152000001"},
        HTTP_USER_AGENT="Mozilla/5.0 (Shop test)", REMOTE_ADDR="203.0.113.7", **JSON,
    )  # fmt: skip
    answered = timezone.now()
    assert response.status_code == 200
    assert response.json() == {"ok": True, "message": form.success_message}
    assert response["Access-Control-Allow-Origin"] == SHOP
    # Answered, not yet written: the signup waits in the buffer for its drain.
    assert not Contact.objects.exists()
    assert intake.backlog() == 1
    assert queued_drains == [{"countdown": 0, "expires": 60.0}]

    with django_capture_on_commit_callbacks(execute=True):
        assert intake.drain() == 1

    contact = Contact.objects.get()
    assert contact.email == "anna@example.com"
    assert (contact.first_name, contact.phone) == ("Anna", "+14152000001")
    assert contact.status == "pending"
    assert contact.signup_form == form
    assert list(contact.tags.values_list("name", flat=True)) == ["newsletter"]
    event = contact.consent_events.get()
    assert event.kind == "signup"
    assert (event.status_before, event.status_after) == ("", "pending")
    assert event.ip == "203.0.113.7"
    assert event.user_agent == "Mozilla/5.0 (Shop test)"
    assert event.method == "form-script"
    assert event.consent_text == form.consent_text
    assert event.signup_form == form
    # The signup's own time, not the drain's.
    assert before <= event.created_at <= answered
    # Its double opt-in mail went out once the drain committed.
    assert [m.to for m in mailoutbox] == [["anna@example.com"]]
    assert intake.backlog() == 0
    assert signup_buffer.cursor().drained == 1
    assert contact.created_at == event.created_at  # the contact's own timestamps too


@pytest.mark.usefixtures("buffer", "queued_drains")
@needs_redis
@pytest.mark.django_db
def test_a_buffered_signup_is_owed_its_confirmation_mail_once_drained(client, form):
    _signed_up(client, form, "owed@example.com")
    drained_at = timezone.now()
    intake.drain()
    contact = Contact.objects.get(email="owed@example.com")
    assert contact.confirmation_due
    # The resend window runs from when the mail is owed, not from the signup: a signup
    # that waited in the buffer must not shorten it.
    assert contact.confirmation_sent_at >= drained_at


@needs_redis
@pytest.mark.django_db
def test_a_burst_of_signups_queues_one_drain_for_the_buffer_window(
    client, form, buffer, queued_drains, settings
):
    settings.SIGNUP_BUFFER_SECONDS = 5
    for i in range(3):
        _signed_up(client, form, f"burst{i}@example.com")
    assert queued_drains == [{"countdown": 5, "expires": 60.0}]
    assert intake.backlog() == 3
    assert intake.drain() == 3
    assert Contact.objects.filter(email__startswith="burst").count() == 3


@needs_redis
@pytest.mark.django_db
def test_a_drain_flag_from_a_longer_buffer_window_is_cut_to_the_new_one(
    client, form, buffer, queued_drains, settings
):
    # SIGNUP_BUFFER_SECONDS lowered from an hour: the next signups must not wait an hour
    # (or for beat's sweep) to queue their drain.
    flag = cache.make_key(intake.DRAIN_QUEUED_FLAG)
    _redis().set(flag, "1", px=3_600_000)
    settings.SIGNUP_BUFFER_SECONDS = 0.2
    _signed_up(client, form, "first@example.com")
    assert queued_drains == []  # the old flag's drain is on its way
    assert 0 < _redis().pttl(flag) <= 200
    assert wait_for(lambda: _redis().pttl(flag) == -2, timeout=5)
    _signed_up(client, form, "second@example.com")
    assert queued_drains == [{"countdown": 0.2, "expires": 60.0}]
    assert intake.drain() == 2


@pytest.mark.usefixtures("buffer", "queued_drains")
@needs_redis
@pytest.mark.django_db
def test_a_drain_moves_a_buffer_larger_than_its_batch(client, form, settings):
    settings.SIGNUP_RATE_PER_IP = "100/m"
    emails = [f"many{i}@example.com" for i in range(5)]
    for email in emails:
        _signed_up(client, form, email)
    assert intake.drain(batch=2) == 5
    assert sorted(Contact.objects.values_list("email", flat=True)) == emails
    assert ConsentEvent.objects.filter(kind="signup").count() == 5
    assert intake.backlog() == 0
    assert signup_buffer.cursor().drained == 5


@pytest.mark.usefixtures("buffer", "queued_drains")
@needs_redis
@pytest.mark.django_db
def test_the_consent_text_the_visitor_saw_is_kept_when_the_form_is_edited_before_the_drain(
    client, form
):
    shown = form.consent_text
    _signed_up(client, form, "early@example.com")
    form.consent_text = "Yes, and you may also text me offers."
    form.save()  # the admin's edit: clears the cached form (audience.apps)
    _signed_up(client, form, "late@example.com")
    intake.drain()
    assert _signup_events("early@example.com").get().consent_text == shown
    assert _signup_events("late@example.com").get().consent_text == (
        "Yes, and you may also text me offers."
    )


@pytest.fixture
def trim_fails_once(monkeypatch):
    """The drain's first trim, after its commit, fails as if Redis went away."""
    real_trim = signup_buffer._trim
    failures = []

    def trim_fails_once(*args, **kwargs):
        if not failures:
            failures.append(1)
            raise redis.exceptions.ConnectionError("Redis went away after the commit")
        return real_trim(*args, **kwargs)

    monkeypatch.setattr(signup_buffer, "_trim", trim_fails_once)


@pytest.mark.usefixtures("buffer", "queued_drains")
@needs_redis
@pytest.mark.django_db
def test_a_drain_whose_trim_fails_after_commit_stores_nothing_twice_and_empties_the_buffer(
    client, form, trim_fails_once
):
    _signed_up(client, form, "once@example.com")
    with pytest.raises(redis.exceptions.ConnectionError):
        intake.drain()
    assert Contact.objects.filter(email="once@example.com").exists()  # committed

    intake.drain()  # the next drain, e.g. beat's sweep a minute later
    assert Contact.objects.count() == 1
    assert _signup_events("once@example.com").count() == 1
    assert intake.backlog() == 0


@pytest.mark.usefixtures("buffer", "queued_drains")
@needs_redis
@pytest.mark.django_db
def test_after_a_failed_trim_a_new_signup_is_stored_and_the_old_one_not_again(
    client, form, trim_fails_once
):
    _signed_up(client, form, "first@example.com")
    with pytest.raises(redis.exceptions.ConnectionError):
        intake.drain()
    _signed_up(client, form, "second@example.com")
    intake.drain()
    assert sorted(Contact.objects.values_list("email", flat=True)) == [
        "first@example.com",
        "second@example.com",
    ]
    assert _signup_events("first@example.com").count() == 1
    assert _signup_events("second@example.com").count() == 1
    assert intake.backlog() == 0


@pytest.mark.usefixtures("buffer", "queued_drains")
@needs_redis
@pytest.mark.django_db
def test_a_drain_that_fails_before_commit_stores_nothing_and_the_next_stores_each_signup_once(
    client, form, monkeypatch, eager_tasks, mailoutbox, django_capture_on_commit_callbacks
):
    ContactFactory(email="known@example.com", status="unsubscribed")
    for email in ("one@example.com", "two@example.com", "known@example.com"):
        _signed_up(client, form, email)
    real_save = SignupBufferCursor.save

    def save_fails(self, *args, **kwargs):
        if "update_fields" not in kwargs:  # creating the cursor row, before the writes
            return real_save(self, *args, **kwargs)
        # Advancing the cursor, after the batch was written in the same transaction.
        raise DatabaseError("server closed the connection unexpectedly")

    monkeypatch.setattr(SignupBufferCursor, "save", save_fails)
    with django_capture_on_commit_callbacks(execute=True), pytest.raises(DatabaseError):
        intake.drain()
    assert list(Contact.objects.values_list("email", "status")) == [
        ("known@example.com", "unsubscribed")
    ]
    assert not ConsentEvent.objects.exists()
    assert not mailoutbox
    assert intake.backlog() == 3

    monkeypatch.setattr(SignupBufferCursor, "save", real_save)
    with django_capture_on_commit_callbacks(execute=True):
        assert intake.drain() == 3
    assert Contact.objects.count() == 3
    for email in ("one@example.com", "two@example.com", "known@example.com"):
        assert _signup_events(email).count() == 1
    # New addresses are pending; the known one stays unsubscribed, asked to confirm.
    statuses = dict(Contact.objects.values_list("email", "status"))
    assert statuses == {
        "one@example.com": "pending",
        "two@example.com": "pending",
        "known@example.com": "unsubscribed",
    }
    assert sorted(m.to[0] for m in mailoutbox) == [
        "known@example.com",
        "one@example.com",
        "two@example.com",
    ]
    assert intake.backlog() == 0
    assert signup_buffer.cursor().drained == 3


@pytest.mark.usefixtures("buffer", "queued_drains")
@needs_redis
@pytest.mark.django_db
def test_a_subscribed_contact_signing_up_again_through_the_buffer_stays_subscribed(client, form):
    known = ContactFactory(email="kept@example.com", status="subscribed")
    _signed_up(client, form, "kept@example.com")
    intake.drain()
    known.refresh_from_db()
    assert known.status == "subscribed"
    assert not known.confirmation_due
    event = _signup_events("kept@example.com").get()
    assert (event.status_before, event.status_after) == ("subscribed", "subscribed")
    assert event.consent_text == form.consent_text
    assert list(known.tags.values_list("name", flat=True)) == ["newsletter"]


@pytest.mark.usefixtures("buffer", "queued_drains")
@needs_redis
@pytest.mark.django_db
def test_an_unsubscribed_contact_signing_up_through_the_buffer_must_confirm_again(client):
    single_opt_in = SignupFormFactory(public_key="single", double_opt_in=False)
    left = ContactFactory(email="left@example.com", status="unsubscribed")
    _signed_up(client, single_opt_in, "left@example.com")
    intake.drain()
    left.refresh_from_db()
    # Anyone can type anyone's address: a suppressed one stays so, and is asked to
    # confirm (only its owner's click on that request's link brings it back).
    assert left.status == "unsubscribed"
    assert left.confirmation_due
    assert left.optin_requested_at is not None
    event = _signup_events("left@example.com").get()
    assert (event.status_before, event.status_after) == ("unsubscribed", "unsubscribed")


@pytest.mark.usefixtures("buffer", "queued_drains")
@needs_redis
@pytest.mark.django_db
def test_the_same_new_address_twice_in_one_batch_is_one_contact_with_one_signup_event(client, form):
    _signed_up(client, form, "twice@example.com", REMOTE_ADDR="198.51.100.1")
    _signed_up(client, form, "twice@example.com", REMOTE_ADDR="198.51.100.2")
    assert intake.backlog() == 2
    assert intake.drain() == 2
    contact = Contact.objects.get(email="twice@example.com")
    assert contact.status == "pending"
    # The second attempt falls in the resend window: one event, not one per request.
    events = list(_signup_events("twice@example.com"))
    assert [e.ip for e in events] == ["198.51.100.1"]
    assert list(contact.tags.values_list("name", flat=True)) == ["newsletter"]
    assert Contact.objects.count() == 1


@pytest.mark.usefixtures("buffer", "queued_drains")
@needs_redis
@pytest.mark.django_db
def test_a_signup_whose_form_is_deleted_while_buffered_is_still_stored(client, form):
    shown = form.consent_text
    _signed_up(client, form, "orphan@example.com")
    form.delete()
    intake.drain()
    contact = Contact.objects.get(email="orphan@example.com")
    assert contact.status == "pending"  # the form asked for double opt-in
    assert contact.confirmation_due
    assert contact.signup_form is None
    event = _signup_events("orphan@example.com").get()
    assert event.signup_form is None
    assert event.consent_text == shown
    assert intake.backlog() == 0


@pytest.mark.usefixtures("buffer", "queued_drains")
@needs_redis
@pytest.mark.django_db
def test_an_unreadable_entry_is_set_aside_and_the_signups_around_it_are_stored(client, form):
    stream = _redis()
    _signed_up(client, form, "before@example.com")
    garbage = stream.xadd(_stream(), {"v": "{not json"})
    _signed_up(client, form, "after@example.com")
    assert intake.drain() == 3
    assert sorted(Contact.objects.values_list("email", flat=True)) == [
        "after@example.com",
        "before@example.com",
    ]
    assert [(fields[b"id"], fields[b"v"]) for _id, fields in _set_aside()] == [
        (garbage, b"{not json")
    ]
    assert intake.backlog() == 0
    # Not blocked: the next signup goes through as usual.
    _signed_up(client, form, "later@example.com")
    assert intake.drain() == 1
    assert Contact.objects.filter(email="later@example.com").exists()
    assert len(_set_aside()) == 1


@pytest.mark.parametrize(
    "malformed",
    [
        pytest.param({"at": "2024-05-01T10:00:00"}, id="time-not-a-number"),
        pytest.param({"ip": "999.1.1.1"}, id="ip-not-an-address", marks=needs_postgresql),
    ],
)
@pytest.mark.usefixtures("buffer", "queued_drains")
@needs_redis
@pytest.mark.django_db
def test_a_malformed_entry_is_set_aside_and_does_not_block_the_buffer(client, form, malformed):
    stream = _redis()
    _signed_up(client, form, "before@example.com")
    bad = stream.xadd(_stream(), _entry(form, "malformed@example.com", **malformed))
    _signed_up(client, form, "after@example.com")
    intake.drain()
    assert sorted(Contact.objects.values_list("email", flat=True)) == [
        "after@example.com",
        "before@example.com",
    ]
    assert [fields[b"id"] for _id, fields in _set_aside()] == [bad]
    assert intake.backlog() == 0


@pytest.mark.usefixtures("buffer", "queued_drains")
@needs_redis
@needs_postgresql
@pytest.mark.django_db
def test_entries_the_database_refuses_are_set_aside_and_the_rest_of_the_batch_is_stored(
    client, form
):
    stream = _redis()
    _signed_up(client, form, "good1@example.com")
    unreadable = stream.xadd(_stream(), {"v": json.dumps([0, "from no version of ours"])})
    # A name longer than the column (the form's cleaning never lets one through).
    refused = stream.xadd(_stream(), _entry(form, "refused@example.com", first_name="x" * 101))
    _signed_up(client, form, "good2@example.com")
    assert intake.drain() == 4
    assert sorted(Contact.objects.values_list("email", flat=True)) == [
        "good1@example.com",
        "good2@example.com",
    ]
    assert not _signup_events("refused@example.com").exists()
    assert sorted(fields[b"id"] for _id, fields in _set_aside()) == sorted([unreadable, refused])
    assert intake.backlog() == 0


@pytest.mark.usefixtures("buffer", "queued_drains")
@needs_redis
@pytest.mark.django_db
def test_over_the_per_ip_limit_a_signup_is_refused_and_nothing_is_buffered(client, form, settings):
    settings.SIGNUP_RATE_PER_IP = "2/h"
    codes = [
        _post(client, form, {"email": f"p{i}@example.com"}, **JSON).status_code for i in range(3)
    ]
    assert codes == [200, 200, 429]
    assert intake.backlog() == 2
    intake.drain()
    assert sorted(Contact.objects.values_list("email", flat=True)) == [
        "p0@example.com",
        "p1@example.com",
    ]


@pytest.mark.usefixtures("buffer", "queued_drains")
@needs_redis
@pytest.mark.django_db
def test_over_the_per_form_limit_signups_from_any_ip_are_refused_and_not_buffered(
    client, form, settings
):
    settings.SIGNUP_RATE_PER_FORM = "2/h"
    codes = [
        _post(client, form, {"email": f"p{i}@example.com"}, REMOTE_ADDR=f"198.51.100.{i}",
              **JSON).status_code
        for i in range(3)
    ]  # fmt: skip
    assert codes == [200, 200, 429]
    assert intake.backlog() == 2


@pytest.mark.usefixtures("buffer", "queued_drains")
@needs_redis
@pytest.mark.django_db
def test_with_redis_unreachable_a_signup_is_written_straight_to_the_database(
    client, form, monkeypatch
):
    def unreachable(*args, **kwargs):
        raise redis.exceptions.ConnectionError("Error 111 connecting to redis:6379")

    monkeypatch.setattr(signup_buffer, "append", unreachable)
    before = timezone.now()
    response = _post(client, form, {"email": "direct@example.com"}, **JSON)
    assert response.status_code == 200
    assert response.json()["ok"] is True
    contact = Contact.objects.get(email="direct@example.com")
    assert contact.status == "pending"
    event = contact.consent_events.get()
    assert event.consent_text == form.consent_text
    assert event.created_at >= before
    assert intake.backlog() == 0


@pytest.mark.usefixtures("buffer", "queued_drains")
@needs_redis
@pytest.mark.django_db
def test_a_reply_lost_after_redis_buffered_the_signup_still_stores_it_once(
    client, form, monkeypatch
):
    # Redis appended the entry, then the reply never came back (a timeout): the signup is
    # written directly, and the drain must not store it a second time.
    real = signup_buffer.append

    def appended_then_lost(*args, **kwargs):
        real(*args, **kwargs)
        raise redis.exceptions.TimeoutError("Timeout reading from socket")

    monkeypatch.setattr(signup_buffer, "append", appended_then_lost)
    _signed_up(client, form, "lost-reply@example.com")
    assert Contact.objects.filter(email="lost-reply@example.com").exists()
    assert intake.backlog() == 1
    monkeypatch.setattr(signup_buffer, "append", real)
    assert intake.drain() == 1
    assert _signup_events("lost-reply@example.com").count() == 1
    assert intake.backlog() == 0


@pytest.mark.usefixtures("buffer", "queued_drains")
@needs_redis
@pytest.mark.django_db
def test_with_redis_down_the_rate_limits_are_still_counted_in_each_process(
    client, form, settings, monkeypatch
):
    def unreachable(*args, **kwargs):
        raise redis.exceptions.ConnectionError("Error 111 connecting to redis:6379")

    monkeypatch.setattr(signup_buffer, "append", unreachable)
    monkeypatch.setattr(throttle, "_here", {})
    settings.SIGNUP_RATE_PER_IP = "2/h"
    codes = [
        _post(client, form, {"email": f"down{i}@example.com"}, **JSON).status_code for i in range(3)
    ]
    assert codes == [200, 200, 429]
    assert Contact.objects.count() == 2


@pytest.mark.usefixtures("buffer", "queued_drains")
@needs_redis
@pytest.mark.django_db
def test_an_erasure_asked_for_while_the_signup_waited_wins(client, form):
    ContactFactory(email="gone@example.com", status="subscribed")
    _signed_up(client, form, "gone@example.com")
    services.contact_erase(contact=Contact.objects.get(email="gone@example.com"))
    intake.drain()
    assert not Contact.objects.filter(email="gone@example.com").exists()
    assert SuppressedEmail.objects.filter(email_hash=services.email_hash("gone@example.com"))
    assert intake.backlog() == 0
    # A signup after the erasure is the owner's own act again: it lifts the suppression.
    _signed_up(client, form, "gone@example.com")
    intake.drain()
    assert Contact.objects.get(email="gone@example.com").status == "pending"
    assert not SuppressedEmail.objects.exists()


@pytest.mark.usefixtures("buffer", "queued_drains")
@needs_redis
@pytest.mark.django_db
def test_an_unsubscribe_made_while_the_signup_waited_wins(client, form):
    contact = ContactFactory(email="leaving@example.com", status="subscribed")
    _signed_up(client, form, "leaving@example.com")
    services.contact_unsubscribe(
        contact=contact, evidence=services.Evidence(method="unsubscribe-page")
    )
    intake.drain()
    contact.refresh_from_db()
    assert contact.status == "unsubscribed"
    assert not contact.confirmation_due
    assert not _signup_events("leaving@example.com").exists()


@pytest.mark.usefixtures("buffer", "queued_drains")
@needs_redis
@pytest.mark.django_db
def test_an_entry_from_a_newer_version_waits_for_the_newer_workers(client, form):
    _signed_up(client, form, "before@example.com")
    _redis().xadd(_stream(), {"v": json.dumps([99, "a newer layout"])})
    _signed_up(client, form, "after@example.com")
    intake.drain()
    # Stored up to the newer entry, which is neither dropped nor set aside.
    assert list(Contact.objects.values_list("email", flat=True)) == ["before@example.com"]
    assert intake.backlog() == 2
    assert not _set_aside()


@pytest.mark.usefixtures("buffer", "queued_drains")
@needs_redis
@pytest.mark.django_db
def test_signups_are_buffered_again_once_redis_answers_again(client, form):
    # The signup's own Redis connection (audience.throttle) is cut off: nothing listens
    # on its port. Then Redis is back; the next signup must find it without a restart.
    assert throttle._connection() is not None
    connection = throttle._local.connection
    address = connection.host, connection.port
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    connection.disconnect()
    connection.host, connection.port = "127.0.0.1", closed_port
    try:
        _signed_up(client, form, "during@example.com")
    finally:
        connection.host, connection.port = address
    assert Contact.objects.filter(email="during@example.com").exists()  # written directly
    assert intake.backlog() == 0

    _signed_up(client, form, "after@example.com")
    assert not Contact.objects.filter(email="after@example.com").exists()
    assert intake.backlog() == 1
    intake.drain()
    assert Contact.objects.filter(email="after@example.com").exists()


@pytest.mark.worker
@needs_redis
def test_with_a_worker_a_buffered_signup_becomes_a_contact_and_gets_its_mail_unprompted(
    client, celery_worker, buffer, mailoutbox
):
    form = SignupFormFactory(public_key="shop")
    response = _post(client, form, {"email": "worker@example.com"}, **JSON)
    assert response.status_code == 200
    # Nobody calls drain: the signup queued the drain task itself.
    assert wait_for(lambda: Contact.objects.filter(email="worker@example.com").exists())
    assert _signup_events("worker@example.com").count() == 1
    assert wait_for(lambda: [m.to for m in mailoutbox] == [["worker@example.com"]])
    assert "/confirm/" in mailoutbox[0].body
    assert intake.backlog() == 0


# --- entries: self-describing and versioned -------------------------------------------


@pytest.mark.usefixtures("buffer", "queued_drains")
@needs_redis
@pytest.mark.django_db
def test_a_buffered_signup_is_a_versioned_entry_with_named_fields(client, form):
    _signed_up(client, form, "named@example.com", REMOTE_ADDR="203.0.113.9")
    ((_id, fields),) = _redis().xrange(_stream())
    version, values = json.loads(fields[b"v"])
    assert version == 2
    assert values["email"] == "named@example.com"
    assert (values["form"], values["ip"], values["method"]) == (
        form.pk,
        "203.0.113.9",
        "form-script",
    )
    assert values["consent_text"] == form.consent_text
    assert set(values) == {
        "sid", "form", "email", "first_name", "last_name", "phone", "method", "ip",
        "user_agent", "consent_text", "double_opt_in", "at",
    }  # fmt: skip


@pytest.mark.usefixtures("buffer", "queued_drains")
@needs_redis
@pytest.mark.django_db
def test_a_version_1_entry_waiting_at_the_upgrade_is_still_stored(client, form):
    _redis().xadd(_stream(), _entry(form, "old-layout@example.com", first_name="Olga"))
    _signed_up(client, form, "new-layout@example.com")
    assert intake.drain() == 2
    old = Contact.objects.get(email="old-layout@example.com")
    assert (old.first_name, old.status) == ("Olga", "pending")
    assert _signup_events("old-layout@example.com").get().ip == "198.51.100.30"
    assert Contact.objects.filter(email="new-layout@example.com").exists()
    assert not _set_aside()


# --- the drain deletes only what it stored, whichever Redis it finds -------------------


@pytest.mark.parametrize(
    "replacement",
    [
        pytest.param("empty", id="a-new-redis-without-data"),
        pytest.param("lost-last-writes", id="a-redis-that-lost-its-last-writes"),
    ],
)
@pytest.mark.usefixtures("buffer", "queued_drains")
@needs_redis
@pytest.mark.django_db
def test_signups_a_replacement_redis_numbers_below_the_cursor_are_stored_not_deleted(
    client, form, replacement
):
    # The old Redis host's clock ran ahead: its entries, and so the drain's cursor, carry
    # ids later than the replacement's clock will reach for years.
    ahead = "32503680000000-0"  # the year 3000
    entry = _entry(form, "old-host@example.com")
    _redis().xadd(_stream(), entry, id=ahead)
    assert intake.drain() == 1
    assert signup_buffer.cursor().last_id == ahead
    # The replacement: nothing of the old one, or (a lagging replica promoted) the same
    # epoch but not the stream's last entries.
    _redis().delete(_stream())
    if replacement == "empty":
        _redis().delete(cache.make_key(signup_buffer.EPOCH))
    for i in range(3):
        _signed_up(client, form, f"answered{i}@example.com")
    assert intake.backlog() == 3
    assert intake.drain() == 3
    for i in range(3):
        assert _signup_events(f"answered{i}@example.com").count() == 1
    assert intake.backlog() == 0
    assert _signup_events("old-host@example.com").count() == 1
    # And the buffer goes on as usual on the new Redis.
    _signed_up(client, form, "later@example.com")
    assert intake.drain() == 1
    assert _signup_events("later@example.com").count() == 1


@pytest.mark.usefixtures("buffer", "queued_drains")
@needs_redis
@pytest.mark.django_db
def test_a_drain_that_reads_nothing_deletes_nothing(client, form):
    ahead = "32503680000000-0"
    _redis().xadd(_stream(), _entry(form, "old-host@example.com"), id=ahead)
    intake.drain()
    _redis().delete(_stream(), cache.make_key(signup_buffer.EPOCH))
    # Appended by the replacement Redis while a drain that began on the old one runs on.
    _redis().xadd(_stream(), _entry(form, "meanwhile@example.com"))
    signup_buffer._trim(_redis(), epoch="the-old-epoch", below=ahead)
    assert intake.backlog() == 1
    intake.drain()
    assert _signup_events("meanwhile@example.com").count() == 1


@pytest.mark.usefixtures("queued_drains")
@needs_redis
@pytest.mark.django_db
def test_a_cursor_from_before_epochs_is_taken_over_once(client, form, buffer):
    # Deployed over a version whose cursor was named after the stream alone: the signups
    # it already stored (still in the stream: its trim failed) are not stored again.
    first = _redis().xadd(_stream(), _entry(form, "stored-before@example.com"))
    SignupBufferCursor.objects.create(name=intake.STREAM, last_id=first.decode(), drained=1)
    _signed_up(client, form, "after-upgrade@example.com")
    assert intake.drain() == 1
    assert not Contact.objects.filter(email="stored-before@example.com").exists()
    assert Contact.objects.filter(email="after-upgrade@example.com").exists()
    assert signup_buffer.cursor().drained == 2
    assert intake.backlog() == 0


@pytest.mark.django_db
def test_check_deploy_warns_when_the_buffer_is_forced_whatever_redis_keeps(settings):
    from django.core import checks

    def warnings() -> list[str]:
        messages = checks.run_checks(include_deployment_checks=True)
        return [message.id for message in messages if message.id.startswith("audience.")]

    settings.SIGNUP_BUFFER = "auto"
    assert warnings() == []
    settings.SIGNUP_BUFFER = "force"
    assert warnings() == ["audience.W001"]


# --- rate limits: one bot cannot close the form to everyone else ------------------------


@pytest.fixture(params=["redis", "cache", "in-process"])
def counting(request, settings, monkeypatch):
    """Each way the limits are counted: the Lua script on Redis, the cache API (the
    quickstart's local memory), and in-process while Redis cannot be reached."""
    if request.param == "redis" and "redis" not in settings.CACHES["default"]["BACKEND"].lower():
        pytest.skip("the Lua path needs the cache to be Redis (set REDIS_URL)")
    if request.param == "cache":
        settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
        cache.clear()
    monkeypatch.setattr(throttle, "_here", {})
    if request.param == "in-process":
        return throttle.over_limit_here
    return throttle.over_limit


def test_once_a_bucket_is_over_no_further_bucket_is_charged(counting):
    ip, other, form_bucket = (
        ("signup-ip:bot", "5/h"),
        ("signup-ip:visitor", "5/h"),
        ("signup-form:shop", "4/h"),
    )
    assert [counting([ip, form_bucket]) for _ in range(3)] == [False, False, False]
    # The bot's IP is full after 5 hits (2 more); its next 600 requests are refused and
    # charged to neither bucket: the form has counted 3 signups of its 4.
    assert [counting([ip]) for _ in range(2)] == [False, False]
    assert all(counting([ip, form_bucket]) for _ in range(600))
    assert counting([other, form_bucket]) is False
    assert counting([other, form_bucket]) is True  # the form's 5th: now the form is full
    assert counting([other]) is False  # and nothing was charged to the visitor's IP by it


@pytest.mark.parametrize("buffered", [False, pytest.param(True, marks=needs_redis)])
@pytest.mark.usefixtures("queued_drains")
@pytest.mark.django_db
def test_a_flood_of_junk_from_one_ip_leaves_a_visitor_from_another_ip_unaffected(
    client, form, settings, buffered
):
    settings.SIGNUP_RATE_PER_IP = "10/m"
    settings.SIGNUP_RATE_PER_FORM = "600/m"
    if buffered:
        settings.SIGNUP_BUFFER = "force"
        settings.SIGNUP_BUFFER_SECONDS = 0
    bot = {"REMOTE_ADDR": "203.0.113.66", **JSON}
    codes = Counter()
    for i in range(150):  # the honeypot filled: answered as if it worked
        codes[
            _post(client, form, {"email": f"h{i}@example.com", "website": "x"}, **bot).status_code
        ] += 1
    for i in range(150):  # not an address
        codes[_post(client, form, {"email": f"not-an-address-{i}"}, **bot).status_code] += 1
    for i in range(160):  # real-looking signups: 10 within the IP's limit, then refused
        codes[_post(client, form, {"email": f"b{i}@example.com"}, **bot).status_code] += 1
    settings.SIGNUP_MIN_SECONDS = 30
    for i in range(150):  # faster than any person fills a form
        codes[_post(client, form, {"email": f"f{i}@example.com"}, **bot).status_code] += 1
    settings.SIGNUP_MIN_SECONDS = 0
    assert sum(codes.values()) == 610
    assert codes[429] > 400  # the bot's IP is held back
    for n in range(3):
        _signed_up(client, form, f"visitor{n}@example.com", REMOTE_ADDR=f"198.51.100.{n + 1}")
    intake.drain()
    for n in range(3):
        assert Contact.objects.filter(email=f"visitor{n}@example.com").exists()


@pytest.mark.usefixtures("queued_drains")
@pytest.mark.django_db
def test_only_accepted_signups_count_toward_the_form_wide_limit(client, form, settings):
    # Per hour: a window that turns over mid-test is unlikely.
    settings.SIGNUP_RATE_PER_IP = "2/h"
    settings.SIGNUP_RATE_PER_FORM = "5/h"
    bot = {"REMOTE_ADDR": "203.0.113.66", **JSON}
    statuses = [
        _post(client, form, {"email": f"b{i}@example.com"}, **bot).status_code for i in range(50)
    ]
    assert statuses[:2] == [200, 200] and set(statuses[2:]) == {429}
    statuses = [
        _post(
            client, form, {"email": f"v{n}@example.com"}, REMOTE_ADDR=f"198.51.100.{n}", **JSON
        ).status_code
        for n in range(1, 6)
    ]
    # 2 of the bot's signups were taken; the form's 5 allow exactly 3 more.
    assert statuses == [200, 200, 200, 429, 429]


# --- contacts_subscribe_batch: what the drain writes through (any database) -------------


def _signup(form, email, *, at, ip="198.51.100.20", first_name=""):
    return services.Signup(
        form=form,
        email=email,
        first_name=first_name,
        evidence=services.Evidence(method="form-script", ip=ip, user_agent="Mozilla/5.0"),
        consent_text=form.consent_text if form else "Yes, email me news.",
        double_opt_in=form.double_opt_in if form else True,
        at=at,
    )


@pytest.mark.django_db
def test_a_batch_stores_new_known_and_repeated_addresses_as_single_signups_would(form):
    ContactFactory(email="kept@example.com", status="subscribed")
    ContactFactory(email="left@example.com", status="unsubscribed")
    at = timezone.now() - timedelta(hours=1)
    signups = [
        _signup(form, "new@example.com", at=at, first_name="Nina"),
        _signup(form, "kept@example.com", at=at + timedelta(seconds=1)),
        _signup(form, "twice@example.com", at=at + timedelta(seconds=2), ip="198.51.100.1"),
        _signup(form, "left@example.com", at=at + timedelta(seconds=3)),
        _signup(form, "twice@example.com", at=at + timedelta(seconds=4), ip="198.51.100.2"),
    ]
    assert services.contacts_subscribe_batch(signups) == []

    assert Contact.objects.count() == 4
    new = Contact.objects.get(email="new@example.com")
    assert (new.status, new.first_name, new.signup_form) == ("pending", "Nina", form)
    assert new.confirmation_due
    assert list(new.tags.values_list("name", flat=True)) == ["newsletter"]
    event = new.consent_events.get()
    assert (event.kind, event.created_at, event.ip) == ("signup", at, "198.51.100.20")
    assert (event.method, event.user_agent) == ("form-script", "Mozilla/5.0")
    assert event.consent_text == form.consent_text

    kept = Contact.objects.get(email="kept@example.com")
    assert kept.status == "subscribed"
    assert list(kept.tags.values_list("name", flat=True)) == ["newsletter"]
    kept_event = kept.consent_events.get()
    assert (kept_event.status_before, kept_event.status_after) == ("subscribed", "subscribed")
    assert kept_event.created_at == at + timedelta(seconds=1)

    left = Contact.objects.get(email="left@example.com")
    assert (left.status, left.confirmation_due) == ("unsubscribed", True)
    assert left.consent_events.get().status_before == "unsubscribed"

    twice = Contact.objects.get(email="twice@example.com")
    assert twice.status == "pending"
    events = list(_signup_events("twice@example.com"))
    assert [(e.ip, e.created_at) for e in events] == [
        ("198.51.100.1", at + timedelta(seconds=2)),
        ("198.51.100.2", at + timedelta(seconds=4)),
    ]


@pytest.mark.parametrize("beside_refused", [False, True], ids=["alone", "beside-a-refused-one"])
@pytest.mark.django_db
def test_a_new_contact_from_a_batch_is_dated_at_its_signup_not_at_the_drain(form, beside_refused):
    at = timezone.now() - timedelta(hours=1)
    signups = [_signup(form, "dated@example.com", at=at)]
    if beside_refused:  # on PostgreSQL the batch statement fails: stored one by one
        signups.append(_signup(form, "long@example.com", at=at, first_name="x" * 101))
    drained_at = timezone.now()
    services.contacts_subscribe_batch(signups)
    contact = Contact.objects.get(email="dated@example.com")
    assert contact.consent_events.get().created_at == at
    assert contact.confirmation_sent_at >= drained_at  # the mail is owed from now
    assert contact.created_at == at


@pytest.mark.django_db
def test_a_batch_signup_whose_form_is_gone_is_stored_without_a_form(form):
    at = timezone.now() - timedelta(minutes=5)
    assert services.contacts_subscribe_batch([_signup(None, "orphan@example.com", at=at)]) == []
    contact = Contact.objects.get(email="orphan@example.com")
    assert (contact.status, contact.signup_form, contact.confirmation_due) == (
        "pending",
        None,
        True,
    )
    assert not contact.tags.exists()
    event = contact.consent_events.get()
    assert (event.signup_form, event.consent_text, event.created_at) == (
        None,
        "Yes, email me news.",
        at,
    )


@needs_postgresql
@pytest.mark.django_db
def test_a_batch_returns_the_signup_the_database_refuses_and_stores_the_others(form):
    at = timezone.now() - timedelta(minutes=1)
    signups = [
        _signup(form, "good1@example.com", at=at),
        _signup(form, "refused@example.com", at=at, first_name="x" * 101),
        _signup(form, "good2@example.com", at=at),
    ]
    assert services.contacts_subscribe_batch(signups) == [1]
    assert sorted(Contact.objects.values_list("email", flat=True)) == [
        "good1@example.com",
        "good2@example.com",
    ]
    assert ConsentEvent.objects.count() == 2
    assert not Contact.objects.filter(email="refused@example.com").exists()
