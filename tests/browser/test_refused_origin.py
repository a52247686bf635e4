"""A shop pastes the script embed on a site the form does not allow: the visitor is
refused, the owner sees that site on the form's page, allows it in one click, and the
next visitor there signs up."""

from __future__ import annotations

import pytest

from audience.models import Contact
from tests.browser.admin_session import sign_in_owner
from tests.browser.conftest import embed_page

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def _expect():
    from playwright.sync_api import expect

    return expect


def _sign_up(page, url: str, email: str):
    page.goto(url)
    embed = page.locator(".stillhere-signup-host")
    embed.locator("input[name=email]").fill(email)
    embed.locator("input[name=consent]").check()
    embed.locator("button[type=submit]").click()
    return embed


def test_owner_sees_a_refused_site_and_allows_it(
    new_page, make_shop, stillhere, signup_form, django_user_model
):
    expect = _expect()
    stranger = make_shop()  # the shop's new blog, not yet in the allowed origins
    stranger.pages["/"] = embed_page(signup_form)
    visitor = new_page()
    embed = _sign_up(visitor, stranger.url("/"), "blog-reader@example.com")
    expect(embed.locator("[data-error-for=__all__]")).to_be_visible()
    assert not Contact.objects.exists()

    owner = new_page()
    sign_in_owner(owner, stillhere.url, django_user_model)
    owner.goto(f"{stillhere.url}/admin/audience/signupform/{signup_form.pk}/change/")
    row = owner.locator("#refused-origins tbody tr")
    expect(row).to_have_count(1)
    expect(row.locator("code")).to_have_text(stranger.origin)
    expect(row.locator("td").nth(1)).to_have_text("1")
    # An unsaved edit elsewhere on the page is neither saved nor needed by the allow.
    owner.fill("#id_title", "Edited but not saved")
    row.get_by_role("button", name="Allow").click()
    expect(owner.locator(".messagelist")).to_contain_text(f"Allowed {stranger.origin}")
    expect(owner.locator("#id_allowed_origins")).to_contain_text(stranger.origin)
    expect(owner.locator(".field-refused_origins")).to_contain_text("No site has been refused.")
    signup_form.refresh_from_db()
    assert signup_form.title == "We're still here"
    assert stranger.origin in signup_form.origins

    embed = _sign_up(new_page(), stranger.url("/"), "blog-reader@example.com")
    expect(embed.locator(".sh-success")).to_have_text(signup_form.success_message)
    assert Contact.objects.get().email == "blog-reader@example.com"
