"""The welcome email (audience.welcome owes it, campaigns.welcome sends it), against a
fake Mailgun on loopback: once per contact, only to the subscribed, never twice."""

from __future__ import annotations

import io
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from django.core.exceptions import ValidationError
from django.db import transaction
from django.urls import reverse
from django.utils import timezone

from audience import importing, services, welcome
from audience.models import Contact, Store, WelcomeEmail
from audience.tokens import contact_url, read_token
from campaigns.tasks import send_due_welcomes
from tests.factories import ContactFactory, SignupFormFactory
from tests.polling import wait_for
from tests.stores import fixture, shopify_post, woo_post

pytestmark = pytest.mark.django_db

State = WelcomeEmail.State
BODY = "Hello {{ first_name|default:'friend' }}, welcome to **{{ from_name }}**."


@pytest.fixture
def welcome_form():
    return SignupFormFactory(
        double_opt_in=True,
        welcome_enabled=True,
        welcome_subject="Welcome, {{ first_name|default:'friend' }}!",
        welcome_body=BODY,
    )


@pytest.fixture
def shop(sender):
    sender.postal_address = "1 Harbour Road\nPortsmouth"
    sender.save()
    return sender


def _signup(form, email, **names):
    return services.contact_subscribe(
        form=form, email=email, evidence=services.Evidence(method="form-html"), **names
    )


def _confirm(client, email):
    contact = Contact.objects.get(email=email)
    return client.post(contact_url("confirm", contact))


def _welcomes(esp) -> list[dict]:
    return [m for m in esp.state.messages() if m["subject"].startswith("Welcome")]


def _state(email) -> str:
    return WelcomeEmail.objects.get(contact__email=email).state


def test_a_confirmed_double_opt_in_gets_one_welcome_in_the_campaign_layout(
    esp, shop, welcome_form, client, django_capture_on_commit_callbacks
):
    _signup(welcome_form, "ada@example.com", first_name="Ada")
    assert not WelcomeEmail.objects.exists()  # pending: not welcomed before confirming
    with django_capture_on_commit_callbacks() as callbacks:
        assert _confirm(client, "ada@example.com").status_code == 200
    assert welcome.kick in callbacks  # the worker is kicked once the confirm commits
    assert send_due_welcomes.apply().get() == 1

    (message,) = _welcomes(esp)
    assert message["to"] == "ada@example.com"
    assert message["subject"] == "Welcome, Ada!"
    assert "Hello Ada, welcome to <strong>Corner Shop</strong>." in message["html"]
    assert "Hello Ada, welcome to Corner Shop." in message["text"]
    headers = message["headers"]
    assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    unsubscribe = urlsplit(headers["List-Unsubscribe"].strip("<>")).path
    assert read_token("unsubscribe", unsubscribe.rstrip("/").rsplit("/", 1)[-1]).email == (
        "ada@example.com"
    )
    assert "Unsubscribe" in message["html"] and "/u/" in message["text"]
    assert "1 Harbour Road<br>Portsmouth" in message["html"]
    assert message["metadata"] == {"welcome": str(WelcomeEmail.objects.get().pk)}
    row = WelcomeEmail.objects.get()
    assert (row.state, row.signup_form, row.message_id) == (
        State.SENT, welcome_form, message["message_id"]
    )  # fmt: skip
    assert row.sent_at is not None
    assert send_due_welcomes.apply().get() == 0  # sent: nothing goes twice
    assert len(_welcomes(esp)) == 1


def test_a_form_without_a_welcome_sends_none(esp, shop, client):
    form = SignupFormFactory(double_opt_in=True, welcome_body=BODY, welcome_subject="Welcome")
    _signup(form, "plain@example.com")
    _confirm(client, "plain@example.com")
    single = SignupFormFactory(double_opt_in=False)
    _signup(single, "single@example.com")
    assert not WelcomeEmail.objects.exists()
    assert send_due_welcomes.apply().get() == 0
    assert _welcomes(esp) == []


def test_a_single_opt_in_signup_owes_its_welcome_in_the_same_write(
    esp, shop, welcome_form, django_capture_on_commit_callbacks
):
    """On PostgreSQL the signup is one INSERT statement (services._contacts_insert_new):
    the welcome row is part of it; elsewhere the ORM path owes it in its transaction."""
    welcome_form.double_opt_in = False
    welcome_form.save()
    with django_capture_on_commit_callbacks() as callbacks:
        contact = _signup(welcome_form, "now@example.com", first_name="Nia")
    assert contact.status == Contact.Status.SUBSCRIBED
    assert welcome.kick in callbacks
    row = WelcomeEmail.objects.get()
    assert (row.contact_id, row.signup_form_id, row.state) == (
        contact.pk, welcome_form.pk, State.OWED
    )  # fmt: skip
    assert send_due_welcomes.apply().get() == 1
    assert [m["subject"] for m in _welcomes(esp)] == ["Welcome, Nia!"]


def test_a_batch_of_buffered_signups_owes_each_new_subscriber_one_welcome(esp, shop, welcome_form):
    welcome_form.double_opt_in = False
    welcome_form.save()
    ContactFactory(email="known@example.com")  # already subscribed: not newly welcomed
    now = timezone.now()
    signups = [
        services.Signup(
            form=welcome_form,
            email=email,
            evidence=services.Evidence(method="form-script"),
            consent_text="",
            double_opt_in=False,
            at=now,
        )
        for email in ("b1@example.com", "b2@example.com", "b1@example.com", "known@example.com")
    ]
    assert services.contacts_subscribe_batch(signups) == []
    assert sorted(WelcomeEmail.objects.values_list("contact__email", flat=True)) == [
        "b1@example.com",
        "b2@example.com",
    ]
    assert send_due_welcomes.apply().get() == 2
    assert sorted(m["to"] for m in _welcomes(esp)) == ["b1@example.com", "b2@example.com"]


def test_confirming_twice_or_coming_back_after_an_unsubscribe_welcomes_once(
    esp, shop, welcome_form, client
):
    _signup(welcome_form, "back@example.com")
    _confirm(client, "back@example.com")
    assert send_due_welcomes.apply().get() == 1
    assert _confirm(client, "back@example.com").status_code == 400  # the request is closed
    contact = Contact.objects.get(email="back@example.com")
    services.contact_unsubscribe(contact=contact, evidence=services.Evidence(method="one-click"))
    _signup(welcome_form, "back@example.com")  # their own act: asked to confirm again
    assert _confirm(client, "back@example.com").status_code == 200
    assert Contact.objects.get(email="back@example.com").status == Contact.Status.SUBSCRIBED
    assert send_due_welcomes.apply().get() == 0
    assert WelcomeEmail.objects.count() == 1
    assert len(_welcomes(esp)) == 1


def test_a_contact_who_unsubscribes_before_the_worker_runs_is_skipped_on_its_timeline(
    esp, shop, welcome_form, client, admin_client
):
    _signup(welcome_form, "gone@example.com")
    _confirm(client, "gone@example.com")
    contact = Contact.objects.get(email="gone@example.com")
    services.contact_unsubscribe(contact=contact, evidence=services.Evidence(method="one-click"))
    assert send_due_welcomes.apply().get() == 0
    assert _welcomes(esp) == []
    assert _state("gone@example.com") == State.SKIPPED
    page = admin_client.get(reverse("admin:audience_contact_change", args=[contact.pk]))
    assert "Welcome email skipped (not subscribed)" in page.content.decode()


def test_the_timeline_shows_a_sent_welcome(esp, shop, welcome_form, client, admin_client):
    _signup(welcome_form, "shown@example.com")
    _confirm(client, "shown@example.com")
    send_due_welcomes.apply().get()
    contact = Contact.objects.get(email="shown@example.com")
    page = admin_client.get(reverse("admin:audience_contact_change", args=[contact.pk]))
    html = page.content.decode()
    assert "Welcome email sent" in html
    assert f"form: {welcome_form.name}" in html


def test_an_owner_marking_a_contact_subscribed_owes_the_form_welcome(
    esp, shop, welcome_form, admin_user
):
    contact = _signup(welcome_form, "paper@example.com")
    services.contact_mark_subscribed(
        contact=contact, statement="Signed the sheet at the market stall",
        evidence=services.Evidence(method="admin", actor=admin_user.username),
    )  # fmt: skip
    assert send_due_welcomes.apply().get() == 1
    assert [m["to"] for m in _welcomes(esp)] == ["paper@example.com"]


def _store(kind=Store.Kind.SHOPIFY, **fields):
    return Store.objects.create(
        kind=kind, name="Corner", domain="corner.myshopify.com", secret="s",
        welcome_enabled=True, welcome_subject="Welcome from the shop",
        welcome_body="Thanks for shopping, {{ first_name }}.", **fields,
    )  # fmt: skip


def test_a_store_customer_who_opted_in_at_checkout_gets_the_store_welcome_once(esp, shop):
    store = _store()
    customer = fixture("shopify_customers_create.json")  # email marketing: subscribed
    assert shopify_post(store, "customers/create", customer).status_code == 200
    later = {**customer, "updated_at": "2026-12-01T10:00:00-05:00", "first_name": "Robert"}
    assert shopify_post(store, "customers/update", later).status_code == 200
    assert send_due_welcomes.apply().get() == 1
    (message,) = _welcomes(esp)
    assert message["to"] == "bob@biller.com"
    assert "Thanks for shopping, Robert." in message["text"]  # rendered when sent
    assert WelcomeEmail.objects.get().store == store
    assert send_due_welcomes.apply().get() == 0


def test_a_store_customer_without_consent_is_owed_no_welcome(esp, shop):
    store = _store()
    customer = fixture("shopify_customers_create.json")
    customer["email_marketing_consent"]["state"] = "not_subscribed"
    assert shopify_post(store, "customers/create", customer).status_code == 200
    assert Contact.objects.get().status == Contact.Status.PENDING
    assert not WelcomeEmail.objects.exists()
    assert welcome.welcome_owe(contact=Contact.objects.get(), store=store) is False


def test_a_store_customer_asked_by_double_opt_in_is_welcomed_by_the_store_on_confirming(
    esp, shop, client
):
    store = _store(kind=Store.Kind.WOOCOMMERCE, confirm_unconsented=True)
    customer = fixture("woocommerce_customer_created.json")
    assert woo_post(store, "customer.created", customer).status_code == 200
    assert not WelcomeEmail.objects.exists()  # not subscribed yet: nothing owed
    assert _confirm(client, "john.doe@example.com").status_code == 200
    assert send_due_welcomes.apply().get() == 1
    (message,) = _welcomes(esp)
    assert (message["to"], message["subject"]) == ("john.doe@example.com", "Welcome from the shop")
    assert "Thanks for shopping, John." in message["text"]


def test_a_welcome_turned_off_before_it_went_is_skipped(esp, shop, welcome_form, client):
    _signup(welcome_form, "off@example.com")
    _confirm(client, "off@example.com")
    welcome_form.welcome_enabled = False
    welcome_form.save()
    assert send_due_welcomes.apply().get() == 0
    assert _state("off@example.com") == State.SKIPPED
    assert _welcomes(esp) == []


def test_a_provider_outage_keeps_the_welcome_owed_for_the_next_sweep(
    esp, shop, welcome_form, client
):
    _signup(welcome_form, "wait@example.com")
    _confirm(client, "wait@example.com")
    esp.state.control({"fail_next": 1, "status": 503})
    assert send_due_welcomes.apply().get() == 0
    assert _state("wait@example.com") == State.OWED
    assert send_due_welcomes.apply().get() == 1
    assert len(_welcomes(esp)) == 1


def test_a_send_whose_answer_never_came_is_in_doubt_and_never_sent_again(
    esp, shop, welcome_form, client
):
    """The provider took it but answered after the client gave up (REQUESTS_TIMEOUT 1 s):
    it may well have arrived, so it is not sent again, by this sweep or the next."""
    _signup(welcome_form, "late@example.com")
    _confirm(client, "late@example.com")
    esp.state.control({"deliver_late_next": 1, "seconds": 2})
    assert send_due_welcomes.apply().get() == 0
    assert _state("late@example.com") == State.IN_DOUBT
    assert send_due_welcomes.apply().get() == 0
    assert esp.state.stats()["recipients"] == 1
    assert len(_welcomes(esp)) == 1


def test_a_claim_whose_worker_went_silent_is_in_doubt_not_sent_again(
    esp, shop, welcome_form, client, settings
):
    _signup(welcome_form, "doubt@example.com")
    _confirm(client, "doubt@example.com")
    # As a worker killed between its claim and its mark leaves it.
    WelcomeEmail.objects.update(
        state=State.SENDING, claimed_at=timezone.now() - timedelta(seconds=10)
    )
    settings.CAMPAIGN_CLAIM_TIMEOUT = 60
    assert send_due_welcomes.apply().get() == 0
    assert _state("doubt@example.com") == State.SENDING  # its worker may still be sending
    settings.CAMPAIGN_CLAIM_TIMEOUT = 5
    assert send_due_welcomes.apply().get() == 0
    assert _state("doubt@example.com") == State.IN_DOUBT
    assert send_due_welcomes.apply().get() == 0
    assert esp.state.stats()["requests"] == 0


def test_a_refused_address_is_marked_and_not_retried(esp, shop, welcome_form, client):
    _signup(welcome_form, "refused@example.com")
    _confirm(client, "refused@example.com")
    esp.state.control({"reject": ["refused@example.com"]})
    assert send_due_welcomes.apply().get() == 0
    assert _state("refused@example.com") == State.FAILED
    assert send_due_welcomes.apply().get() == 0


@pytest.mark.parametrize(
    ("subject", "body", "field"),
    [
        ("Welcome {{ nickname }}", BODY, "welcome_subject"),
        ("Welcome", "Hi {% load static %}", "welcome_body"),
        ("Welcome", "", "welcome_body"),
        ("", BODY, "welcome_subject"),
    ],
)
def test_a_welcome_that_would_not_render_is_refused_when_saved(subject, body, field):
    form = SignupFormFactory.build(welcome_enabled=True, welcome_subject=subject, welcome_body=body)
    with pytest.raises(ValidationError) as error:
        form.full_clean()
    assert field in error.value.message_dict
    store = Store(kind=Store.Kind.SHOPIFY, name="S", secret="x", welcome_enabled=True,
                  welcome_subject=subject, welcome_body=body)  # fmt: skip
    with pytest.raises(ValidationError) as error:
        store.full_clean()
    assert field in error.value.message_dict


def test_the_form_admin_edits_the_welcome(admin_client, welcome_form):
    url = reverse("admin:audience_signupform_change", args=[welcome_form.pk])
    html = admin_client.get(url).content.decode()
    assert 'name="welcome_body"' in html and 'name="welcome_enabled"' in html
    store = Store.objects.create(kind=Store.Kind.SHOPIFY, name="Corner", secret="s")
    html = admin_client.get(reverse("admin:audience_store_change", args=[store.pk])).content
    assert b'name="welcome_subject"' in html


@pytest.mark.worker
def test_a_real_worker_sends_the_welcome_once_the_confirm_commits(
    celery_worker, esp, shop, welcome_form, client
):
    _signup(welcome_form, "worker@example.com", first_name="Wil")
    assert _confirm(client, "worker@example.com").status_code == 200
    assert wait_for(lambda: _state("worker@example.com") == State.SENT, timeout=30)
    assert [m["subject"] for m in _welcomes(esp)] == ["Welcome, Wil!"]
    assert send_due_welcomes.apply().get() == 0  # the sweep after it finds nothing owed
    assert len(_welcomes(esp)) == 1


def test_the_signup_statement_and_its_welcome_roll_back_together(welcome_form):
    welcome_form.double_opt_in = False
    welcome_form.save()

    class Rollback(Exception):
        pass

    with pytest.raises(Rollback), transaction.atomic():
        _signup(welcome_form, "ghost@example.com")
        assert WelcomeEmail.objects.count() == 1
        raise Rollback
    assert not WelcomeEmail.objects.exists()
    assert not Contact.objects.filter(email="ghost@example.com").exists()


# --- imports ----------------------------------------------------------------------------

SHOPIFY_EXPORT = (
    Path(__file__).resolve().parent.parent / "fixtures" / "imports" / ("shopify_customers.csv")
)


def _import(media, **options):
    data = SHOPIFY_EXPORT.read_bytes()
    job = importing.job_create(f=io.BytesIO(data), name="customers_export.csv", size=len(data))
    job = importing.job_start(job=job, options=options, dispatch=False)
    return importing.run_job(job.pk)


@pytest.fixture
def media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"


def test_an_import_welcomes_only_whom_it_subscribes_and_only_when_asked(
    esp, shop, welcome_form, media
):
    ContactFactory(email="uma@example.com")  # subscribed before: not welcomed by an import
    _import(media, new_status="consent")  # no welcome chosen: nobody is owed one
    assert not WelcomeEmail.objects.exists()
    Contact.objects.exclude(email="uma@example.com").delete()
    _import(media, new_status="consent", welcome_form=welcome_form.pk)
    _import(media, new_status="consent", welcome_form=welcome_form.pk)  # the same file again
    assert set(WelcomeEmail.objects.values_list("contact__email", flat=True)) == {
        "ines@example.com"  # accepts email marketing; tom@ declined, so is only stored
    }
    assert send_due_welcomes.apply().get() == 1
    assert [m["to"] for m in _welcomes(esp)] == ["ines@example.com"]


@pytest.mark.parametrize(
    ("new_status", "welcome_on", "message"),
    [
        ("pending", True, "only to contacts the import subscribes"),
        ("consent", False, "one a signup form has turned on"),
    ],
)
def test_an_import_welcome_that_cannot_be_sent_is_refused_before_it_runs(
    media, new_status, welcome_on, message
):
    form = SignupFormFactory(welcome_enabled=welcome_on, welcome_subject="Hi", welcome_body="Hi")
    data = SHOPIFY_EXPORT.read_bytes()
    job = importing.job_create(f=io.BytesIO(data), name="customers_export.csv", size=len(data))
    with pytest.raises(ValueError, match=message):
        importing.job_start(
            job=job, options={"new_status": new_status, "welcome_form": form.pk}, dispatch=False
        )
    assert not Contact.objects.exists()
