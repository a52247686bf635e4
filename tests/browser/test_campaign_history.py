"""The campaign page's status history in a real Chromium: who changed what and why, the
provider's long answers kept inside the page, and a person's Resume followed by the
worker's finish appearing as they happen."""

from __future__ import annotations

import pytest

from campaigns import lifecycle, tasks
from campaigns.models import Campaign
from tests.factories import ContactFactory

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PASSWORD = "a-long-test-password-42"
# What a provider may answer: one long unbroken token (JSON, a URL), which must wrap
# inside the status history rather than push the page sideways.
SAID = '{"message":"Forbidden","detail":"' + "x" * 900 + '"}'


def _expect():
    from playwright.sync_api import expect

    return expect


def _rows(page) -> list[list[str]]:
    return page.locator("#campaign-events tbody tr").evaluate_all(
        "rows => rows.map(r => [...r.querySelectorAll('td')].slice(1)"
        ".map(td => td.textContent.trim()))"
    )


@pytest.mark.worker
def test_the_history_shows_the_systems_pause_then_the_owners_resume_and_the_finish(
    page, stillhere, sender, esp, celery_worker, django_user_model, monkeypatch
):
    expect = _expect()
    django_user_model.objects.create_superuser("owner", "owner@corner.example", PASSWORD)
    contacts = [ContactFactory() for _ in range(3)]
    campaign = Campaign.objects.create(name="Still here", subject="Hi", body="Hello.")
    # Started and then refused by the provider before any chunk reached the worker, so
    # the page opens on a campaign waiting for a person.
    with monkeypatch.context() as patched:
        patched.setattr(tasks.send_chunk, "delay_on_commit", lambda *args: None)
        lifecycle.campaign_start(campaign=campaign, actor="owner")
        assert lifecycle.campaign_pause_by_provider(
            campaign_id=campaign.pk,
            kind=Campaign.PauseKind.SETUP,
            why="the provider refused the account",
            said=SAID,
        )

    page.set_viewport_size({"width": 1280, "height": 900})
    page.goto(stillhere.url + "/admin/login/")
    page.fill("#id_username", "owner")
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.goto(f"{stillhere.url}/admin/campaigns/campaign/{campaign.pk}/change/")

    history = page.locator("#campaign-events")
    expect(history).to_be_visible()
    expect(history.get_by_role("heading", name="Status history")).to_be_visible()
    rows = _rows(page)
    assert [row[:2] for row in rows] == [
        ["system", "Sending → Paused"],
        ["owner", "Draft → Sending"],
    ]
    assert rows[0][2].startswith("Paused: the provider refused the account.")
    assert SAID[:200] in rows[0][2]
    # The long answer wraps inside the page: nothing sticks out to the right.
    box = history.bounding_box()
    assert box["x"] + box["width"] <= 1280
    # Nor anywhere else on the page (the status line and the Status fieldset show it too).
    sticking_out = page.evaluate(
        """() => [...document.querySelectorAll('body *')]
        .filter(e => e.getBoundingClientRect().right > 1280 && e.children.length === 0)
        .map(e => e.tagName + '#' + e.id + '.' + e.className)"""
    )
    assert sticking_out == []
    assert page.evaluate("document.documentElement.scrollWidth") <= 1280

    page.click("#resume-button")
    # The page polls while sending and reloads when the campaign is sent.
    expect(page.locator("#campaign-status")).to_have_text("Sent", timeout=30_000)
    expect(page.locator("#campaign-events tbody tr")).to_have_count(4)
    assert _rows(page)[:2] == [
        ["system", "Sending → Sent", "Every delivery is final: 3 sent, 0 failed, of 3."],
        ["owner", "Paused → Sending", "Resumed by owner."],
    ]
    assert sorted(esp.state.recipients) == sorted(c.email for c in contacts)
