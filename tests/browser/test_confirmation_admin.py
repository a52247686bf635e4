"""The confirmation email as a shop owner meets it in the admin, in a real Chromium: the
signup form's editable mail and its preview, "Resend confirmation" on a pending contact's
page (and the mail's link, clicked), "Mark subscribed with evidence"."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.utils import timezone

from audience.models import ConsentEvent, Contact
from audience.tasks import send_due_confirmations
from tests.factories import ContactFactory, SignupFormFactory

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PASSWORD = "a-long-test-password-42"
CONFIRM_LINK = re.compile(r"https?://\S+/confirm/[^/\s)]+/")


def _expect():
    from playwright.sync_api import expect

    return expect


@pytest.fixture
def owner(django_user_model):
    return django_user_model.objects.create_superuser("owner", "owner@corner.example", PASSWORD)


def _log_in(page, base_url: str) -> None:
    page.goto(base_url + "/admin/login/")
    page.fill("#id_username", "owner")
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_url(base_url + "/admin/")


def test_the_owner_edits_the_confirmation_email_and_sees_it_branded(page, stillhere, owner, sender):
    expect = _expect()
    sender.accent_color = "#aa3300"
    sender.save()
    form = SignupFormFactory(name="Footer", title="Market news")
    _log_in(page, stillhere.url)
    page.goto(f"{stillhere.url}/admin/audience/signupform/{form.pk}/change/")
    preview = page.frame_locator("iframe[title='Confirmation email preview']")
    expect(
        preview.get_by_text("Please confirm that you want to hear from Corner Shop")
    ).to_be_visible()
    button = preview.get_by_role("link", name="Yes, subscribe me")
    expect(button).to_be_visible()
    expect(button).to_have_css("background-color", "rgb(170, 51, 0)")  # the accent colour

    page.fill("#id_confirmation_body", "Hello from the market! No link here.")
    page.click("input[name=_continue]")
    expect(page.locator(".errorlist")).to_contain_text("The email must link to {{ confirm_url }}")

    page.fill(
        "#id_confirmation_body",
        "Hello from **the market**, {{ first_name }}!\n\n[Count me in]({{ confirm_url }})",
    )
    page.click("input[name=_continue]")
    expect(page.locator(".messagelist")).to_contain_text("was changed successfully")
    expect(preview.get_by_text("Hello from the market, Ada!")).to_be_visible()
    expect(preview.get_by_role("link", name="Count me in")).to_be_visible()


def test_resend_confirmation_from_the_contact_page_then_the_link_confirms(
    page, stillhere, owner, sender, mailoutbox
):
    expect = _expect()
    contact = ContactFactory(
        email="waiting@example.com", status=Contact.Status.PENDING,
        confirmation_sent_at=timezone.now() - timedelta(hours=3),
    )  # fmt: skip
    _log_in(page, stillhere.url)
    page.goto(f"{stillhere.url}/admin/audience/contact/{contact.pk}/change/")
    page.get_by_role("button", name="Resend confirmation").click()
    expect(page.locator(".messagelist")).to_contain_text(
        "A new confirmation email is on its way to waiting@example.com"
    )
    page.get_by_role("button", name="Resend confirmation").click()
    expect(page.locator(".messagelist")).to_contain_text("another can be sent in about")

    assert send_due_confirmations.apply().get() == 1  # the worker's batch
    [mail] = mailoutbox
    assert mail.from_email == "Corner Shop <hello@corner.example>"
    link = CONFIRM_LINK.search(mail.body).group(0)
    page.goto(link)
    page.get_by_role("button", name=re.compile("confirm", re.I)).click()
    contact.refresh_from_db()
    assert contact.status == Contact.Status.SUBSCRIBED


def test_mark_subscribed_with_evidence_and_the_refusal_for_an_unsubscribed_contact(
    page, stillhere, owner
):
    expect = _expect()
    pending = ContactFactory(email="paper@example.com", status=Contact.Status.PENDING)
    gone = ContactFactory(email="gone@example.com", status=Contact.Status.UNSUBSCRIBED)
    _log_in(page, stillhere.url)
    page.goto(f"{stillhere.url}/admin/audience/contact/{pending.pk}/change/")
    page.get_by_role("link", name="Mark subscribed with evidence…").click()
    page.fill("textarea[name=statement]", "Signed our paper sheet at the market stall")
    page.get_by_role("button", name="Mark subscribed").click()
    expect(page.locator(".messagelist")).to_contain_text(
        "Subscribed paper@example.com, with your evidence in the timeline."
    )
    expect(page.get_by_text("Signed our paper sheet at the market stall")).to_be_visible()
    event = ConsentEvent.objects.get(contact=pending)
    assert (event.actor, event.status_after) == ("owner", "subscribed")

    page.goto(f"{stillhere.url}/admin/audience/contact/{gone.pk}/change/")
    expect(page.get_by_role("button", name="Resend confirmation")).to_have_count(0)
    page.goto(f"{stillhere.url}/admin/audience/contact/{gone.pk}/mark-subscribed/")
    expect(page.locator(".errornote")).to_contain_text(
        "gone@example.com is unsubscribed. Only their own act"
    )
    expect(page.get_by_role("button", name="Mark subscribed")).to_have_count(0)
