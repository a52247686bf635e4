"""The iframe embed fits its form: the Subscribe button is never cut off at the frame's
bottom edge, on a shop's page or in the admin's live preview."""

from __future__ import annotations

import pytest

from audience import snippets
from tests.browser.admin_session import sign_in_owner
from tests.browser.conftest import shop_page

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def _expect():
    from playwright.sync_api import expect

    return expect


def _frame_height(page) -> float:
    return page.locator("iframe").bounding_box()["height"]


def _button_fits_in_frame(page) -> bool:
    """The Subscribe button lies wholly inside the iframe's box as the visitor sees it
    (coordinates of both are in the shop page's viewport)."""
    frame_box = page.locator("iframe").bounding_box()
    button = page.frame_locator("iframe").locator("button[type=submit]")
    _expect()(button).to_be_visible()
    box = button.bounding_box()
    return (
        box["y"] >= frame_box["y"]
        and box["y"] + box["height"] <= frame_box["y"] + frame_box["height"]
    )


def _wait_for_height(page, predicate) -> float:
    for _ in range(100):
        height = _frame_height(page)
        if predicate(height):
            return height
        page.wait_for_timeout(50)
    return _frame_height(page)


def test_iframe_embed_grows_to_a_tall_form_and_its_errors(page, shop, signup_form):
    signup_form.intro = "When social media goes quiet, we'll write to you directly. " * 8
    signup_form.consent_text = "Yes, email me news and offers. I can unsubscribe at any time. " * 3
    signup_form.save()
    shop.pages["/tall"] = shop_page(snippets.iframe_snippet(signup_form))
    page.set_viewport_size({"width": 1100, "height": 900})
    page.goto(shop.url("/tall"))
    frame = page.frame_locator("iframe")
    _expect()(frame.locator("button[type=submit]")).to_be_visible()
    height = _wait_for_height(page, lambda h: h > snippets.IFRAME_DEFAULT_HEIGHT)
    assert height > snippets.IFRAME_DEFAULT_HEIGHT, "the frame was not fitted to its form"
    assert _button_fits_in_frame(page)

    # A bad address re-renders the form with its errors inside the frame: taller still.
    frame.locator("input[name=email]").fill("framed@example")
    frame.locator("input[name=consent]").check()
    frame.locator("button[type=submit]").click()
    _expect()(frame.locator("[data-error-for=email]")).to_be_visible()
    assert _wait_for_height(page, lambda h: h > height) > height
    assert _button_fits_in_frame(page)


def test_iframe_default_height_fits_the_form_without_the_fitting_script(page, shop, signup_form):
    # A shop whose page blocks inline scripts gets only the iframe tag's own height: the
    # fixture's form (name, phone, a consent sentence) must still show its button.
    shop.pages["/no-script"] = shop_page(snippets.iframe_tag(signup_form))
    page.goto(shop.url("/no-script"))
    _expect()(page.frame_locator("iframe").locator("button[type=submit]")).to_be_visible()
    assert _frame_height(page) == snippets.IFRAME_DEFAULT_HEIGHT
    assert _button_fits_in_frame(page)


def test_iframe_ignores_height_messages_from_anyone_but_its_frame(page, shop, signup_form):
    page.goto(shop.url("/framed"))
    _expect()(page.frame_locator("iframe").locator("button[type=submit]")).to_be_visible()
    fitted = _wait_for_height(page, lambda h: h != snippets.IFRAME_DEFAULT_HEIGHT)
    assert fitted != snippets.IFRAME_DEFAULT_HEIGHT
    # The shop's own page (or a script on it) posts a height: not from Stillhere's origin.
    page.evaluate("window.postMessage({stillhere: 'frame-height', height: 150}, '*')")
    page.wait_for_timeout(300)
    assert _frame_height(page) == fitted
    assert _button_fits_in_frame(page)


def test_admin_live_preview_fits_the_form(page, stillhere, signup_form, django_user_model):
    signup_form.intro = "When social media goes quiet, we'll write to you directly. " * 8
    signup_form.save()
    sign_in_owner(page, stillhere.url, django_user_model)
    page.goto(f"{stillhere.url}/admin/audience/signupform/{signup_form.pk}/change/")
    preview = page.locator("iframe#stillhere-preview")
    _expect()(preview).to_be_visible()
    for _ in range(100):
        if preview.bounding_box()["height"] > snippets.IFRAME_DEFAULT_HEIGHT + 2:
            break
        page.wait_for_timeout(50)
    frame_box = preview.bounding_box()
    assert frame_box["height"] > snippets.IFRAME_DEFAULT_HEIGHT + 2
    button = page.frame_locator("iframe#stillhere-preview").locator("button[type=submit]")
    box = button.bounding_box()
    assert box["y"] + box["height"] <= frame_box["y"] + frame_box["height"]
