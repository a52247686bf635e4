"""The contact's page fits the window: its consent timeline (long consent texts, user
agents, IPv6 addresses) wraps instead of running off the right edge."""

from __future__ import annotations

import pytest

from audience.models import ConsentEvent, Contact
from tests.browser.admin_session import sign_in_owner
from tests.factories import ContactFactory, SignupFormFactory

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

USER_AGENT = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36 Edg/131.0.2903.86 SomeVeryLongEmbeddedBrowserToken/1.2.3"
)
CONSENT = (
    "Yes, email me news, offers and the occasional emergency update when social media is "
    "down. I can unsubscribe at any time with the link in every message; see our privacy "
    "policy at https://mugs-and-more.example.com/policies/privacy-policy-and-cookies-2026."
)


def _expect():
    from playwright.sync_api import expect

    return expect


@pytest.fixture
def contact_with_history():
    form = SignupFormFactory(name="Footer form on the shop's home page", consent_text=CONSENT)
    contact = ContactFactory(email="anna.longname-example@subdomain.example.com")
    for kind, before, after in [
        (ConsentEvent.Kind.SIGNUP, "", Contact.Status.PENDING),
        (ConsentEvent.Kind.CONFIRM, Contact.Status.PENDING, Contact.Status.SUBSCRIBED),
    ]:
        ConsentEvent.objects.create(
            contact=contact,
            kind=kind,
            method="form-script",
            status_before=before,
            status_after=after,
            ip="2001:0db8:85a3:0000:0000:8a2e:0370:7334",
            user_agent=USER_AGENT,
            signup_form=form,
            consent_text=CONSENT,
            actor="",
        )
    return contact


@pytest.mark.parametrize("width", [1280, 800])
def test_consent_timeline_fits_the_page(
    page, stillhere, django_user_model, contact_with_history, width
):
    expect = _expect()
    page.set_viewport_size({"width": width, "height": 900})
    sign_in_owner(page, stillhere.url, django_user_model)
    page.goto(f"{stillhere.url}/admin/audience/contact/{contact_with_history.pk}/change/")
    timeline = page.locator("#consent_events-group")
    expect(timeline).to_contain_text("Consent timeline")
    # Every field of each event is there, in full.
    for text in [
        CONSENT,
        USER_AGENT,
        "2001:db8:85a3::8a2e:370:7334",
        "form-script",
        "Footer form on the shop's home page",
        "pending → subscribed",
    ]:
        expect(timeline).to_contain_text(text)

    # The page does not scroll sideways, and neither does the timeline inside it.
    overflow = page.evaluate(
        "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 0, f"the page is {overflow}px wider than the window"
    table = timeline.locator("table")
    sizes = table.evaluate(
        "t => ({table: t.getBoundingClientRect().right, "
        "page: document.documentElement.clientWidth, "
        "box: t.parentElement.scrollWidth - t.parentElement.clientWidth})"
    )
    assert sizes["table"] <= sizes["page"], sizes
    assert sizes["box"] <= 0, sizes
    # Every cell's text is shown, wrapped: none is cut off inside its cell.
    clipped = table.evaluate(
        "t => [...t.querySelectorAll('td, th')].filter(c => c.scrollWidth > c.clientWidth + 1)"
        ".map(c => c.className + ': ' + c.textContent.trim().slice(0, 40))"
    )
    assert clipped == []
