"""Double opt-in mail owed and sent (audience.confirmations), against a fake Mailgun."""

from __future__ import annotations

import io
import re
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from audience import importing, services
from audience.models import Contact, SignupForm
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
    confirmations.kick.forget()


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


# --- the mail itself: from the sender settings, the form's own text, the branded layout ---

CONFIRM_HREF = re.compile(r'href="(http://testserver/confirm/[^"]+/)"')


def test_the_confirmation_comes_from_the_sender_settings(esp, form, sender, settings):
    settings.CONFIRMATION_BATCH_SECONDS = 60
    _signup(form, "ada@example.com")
    assert send_due_confirmations.apply().get() == 1
    [mail] = esp.state.messages()
    assert mail["from"] == "Corner Shop <hello@corner.example>"
    assert mail["headers"]["Reply-To"] == "owner@corner.example"
    assert "hello@localhost" not in mail["from"]


def test_without_a_sender_address_the_confirmation_comes_from_default_from_email(
    esp, form, settings
):
    settings.CONFIRMATION_BATCH_SECONDS = 60
    settings.DEFAULT_FROM_EMAIL = "Shop <shop@fallback.example>"
    _signup(form, "ada@example.com")
    assert send_due_confirmations.apply().get() == 1
    [mail] = esp.state.messages()
    assert mail["from"] == "Shop <shop@fallback.example>"
    assert "Reply-To" not in mail["headers"]


def test_each_form_sends_its_own_text_in_the_branded_layout_and_its_link_confirms(
    esp, sender, settings, client
):
    settings.CONFIRMATION_BATCH_SECONDS = 60
    sender.logo_url = "https://corner.example/logo.png"
    sender.accent_color = "#aa3300"
    sender.save()
    form = SignupFormFactory(
        title="Market news",
        confirmation_subject="{{ first_name|default:'Friend' }}, one click for {{ from_name }}",
        confirmation_body=(
            "**Hi {{ first_name }}!** Thanks for visiting {{ form_title }}.\n\n"
            "[Count me in]({{ confirm_url }})\n\nValid {{ confirm_days }} days."
        ),
    )
    other = SignupFormFactory()  # a form left with the default text
    services.contact_subscribe(
        form=form, email="ann@example.com", first_name="<b>Ann</b>",
        evidence=services.Evidence(method="form-html"),
    )  # fmt: skip
    _signup(other, "bo@example.com")
    assert send_due_confirmations.apply().get() == 2
    mails = {m["to"]: m for m in esp.state.messages()}

    ann = mails["ann@example.com"]
    assert ann["subject"] == "<b>Ann</b>, one click for Corner Shop"
    html = ann["html"]
    assert "<strong>Hi &lt;b&gt;Ann&lt;/b&gt;!</strong> Thanks for visiting Market news." in html
    assert '<img src="https://corner.example/logo.png" alt="Corner Shop"' in html
    assert "border-top:4px solid #aa3300" in html
    assert "Valid 7 days." in html
    assert "1 High Street, Springfield" in html  # the shop's own footer
    link = CONFIRM_HREF.search(html).group(1)
    assert f"Count me in ({link})" in ann["text"]
    assert "Hi <b>Ann</b>!" in ann["text"]  # as typed in the text part

    bo = mails["bo@example.com"]
    assert bo["subject"].startswith("Please confirm your subscription")
    assert "Please confirm that you want to hear from Corner Shop" in bo["html"]
    assert "Yes, subscribe me" in bo["html"]

    # The edited mail's link is a real one: it confirms the request it was mailed for.
    path = link.removeprefix("http://testserver")
    assert client.get(path).status_code == 200
    assert client.post(path).status_code == 200
    assert Contact.objects.get(email="ann@example.com").status == Contact.Status.SUBSCRIBED


def test_a_batch_compiles_each_forms_mail_once_and_an_edit_is_seen_by_the_next(
    esp, form, sender, settings, monkeypatch
):
    from audience import emails

    settings.CONFIRMATION_BATCH_SECONDS = 60
    builds = []
    real_build = emails._build
    monkeypatch.setattr(emails, "_build", lambda **kw: builds.append(kw) or real_build(**kw))
    monkeypatch.setattr(emails, "_cache", {})
    for i in range(6):
        _signup(form, f"batch{i}@example.com")
    assert send_due_confirmations.apply().get() == 6
    assert len(builds) == 1  # one Markdown pass and one layout for the six mails

    form.confirmation_body = "New words. [Confirm]({{ confirm_url }})"
    form.full_clean()
    form.save()
    builds.clear()  # the check compiled it too; what counts is the sender
    _signup(SignupForm.objects.get(pk=form.pk), "later@example.com")
    assert send_due_confirmations.apply().get() == 1
    assert len(builds) == 1
    later = [m for m in esp.state.messages() if m["to"] == "later@example.com"]
    assert "New words." in later[0]["html"]


def test_a_contact_added_without_a_form_gets_the_default_mail_from_the_sender(
    esp, sender, settings
):
    settings.CONFIRMATION_BATCH_SECONDS = 60
    services.contact_create(email="typed@example.com", evidence=services.Evidence(method="admin"))
    assert send_due_confirmations.apply().get() == 1
    [mail] = esp.state.messages()
    assert mail["from"] == "Corner Shop <hello@corner.example>"
    assert mail["subject"] == "Please confirm your subscription"
    assert CONFIRM_HREF.search(mail["html"])


@pytest.mark.parametrize(
    ("subject", "body", "field", "message"),
    [
        ("Hi", "Please confirm. Thanks!", "confirmation_body", "must link to {{ confirm_url }}"),
        ("Hi", "{% if first_name %}[Yes]({{ confirm_url }}){% endif %}", "confirmation_body",
         "must link to {{ confirm_url }}"),
        ("Hi", "Plain {{ confirm_url }} is no link", "confirmation_body", "must link to"),
        ("Hi", "[Yes]({{ confirm_url }}) {{ password }}", "confirmation_body",
         "Unknown merge field 'password'"),
        ("Hi", "{% load static %}[Yes]({{ confirm_url }})", "confirmation_body",
         "Merge field error"),
        ("Hi {{ first_name", "[Yes]({{ confirm_url }})", "confirmation_subject",
         "never closed"),
        ("Hi {{ secret }}", "[Yes]({{ confirm_url }})", "confirmation_subject",
         "Unknown merge field 'secret'"),
    ],
)  # fmt: skip
def test_a_form_refuses_a_confirmation_mail_it_could_not_send(subject, body, field, message):
    from django.core.exceptions import ValidationError

    form = SignupFormFactory()
    form.confirmation_subject, form.confirmation_body = subject, body
    with pytest.raises(ValidationError) as refused:
        form.full_clean()
    assert message in " ".join(refused.value.message_dict[field])
    form.refresh_from_db()
    assert "{{ confirm_url }}" in form.confirmation_body  # the stored mail is untouched


def test_a_confirmation_left_empty_is_the_default_one(esp, sender, settings):
    settings.CONFIRMATION_BATCH_SECONDS = 60
    form = SignupFormFactory(title="Shop", confirmation_subject="", confirmation_body="")
    form.full_clean()
    _signup(form, "ada@example.com")
    assert send_due_confirmations.apply().get() == 1
    [mail] = esp.state.messages()
    assert mail["subject"] == "Please confirm your subscription: Shop"
    assert CONFIRM_HREF.search(mail["html"])
