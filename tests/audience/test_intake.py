"""The signup buffer (audience.intake): with Redis, a public signup is counted and put in a
Redis stream while the visitor waits, and a drain moves the stream into contacts later.

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
from datetime import timedelta

import pytest
import redis.exceptions
from django.conf import settings as django_settings
from django.core.cache import cache
from django.db import DatabaseError, connection
from django.utils import timezone

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
    """The signup buffer on, as in production with Redis."""
    settings.SIGNUP_BUFFER = True
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


def _set_aside() -> list[tuple[bytes, dict]]:
    return throttle._redis_client().xrange(cache.make_key(intake.FAILED_STREAM))


def _entry(form, email, *, first_name="", ip="198.51.100.30", at=None) -> dict:
    """A buffer entry as intake.signup writes it (for entries a test puts in directly)."""
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
    assert SignupBufferCursor.objects.get(name=intake.STREAM).drained == 1
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
    throttle._redis_client().set(flag, "1", px=3_600_000)
    settings.SIGNUP_BUFFER_SECONDS = 0.2
    _signed_up(client, form, "first@example.com")
    assert queued_drains == []  # the old flag's drain is on its way
    assert 0 < throttle._redis_client().pttl(flag) <= 200
    assert wait_for(lambda: throttle._redis_client().pttl(flag) == -2, timeout=5)
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
    assert SignupBufferCursor.objects.get(name=intake.STREAM).drained == 5


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
    """The drain's first XTRIM, after its commit, fails as if Redis went away."""
    client_redis = throttle._redis_client()
    real_xtrim = client_redis.xtrim
    failures = []

    def xtrim_fails_once(*args, **kwargs):
        if not failures:
            failures.append(1)
            raise redis.exceptions.ConnectionError("Redis went away after the commit")
        return real_xtrim(*args, **kwargs)

    monkeypatch.setattr(client_redis, "xtrim", xtrim_fails_once)


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
        assert Contact.objects.get(email=email).status == "pending"
    assert sorted(m.to[0] for m in mailoutbox) == [
        "known@example.com",
        "one@example.com",
        "two@example.com",
    ]
    assert intake.backlog() == 0
    assert SignupBufferCursor.objects.get(name=intake.STREAM).drained == 3


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
    # Anyone can type anyone's address: a suppressed one goes through double opt-in.
    assert left.status == "pending"
    assert left.confirmation_due
    event = _signup_events("left@example.com").get()
    assert (event.status_before, event.status_after) == ("unsubscribed", "pending")


@pytest.mark.usefixtures("buffer", "queued_drains")
@needs_redis
@pytest.mark.django_db
def test_the_same_new_address_twice_in_one_batch_is_one_contact_with_two_signup_events(
    client, form
):
    _signed_up(client, form, "twice@example.com", REMOTE_ADDR="198.51.100.1")
    _signed_up(client, form, "twice@example.com", REMOTE_ADDR="198.51.100.2")
    assert intake.backlog() == 2
    assert intake.drain() == 2
    contact = Contact.objects.get(email="twice@example.com")
    assert contact.status == "pending"
    events = list(_signup_events("twice@example.com"))
    assert [e.ip for e in events] == ["198.51.100.1", "198.51.100.2"]
    assert events[0].created_at < events[1].created_at
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
    stream = throttle._redis_client()
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
    stream = throttle._redis_client()
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
    stream = throttle._redis_client()
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

    monkeypatch.setattr(throttle, "count_then_append", unreachable)
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
    real = throttle.count_then_append

    def appended_then_lost(*args, **kwargs):
        real(*args, **kwargs)
        raise redis.exceptions.TimeoutError("Timeout reading from socket")

    monkeypatch.setattr(throttle, "count_then_append", appended_then_lost)
    _signed_up(client, form, "lost-reply@example.com")
    assert Contact.objects.filter(email="lost-reply@example.com").exists()
    assert intake.backlog() == 1
    monkeypatch.setattr(throttle, "count_then_append", real)
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

    monkeypatch.setattr(throttle, "count_then_append", unreachable)
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
    throttle._redis_client().xadd(_stream(), {"v": json.dumps([99, "a newer layout"])})
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
    assert (left.status, left.confirmation_due) == ("pending", True)
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
