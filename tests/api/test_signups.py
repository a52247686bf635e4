"""POST /api/v1/signups: a person signing up through one of the shop's forms, posted by
its server. The form's rules hold as on its page: its fields, its consent box, its double
opt-in (an opted-out address is asked, never re-subscribed), its tags and welcome."""

from __future__ import annotations

import pytest
from django.test import TestCase

from audience.models import ConsentEvent, Contact, WelcomeEmail
from audience.services import Evidence, contact_unsubscribe
from tests.factories import ContactFactory, SignupFormFactory, TagFactory

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("eager_tasks")]

SIGNUPS = "/api/v1/signups/"
Status = Contact.Status


@pytest.fixture
def form():
    signup_form = SignupFormFactory(
        public_key="till", double_opt_in=True, consent_text="Email me news and offers"
    )
    signup_form.tags.add(TagFactory(name="in-store"))
    return signup_form


def _signup(api, **body):
    # Committed as the request's transaction is: the mail it owes is then sent.
    with TestCase.captureOnCommitCallbacks(execute=True):
        return api.post(SIGNUPS, body, format="json")


def test_a_signup_is_stored_pending_with_its_evidence_and_asked_to_confirm(api, form, mailoutbox):
    response = _signup(
        api, form="till", email=" Ada@Example.COM ", first_name="Ada", consent=True,
        ip="203.0.113.7", user_agent="Till/3.1",
    )  # fmt: skip
    assert response.status_code == 202
    assert response.json()["double_opt_in"] is True
    contact = Contact.objects.get()
    assert (contact.email, contact.first_name, contact.status) == (
        "ada@example.com", "Ada", Status.PENDING,
    )  # fmt: skip
    assert set(contact.tags.values_list("name", flat=True)) == {"in-store"}
    event = contact.consent_events.get()
    assert (event.kind, event.method, event.ip, event.user_agent) == (
        ConsentEvent.Kind.SIGNUP, "api", "203.0.113.7", "Till/3.1",
    )  # fmt: skip
    assert event.consent_text == "Email me news and offers"
    assert event.signup_form == form
    assert event.actor == f"api:{api.api_token.prefix}"
    assert [m.to for m in mailoutbox] == [["ada@example.com"]]
    assert "/confirm/" in mailoutbox[0].body


def test_the_forms_consent_box_and_fields_are_required_as_on_its_page(api, form):
    form.name_field = "required"
    form.save()
    response = _signup(api, form="till", email="ada@example.com")
    assert response.status_code == 400
    assert set(response.json()) == {"consent", "first_name", "last_name"}
    assert response.json()["consent"] == ["Please tick the box to agree."]
    response = _signup(api, form="till", email="not an address", consent=True)
    assert response.status_code == 400
    assert "email" in response.json()
    assert not Contact.objects.exists()


@pytest.mark.parametrize("enabled", [False, None])
def test_a_form_that_is_off_or_unknown_is_404_and_stores_nothing(api, form, enabled):
    if enabled is False:
        form.enabled = False
        form.save()
    key = "till" if enabled is False else "no-such-form"
    response = _signup(api, form=key, email="ada@example.com", consent=True)
    assert response.status_code == 404
    assert response.json() == {"detail": "No enabled signup form has this key (`form`)."}
    assert not Contact.objects.exists()


def test_an_unsubscribed_address_is_asked_to_confirm_not_subscribed(api, form, mailoutbox):
    contact = ContactFactory(email="left@example.com")
    contact_unsubscribe(contact=contact, evidence=Evidence(method="one-click"))
    mailoutbox.clear()
    response = _signup(api, form="till", email="left@example.com", consent=True)
    assert response.status_code == 202
    contact.refresh_from_db()
    assert contact.status == Status.UNSUBSCRIBED  # until their own click
    assert [m.to for m in mailoutbox] == [["left@example.com"]]


def test_a_single_opt_in_form_subscribes_at_once_and_owes_its_welcome(api, form):
    form.double_opt_in = False
    form.welcome_enabled = True
    form.welcome_subject = "Welcome"
    form.welcome_body = "Hello {{ first_name }}"
    form.save()
    response = _signup(api, form="till", email="bo@example.com", consent=True)
    assert response.status_code == 202
    assert response.json()["double_opt_in"] is False
    contact = Contact.objects.get()
    assert contact.status == Status.SUBSCRIBED
    assert WelcomeEmail.objects.get().contact == contact


def test_the_signups_list_is_newest_first_and_filters_by_form(api, form):
    other = SignupFormFactory(public_key="popup", double_opt_in=True)
    _signup(api, form="till", email="one@example.com", consent=True)
    _signup(api, form="popup", email="two@example.com", consent=True)
    ContactFactory(email="imported@example.com")  # no signup: not listed
    listed = api.get(SIGNUPS).json()["results"]
    assert [(s["email"], s["form"]) for s in listed] == [
        ("two@example.com", "popup"),
        ("one@example.com", "till"),
    ]
    assert listed[0]["contact"] == Contact.objects.get(email="two@example.com").pk
    only = api.get(SIGNUPS, {"form": other.public_key}).json()["results"]
    assert [s["email"] for s in only] == ["two@example.com"]
