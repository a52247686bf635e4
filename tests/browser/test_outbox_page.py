"""The local outbox shows a confirmation mail's long link whole, wrapped, and clickable."""

from __future__ import annotations

import pytest

from audience.tokens import contact_url
from campaigns.models import OutboxMessage
from tests.browser.admin_session import sign_in_owner
from tests.factories import ContactFactory

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def _expect():
    from playwright.sync_api import expect

    return expect


@pytest.mark.parametrize("width", [1280, 800])
def test_a_long_confirm_link_wraps_and_opens(page, stillhere, django_user_model, width):
    expect = _expect()
    contact = ContactFactory(email="a.rather.long.address-for-testing@subdomain.example.com",
                             status="pending")  # fmt: skip
    link = contact_url("confirm", contact)
    assert len(link) > 120  # a signed token: one long word with nowhere to break
    unsubscribe = contact_url("unsubscribe", contact)
    message = OutboxMessage.objects.create(
        from_email="Mugs & More <hello@mugs.example>",
        to=contact.email,
        subject="Please confirm your subscription",
        text_body=f"Hello,\n\nPlease confirm your subscription:\n{link}\n\nThanks!",
        headers={"List-Unsubscribe": f"<{unsubscribe}>"},
    )
    page.set_viewport_size({"width": width, "height": 900})
    sign_in_owner(page, stillhere.url, django_user_model)
    page.goto(f"{stillhere.url}/admin/campaigns/outboxmessage/{message.pk}/change/")

    anchor = page.locator(f'.field-message a[href="{link}"]')
    expect(anchor).to_have_text(link)
    overflow = page.evaluate(
        "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 0, f"the page is {overflow}px wider than the window"
    # The link's every line box lies inside the window, and inside its own box.
    rects = anchor.evaluate(
        "a => [...a.getClientRects()].map(r => r.right)"
        ".concat([a.closest('.readonly, pre').getBoundingClientRect().right])"
    )
    *lines, box = rects
    assert len(lines) >= 1
    assert max(lines) <= min(box, width) + 0.5, rects
    headers = page.locator(".field-headers")
    expect(headers).to_contain_text(unsubscribe)
    assert headers.evaluate("el => el.scrollWidth <= el.clientWidth + 1")

    anchor.click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Confirm your subscription")
