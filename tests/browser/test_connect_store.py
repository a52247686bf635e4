"""Connecting a Shopify store in the admin: the URL it shows is the one that works.

The owner clicks "Connect a Shopify store", pastes the shop's domain and signing secret,
and copies the webhook URL the page then shows; Shopify's customer webhook, signed with
that secret and posted to that URL, adds the customer with their consent.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from pathlib import Path

import pytest
import requests

from audience.models import Contact, Store
from tests.browser.admin_session import sign_in_owner

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "stores"
SECRET = "4f7d2c1b9a8e6f5d3c2b1a0f9e8d7c6b"


def test_owner_connects_a_shopify_store_and_its_customers_arrive(
    page, stillhere, django_user_model
):
    from playwright.sync_api import expect

    sign_in_owner(page, stillhere.url, django_user_model)
    page.goto(f"{stillhere.url}/admin/audience/store/")
    page.get_by_role("link", name="Connect a Shopify store").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Connect a Shopify store")
    page.fill("#id_name", "Ada's mugs")
    page.fill("#id_domain", "https://ada-shop.myshopify.com/")
    page.fill("#id_secret", SECRET)
    page.get_by_role("button", name="Save", exact=True).click()
    expect(page.locator(".messagelist")).to_contain_text("is connected")

    url = page.locator("#store-webhook-url").input_value()
    store = Store.objects.get()
    assert url.startswith(stillhere.url + "/integrations/shopify/")
    assert (store.domain, store.secret) == ("ada-shop.myshopify.com", SECRET)
    # The secret is not written back into the page.
    assert SECRET not in page.content()

    body = (FIXTURE / "shopify_customers_create.json").read_bytes()
    signature = base64.b64encode(hmac.new(SECRET.encode(), body, hashlib.sha256).digest())
    response = requests.post(
        url,
        data=body,
        headers={
            "Content-Type": "application/json",
            "X-Shopify-Topic": "customers/create",
            "X-Shopify-Hmac-Sha256": signature.decode(),
            "X-Shopify-Shop-Domain": "ada-shop.myshopify.com",
            "X-Shopify-Webhook-Id": "b54557e4-bdd9-4b37-8a5f-000000000001",
        },
        timeout=10,
    )
    assert response.status_code == 200, response.text
    assert Contact.objects.get(email=json.loads(body)["email"]).status == "subscribed"

    page.reload()
    expect(page.locator(".field-recent_webhooks")).to_contain_text("created (subscribed)")
