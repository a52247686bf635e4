"""Double opt-in mail owed and sent (audience.confirmations), against a fake Mailgun."""

from __future__ import annotations

import io
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from audience import importing, services
from audience.models import Contact
from audience.tasks import send_confirmation, send_due_confirmations
from config.celery import app as celery_app
from tests.factories import ContactFactory, SignupFormFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def form():
    return SignupFormFactory(double_opt_in=True)


def _signup(form, email):
    return services.contact_subscribe(
        form=form, email=email, evidence=services.Evidence(method="form-html")
    )


def _owed(email) -> bool:
    return Contact.objects.get(email=email).confirmation_due


def test_a_signup_owes_its_mail_until_a_sweep_sends_it(esp, form, settings):
    settings.CONFIRMATION_BATCH_SECONDS = 60  # the kick's task would come a minute later
    _signup(form, "ada@example.com")
    assert _owed("ada@example.com")
    assert esp.state.stats()["requests"] == 0
    assert send_due_confirmations.apply().get() == 1
    assert not _owed("ada@example.com")
    assert [m["to"] for m in esp.state.messages()] == ["ada@example.com"]
    assert send_due_confirmations.apply().get() == 0  # paid: nothing goes twice


def test_a_contact_who_confirmed_meanwhile_gets_no_mail(esp, form, settings):
    settings.CONFIRMATION_BATCH_SECONDS = 60
    contact = _signup(form, "quick@example.com")
    services.contact_confirm(
        contact=contact,
        requested_at=contact.optin_requested_at,
        evidence=services.Evidence(method="confirm-link"),
    )
    assert send_due_confirmations.apply().get() == 0
    assert not _owed("quick@example.com")
    assert esp.state.stats()["requests"] == 0


def test_provider_down_keeps_every_debt_for_the_next_sweep(esp, form, settings):
    settings.CONFIRMATION_BATCH_SECONDS = 60
    for email in ("a@example.com", "b@example.com"):
        _signup(form, email)
    esp.state.control({"fail_next": 1, "status": 503})
    assert send_due_confirmations.apply().get() == 0
    assert _owed("a@example.com") and _owed("b@example.com")
    assert esp.state.stats()["failures_served"] == 1  # it stopped at the first failure
    assert send_due_confirmations.apply().get() == 2
    assert not _owed("a@example.com") and not _owed("b@example.com")


def test_wrong_credentials_keep_the_debts_and_stop_the_sweep(esp, form, settings):
    settings.CONFIRMATION_BATCH_SECONDS = 60
    for email in ("a@example.com", "b@example.com"):
        _signup(form, email)
    esp.state.control({"fail_always": 401})
    assert send_due_confirmations.apply().get() == 0
    assert esp.state.stats()["failures_served"] == 1
    assert _owed("a@example.com") and _owed("b@example.com")


def test_an_address_the_provider_refuses_does_not_hold_up_the_others(esp, form, settings):
    settings.CONFIRMATION_BATCH_SECONDS = 60
    for email in ("bad@example.com", "good@example.com"):
        _signup(form, email)
    esp.state.control({"reject": ["bad@example.com"]})
    assert send_due_confirmations.apply().get() == 1
    assert [m["to"] for m in esp.state.messages()] == ["good@example.com"]
    # The refused one is tried again by later sweeps, until its link would have expired.
    assert _owed("bad@example.com")
    Contact.objects.filter(email="bad@example.com").update(
        confirmation_sent_at=timezone.now() - timedelta(days=settings.CONFIRMATION_MAX_AGE_DAYS + 1)
    )
    assert send_due_confirmations.apply().get() == 0
    assert not _owed("bad@example.com")


def test_a_signup_stands_when_the_broker_is_unreachable(form, settings, monkeypatch):
    settings.CONFIRMATION_BATCH_SECONDS = 0
    # Nothing listens on port 1: the broker is down, with no connection pooled before.
    monkeypatch.setattr(celery_app.conf, "broker_url", "redis://127.0.0.1:1/0")
    monkeypatch.setattr(celery_app, "_pool", None)
    monkeypatch.setattr(celery_app.amqp, "_producer_pool", None)
    contact = _signup(form, "stays@example.com")  # no exception: the signup has committed
    assert Contact.objects.get(pk=contact.pk).confirmation_due  # the sweep will send it


def test_messages_queued_before_the_upgrade_still_become_mail(esp, form, settings):
    settings.CONFIRMATION_BATCH_SECONDS = 60
    contact = ContactFactory(email="old@example.com", status=Contact.Status.PENDING)
    send_confirmation.apply(args=[contact.pk])  # the task older versions queued
    assert _owed("old@example.com")
    assert send_due_confirmations.apply().get() == 1


def test_contacts_an_import_leaves_pending_get_their_mail(
    esp, settings, tmp_path, eager_tasks, django_capture_on_commit_callbacks
):
    settings.MEDIA_ROOT = tmp_path
    data = b"Email,First Name\nimp1@example.com,Ann\nimp2@example.com,Bo\n"
    job = importing.job_create(f=io.BytesIO(data), name="list.csv", size=len(data))
    job = importing.job_start(job=job, options={"new_status": "pending"}, dispatch=False)
    with django_capture_on_commit_callbacks(execute=True):
        importing.run_job(job.pk)
    assert sorted(m["to"] for m in esp.state.messages()) == [
        "imp1@example.com",
        "imp2@example.com",
    ]
    assert not Contact.objects.filter(confirmation_due=True).exists()


@pytest.fixture
def dead_broker(monkeypatch):
    """Point the app at a port nobody listens on, as when Redis is down."""
    import socket

    from audience import confirmations

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again once the block ends: nobody answers
    monkeypatch.setattr(celery_app.conf, "broker_url", f"redis://127.0.0.1:{port}/0")
    monkeypatch.setattr(celery_app, "_pool", None)
    monkeypatch.setattr(celery_app.amqp, "_producer_pool", None)
    yield
    confirmations._kicked["broker_down_until"] = float("-inf")


def test_signups_while_the_broker_is_down_answer_fast_and_still_owe_their_mail(
    dead_broker, form, client, mailoutbox, django_capture_on_commit_callbacks
):
    from audience.forms import render_stamp

    form.public_key = "shop"
    form.save()
    took = []
    for i in range(21):
        payload = {"email": f"outage{i}@example.com", "consent": "on", "ts": render_stamp(form)}
        started = time.monotonic()
        with django_capture_on_commit_callbacks(execute=True):  # the kick, after commit
            response = client.post(
                "/f/shop/submit",
                payload,
                HTTP_ACCEPT="application/json",
                REMOTE_ADDR=f"198.51.100.{i + 1}",  # each under the per-address limit
            )
        took.append(time.monotonic() - started)
        assert response.status_code == 200, response.content
    # The first finds the broker down (one connection attempt, no publish retries)...
    assert took[0] < 2.0, took[0]
    # ...and the next ones don't ask it again (0.6 s each before), yet every signup is
    # stored and owes its mail, which the sweep sends once the broker is back.
    assert max(took[1:]) < 0.1, [round(t, 3) for t in took]
    emails = [f"outage{i}@example.com" for i in range(21)]
    assert Contact.objects.filter(email__in=emails, confirmation_due=True).count() == 21
    assert not mailoutbox
    assert send_due_confirmations.apply().get() == 21
    assert sorted(m.to[0] for m in mailoutbox) == sorted(emails)
