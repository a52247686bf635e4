"""A migrating shop's import in a real Chromium: upload, the preview's consent note, run."""

from __future__ import annotations

from pathlib import Path

import pytest

from audience.models import Contact
from tests.polling import wait_for

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PASSWORD = "a-long-test-password-42"
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "imports"


@pytest.fixture(autouse=True)
def _media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"


@pytest.fixture
def owner(django_user_model):
    return django_user_model.objects.create_superuser("owner", "owner@corner.example", PASSWORD)


@pytest.mark.worker
def test_a_shopify_export_is_previewed_with_its_consent_and_imported_subscribed(
    page, stillhere, owner, celery_worker, tmp_path
):
    from playwright.sync_api import expect

    page.goto(stillhere.url + "/admin/login/")
    page.fill("#id_username", "owner")
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.goto(stillhere.url + "/admin/audience/importjob/add/")
    page.set_input_files("input[type=file]", str(FIXTURES / "shopify_customers.csv"))
    page.get_by_role("button", name="Upload").click()

    # What a new owner sees without touching anything: the default follows the file.
    expect(page.locator("#detected-profile")).to_have_text("Shopify customers export")
    expect(page.locator("input[name=new_status][value=file]")).to_be_checked()
    expect(page.locator("#consent-subscribed")).to_have_text("2")
    expect(page.locator("#consent-kept")).to_have_text("0")
    expect(page.locator("#consent-stored")).to_have_text("1")
    expect(page.locator("#consent-why")).to_contain_text("Accepts Email Marketing = yes")
    expect(page.locator("#consent-why")).to_be_visible()
    page.fill("input[name=source]", "shopify-2026")
    page.screenshot(path=str(tmp_path / "import-preview.png"), full_page=True)

    page.locator("#start-import").click()
    assert wait_for(lambda: Contact.objects.count() == 3, timeout=30)
    statuses = dict(Contact.objects.values_list("email", "status"))
    assert statuses == {
        "ines@example.com": "subscribed",
        "uma@example.com": "subscribed",
        "tom@example.com": "pending",
    }
    ines = Contact.objects.get(email="ines@example.com")
    assert ines.attributes["import_source"] == "shopify-2026"
