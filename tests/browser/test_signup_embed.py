"""A shop on another origin embeds a signup form; a real Chromium signs up through it."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import requests
from django.conf import settings as django_settings

from audience import snippets
from audience.models import ConsentEvent, Contact, SignupBufferCursor
from audience.tokens import contact_url
from tests.browser.conftest import shop_page
from tests.polling import wait_for

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

CONFIRM_LINK = re.compile(r"https?://\S+/confirm/[^/\s]+/")


def _expect():
    from playwright.sync_api import expect

    return expect


def _script_embed(page):
    """The script embed's host element; Playwright's CSS locators pierce its open shadow root."""
    return page.locator(".stillhere-signup-host")


def _computed(locator, prop: str) -> str:
    return locator.evaluate("(el, prop) => getComputedStyle(el).getPropertyValue(prop)", prop)


@pytest.fixture
def production_intake(settings):
    """Signups as production takes them: with Redis, through the signup buffer, which
    the real worker drains (audience.intake); without Redis, written in the request."""
    if "redis" in settings.CACHES["default"]["BACKEND"].lower():
        # Forced: the buffer's whole path, whatever persistence the test Redis reports.
        settings.SIGNUP_BUFFER = "force"
        settings.SIGNUP_BUFFER_SECONDS = 0.2


@pytest.mark.worker
@pytest.mark.usefixtures("production_intake")
def test_script_embed_signup_confirm_link_and_one_click_unsubscribe(
    page, shop, stillhere, signup_form, celery_worker, mailoutbox
):
    expect = _expect()
    page.goto(shop.url("/"))
    embed = _script_embed(page)
    embed.locator("input[name=email]").fill("  Zoe.Example@Example.COM ")
    embed.locator("input[name=first_name]").fill("Zoë")
    embed.locator("input[name=last_name]").fill("Ó Briain-Łukasiewicz")
    embed.locator("input[name=phone]").fill("+44 20 7946 0958")
    embed.locator("input[name=consent]").check()
    methods = []
    page.on("request", lambda r: methods.append(r.method) if "/submit" in r.url else None)
    with page.expect_request(lambda r: r.url.endswith("/submit")) as submitted:
        embed.locator("button[type=submit]").click()
    # A CORS "simple" request: urlencoded, so the browser sends no preflight OPTIONS.
    sent_headers = submitted.value.all_headers()
    assert sent_headers["content-type"].startswith("application/x-www-form-urlencoded")
    assert sent_headers["origin"] == shop.origin

    # Success inline, in place of the form, without leaving the shop.
    expect(embed.locator(".sh-success")).to_have_text("Thanks! Check your inbox to confirm.")
    expect(embed.locator("form")).to_be_hidden()
    assert page.url == shop.url("/")
    assert methods == ["POST"]

    # Buffered (with Redis), the worker stores the signup a moment after the answer.
    assert wait_for(Contact.objects.exists), "the signup was never stored"
    if django_settings.SIGNUP_BUFFER:
        assert SignupBufferCursor.objects.get().drained == 1
    contact = Contact.objects.get()
    assert contact.email == "zoe.example@example.com"
    assert (contact.first_name, contact.last_name) == ("Zoë", "Ó Briain-Łukasiewicz")
    assert contact.phone == "+442079460958"
    assert contact.status == Contact.Status.PENDING
    assert contact.source == Contact.Source.FORM
    assert contact.signup_form == signup_form
    event = contact.consent_events.get()
    assert event.kind == ConsentEvent.Kind.SIGNUP
    assert event.method == "form-script"
    assert (event.status_before, event.status_after) == ("", Contact.Status.PENDING)
    assert event.signup_form == signup_form
    assert event.consent_text == signup_form.consent_text
    assert event.ip == "127.0.0.1"
    assert event.user_agent == page.evaluate("navigator.userAgent")

    # The real worker sends the double opt-in mail after the signup committed.
    assert wait_for(lambda: len(mailoutbox) == 1), "no confirmation email arrived"
    message = mailoutbox[0]
    assert message.to == ["zoe.example@example.com"]
    link = CONFIRM_LINK.search(message.body)
    assert link, message.body
    assert link.group(0).startswith(stillhere.url + "/confirm/")

    page.goto(link.group(0))
    # Opening the link only asks (mail scanners open links too); the button confirms.
    expect(page.get_by_role("heading", level=1)).to_have_text("Confirm your subscription")
    contact.refresh_from_db()
    assert contact.status == Contact.Status.PENDING
    page.get_by_role("button", name="Confirm").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("You're subscribed")
    contact.refresh_from_db()
    assert contact.status == Contact.Status.SUBSCRIBED
    assert contact.confirmed_at is not None
    confirm_event = contact.consent_events.filter(kind=ConsentEvent.Kind.CONFIRM).get()
    assert confirm_event.method == "confirm-link"
    assert confirm_event.status_after == Contact.Status.SUBSCRIBED

    # RFC 8058 one-click: the mail provider POSTs with no cookie, no CSRF token, no session.
    response = requests.post(
        contact_url("unsubscribe", contact),
        data={"List-Unsubscribe": "One-Click"},
        allow_redirects=False,
        timeout=10,
    )
    assert response.status_code == 200
    assert "Location" not in response.headers
    assert response.text == "Unsubscribed."
    contact.refresh_from_db()
    assert contact.status == Contact.Status.UNSUBSCRIBED
    assert contact.unsubscribed_at is not None
    unsubscribe_event = contact.consent_events.filter(kind=ConsentEvent.Kind.UNSUBSCRIBE).get()
    assert unsubscribe_event.method == "one-click"
    assert (unsubscribe_event.status_before, unsubscribe_event.status_after) == (
        Contact.Status.SUBSCRIBED,
        Contact.Status.UNSUBSCRIBED,
    )


def test_plain_html_form_works_with_javascript_off(new_page, shop, stillhere, signup_form):
    expect = _expect()
    page = new_page(java_script_enabled=False)
    page.goto(shop.url("/"))
    assert _script_embed(page).count() == 0  # no JavaScript, no script embed
    form = page.locator("#html-embed form")
    form.locator("input[name=email]").fill("no-js@example.com")
    form.locator("input[name=first_name]").fill("Noor")
    form.locator("input[name=consent]").check()
    form.locator("button[type=submit]").click()

    page.wait_for_url(f"{stillhere.url}/f/{signup_form.public_key}/thanks/")
    expect(page.get_by_test_id("signup-success")).to_have_text(signup_form.success_message)
    contact = Contact.objects.get()
    assert (contact.email, contact.first_name, contact.status) == (
        "no-js@example.com",
        "Noor",
        Contact.Status.PENDING,
    )
    event = contact.consent_events.get()
    assert (event.kind, event.method) == (ConsentEvent.Kind.SIGNUP, "form-html")
    assert event.consent_text == signup_form.consent_text


def test_plain_html_form_redirects_to_the_forms_redirect_url(page, shop, stillhere, signup_form):
    expect = _expect()
    signup_form.redirect_url = shop.url("/thanks")
    signup_form.save()
    page.goto(shop.url("/"))
    form = page.locator("#html-embed form")
    form.locator("input[name=email]").fill("back-to-shop@example.com")
    form.locator("input[name=consent]").check()
    form.locator("button[type=submit]").click()

    page.wait_for_url(shop.url("/thanks"))
    expect(page.locator("#shop-thanks")).to_be_visible()
    assert Contact.objects.get().email == "back-to-shop@example.com"


def test_plain_html_form_with_bad_input_rerenders_with_errors_and_stores_nothing(
    new_page, shop, stillhere, signup_form
):
    expect = _expect()
    page = new_page(java_script_enabled=False)
    page.goto(shop.url("/"))
    form = page.locator("#html-embed form")
    form.locator("input[name=email]").fill("someone@@example")
    form.locator("input[name=consent]").check()
    with page.expect_navigation() as navigation:
        form.locator("button[type=submit]").click()

    assert navigation.value.status == 422
    assert page.url == snippets.submit_url(signup_form)
    expect(page.locator("[data-error-for=email]")).to_have_text(
        "Please enter a valid email address."
    )
    expect(page.locator("input[name=email]")).to_have_value("someone@@example")
    assert not Contact.objects.exists()


def test_script_embed_shows_field_errors_inline_and_stores_nothing(page, shop, signup_form):
    expect = _expect()
    page.goto(shop.url("/"))
    embed = _script_embed(page)
    email = embed.locator("input[name=email]")
    phone = embed.locator("input[name=phone]")
    submit = embed.locator("button[type=submit]")

    email.fill("not-an-email")
    embed.locator("input[name=consent]").check()
    submit.click()
    expect(embed.locator("[data-error-for=email]")).to_have_text(
        "Please enter a valid email address."
    )
    expect(email).to_have_class(re.compile(r"\bis-invalid\b"))
    expect(embed.locator(".sh-success")).to_be_hidden()
    assert not Contact.objects.exists()

    email.fill("phone.typo@example.com")
    phone.fill("12345")
    submit.click()
    expect(embed.locator("[data-error-for=phone]")).to_have_text(
        "Please enter a valid phone number."
    )
    # The earlier email error is cleared once the address is fixed.
    expect(embed.locator("[data-error-for=email]")).to_be_hidden()
    expect(email).not_to_have_class(re.compile(r"\bis-invalid\b"))
    expect(phone).to_have_class(re.compile(r"\bis-invalid\b"))
    assert not Contact.objects.exists()

    phone.fill("")
    embed.locator("input[name=consent]").uncheck()
    submit.click()
    expect(embed.locator("[data-error-for=consent]")).to_have_text("Please tick the box to agree.")
    expect(embed.locator("[data-error-for=phone]")).to_be_hidden()
    assert not Contact.objects.exists()
    assert not ConsentEvent.objects.exists()

    # Fixed, it goes through.
    embed.locator("input[name=consent]").check()
    submit.click()
    expect(embed.locator(".sh-success")).to_be_visible()
    assert Contact.objects.get().email == "phone.typo@example.com"


def test_shop_css_and_embed_css_do_not_reach_each_other(page, shop, signup_form, tmp_path):
    expect = _expect()
    page.set_viewport_size({"width": 1100, "height": 900})
    page.goto(shop.url("/"))
    embed = _script_embed(page)
    expect(embed.locator("input[name=email]")).to_be_visible()

    # Inside the shadow root the shop's !important input/button rules, its yellow forms
    # and its 62.5% root font-size change nothing.
    email = embed.locator("input[name=email]")
    assert _computed(email, "font-size") == "16px"
    assert _computed(email, "border-top-style") == "solid"
    assert _computed(email, "border-top-color") == "rgb(206, 212, 218)"
    button = embed.locator("button[type=submit]")
    assert _computed(button, "background-color") == "rgb(13, 110, 253)"
    assert _computed(button, "font-size") == "16px"
    assert _computed(embed.locator("form"), "background-color") == "rgba(0, 0, 0, 0)"
    assert _computed(embed.locator("label.form-label").first, "text-transform") == "none"
    # The embed's own rules do apply in there, sized from its own 16px, not the shop's root.
    title = embed.locator(".sh-title")
    assert _computed(title, "font-size") == "21.6px"
    assert "Georgia" not in _computed(title, "font-family")
    assert _computed(embed.locator(".sh-intro"), "color") == "rgb(85, 85, 85)"
    # The honeypot is off-screen for people (and hidden from screen readers).
    honeypot = embed.locator("input[name=website]").bounding_box()
    assert honeypot["x"] + honeypot["width"] <= 0
    assert embed.locator(".sh-hp").get_attribute("aria-hidden") == "true"

    # Outside it, the shop's own elements that share the embed's class names keep the
    # shop's styles: the embed's .btn-primary, .sh-success, .form-control and form rules
    # stay in the shadow root.
    shop_button = page.locator("#shop-buy")
    assert _computed(shop_button, "background-color") != "rgb(13, 110, 253)"
    assert _computed(shop_button, "border-top-style") == "dashed"
    assert _computed(page.locator("#shop-note"), "background-color") == "rgba(0, 0, 0, 0)"
    assert _computed(page.locator("#shop-search"), "border-top-color") == "rgb(255, 105, 180)"
    assert _computed(page.locator("#html-embed form"), "background-color") == ("rgb(255, 255, 0)")
    assert _computed(page.locator("body"), "font-family") == "Georgia, serif"

    # For a human to look at (the screenshot is not compared; set STILLHERE_SCREENSHOT_DIR
    # to keep it).
    out = Path(os.environ.get("STILLHERE_SCREENSHOT_DIR") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(out / "shop-embeds.png"), full_page=True)


def test_iframe_embed_loads_in_an_allowed_shop_and_signs_up(page, shop, stillhere, signup_form):
    expect = _expect()
    frame_url = f"{stillhere.url}/f/{signup_form.public_key}/frame/"
    response = requests.get(frame_url, timeout=10)
    assert response.headers["Content-Security-Policy"] == (
        f"frame-ancestors 'self' https://elsewhere.example {shop.origin}"
    )
    assert "X-Frame-Options" not in response.headers

    page.goto(shop.url("/framed"))
    frame = page.frame_locator("iframe")
    frame.locator("input[name=email]").fill("framed@example")
    frame.locator("input[name=consent]").check()
    frame.locator("button[type=submit]").click()
    # Errors and thanks are pages of their own, and they must show inside the frame too.
    expect(frame.locator("[data-error-for=email]")).to_have_text(
        "Please enter a valid email address."
    )
    assert not Contact.objects.exists()
    frame.locator("input[name=email]").fill("framed@example.com")
    frame.locator("input[name=consent]").check()
    frame.locator("button[type=submit]").click()
    expect(frame.get_by_test_id("signup-success")).to_have_text(signup_form.success_message)
    assert page.url == shop.url("/framed")
    contact = Contact.objects.get()
    assert (contact.email, contact.status) == ("framed@example.com", Contact.Status.PENDING)


def test_iframe_embed_is_refused_in_a_shop_that_is_not_allowed(
    page, make_shop, stillhere, signup_form
):
    stranger = make_shop()
    stranger.pages["/"] = shop_page(snippets.iframe_snippet(signup_form))
    frame_url = f"{stillhere.url}/f/{signup_form.public_key}/frame/"
    csp = requests.get(frame_url, timeout=10).headers["Content-Security-Policy"]
    assert stranger.origin not in csp

    with page.expect_console_message(lambda msg: "frame-ancestors" in msg.text) as refusal:
        page.goto(stranger.url("/"))
    # Chromium's wording: "Framing '<url>' violates the following Content Security Policy
    # directive: "frame-ancestors …". The request has been blocked."
    assert f"'{stillhere.url}/'" in refusal.value.text
    assert "has been blocked" in refusal.value.text
    # Chromium shows its own error page in place of the form.
    child = page.frames[1]
    for _ in range(100):
        if child.url:
            break
        page.wait_for_timeout(50)
    assert child.url == "chrome-error://chromewebdata/"
    assert child.locator("input[name=email]").count() == 0
    # Stillhere's other pages, not meant to be framed at all, stay DENY.
    hosted = requests.get(snippets.hosted_url(signup_form), timeout=10)
    assert hosted.headers["X-Frame-Options"] == "DENY"


def test_hosted_page_signs_up_and_thanks(page, stillhere, signup_form):
    expect = _expect()
    page.goto(snippets.hosted_url(signup_form))
    page.locator("input[name=email]").fill("bio-link@example.com")
    page.locator("input[name=consent]").check()
    page.locator("button[type=submit]").click()
    page.wait_for_url(f"{stillhere.url}/f/{signup_form.public_key}/thanks/")
    expect(page.get_by_test_id("signup-success")).to_have_text(signup_form.success_message)
    event = Contact.objects.get(email="bio-link@example.com").consent_events.get()
    assert event.method == "form-html"
