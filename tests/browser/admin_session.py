"""A shop owner signed in to the admin in a browser page, for the admin's browser tests."""

from __future__ import annotations

PASSWORD = "a-long-test-password-42"


def sign_in_owner(page, base_url: str, django_user_model):
    """Create the superuser "owner" and sign in as them on `page`; returns the user."""
    from playwright.sync_api import expect

    owner = django_user_model.objects.create_superuser("owner", "owner@corner.example", PASSWORD)
    page.goto(base_url + "/admin/login/")
    page.fill("#id_username", "owner")
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    expect(page.locator("#user-tools")).to_be_visible()
    return owner
