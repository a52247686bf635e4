"""The store pages of the admin: the secret is kept out of the page once saved, a
WooCommerce secret is drawn for the owner and shown once, and the privacy requests
stores pass on lead to the contact's data."""

from __future__ import annotations

import pytest
from django.urls import reverse

from audience.models import Store, StorePrivacyRequest
from tests.factories import ContactFactory

pytestmark = pytest.mark.django_db


def _add(admin_client, **fields):
    data = {"name": "Shop", "domain": "", "secret": "", "enabled": "on", **fields}
    return admin_client.post(
        reverse("admin:audience_store_add") + f"?kind={data['kind']}", data, follow=True
    )


def test_woocommerce_secret_is_drawn_and_shown_once(admin_client):
    response = _add(admin_client, kind="woocommerce")
    store = Store.objects.get()
    assert len(store.secret) >= 40
    assert f"Its secret, shown only now: {store.secret}" in response.content.decode()
    again = admin_client.get(reverse("admin:audience_store_change", args=[store.pk]))
    assert store.secret not in again.content.decode()
    assert store.key in again.content.decode()  # the URL to paste


def test_shopify_store_needs_the_secret_shopify_shows(admin_client):
    response = _add(admin_client, kind="shopify", domain="ada.myshopify.com")
    assert not Store.objects.exists()
    assert "Paste the signing secret Shopify shows you." in response.content.decode()


def test_saving_without_a_secret_keeps_the_current_one(admin_client):
    store = Store.objects.create(kind="shopify", name="Shop", secret="the-secret")
    admin_client.post(
        reverse("admin:audience_store_change", args=[store.pk]),
        {"name": "Renamed", "domain": "x.myshopify.com", "secret": "", "enabled": "on"},
    )
    store.refresh_from_db()
    assert (store.name, store.secret, store.domain) == ("Renamed", "the-secret", "x.myshopify.com")


def test_data_request_links_to_the_contacts_export(admin_client):
    contact = ContactFactory()
    store = Store.objects.create(kind="shopify", name="Shop", secret="s")
    request = StorePrivacyRequest.objects.create(
        store=store, topic="customers/data_request", contact=contact, outcome="to answer"
    )
    page = admin_client.get(reverse("admin:audience_storeprivacyrequest_changelist"))
    assert reverse("admin:audience_contact_export_data", args=[contact.pk]) in page.content.decode()
    admin_client.post(
        reverse("admin:audience_storeprivacyrequest_changelist"),
        {"action": "mark_answered", "_selected_action": [request.pk]},
    )
    request.refresh_from_db()
    assert request.outcome == "answered" and request.completed_at is not None
