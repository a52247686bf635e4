"""Shopify and WooCommerce customer webhooks, posted as the platforms post them.

The payloads (tests/fixtures/stores/) are in the shapes Shopify's and WooCommerce's
public documentation gives; each is signed as the platform signs it, over the exact
bytes sent, with the store's secret. A post that is not the store's changes nothing.
"""

from __future__ import annotations

import json
from datetime import datetime

import pytest
from django.test import Client

from audience.models import (
    ConsentEvent,
    Contact,
    Store,
    StoreCustomer,
    StorePrivacyRequest,
    StoreWebhook,
    SuppressedEmail,
)
from audience.services import Evidence, contact_unsubscribe
from tests.factories import ContactFactory, TagFactory
from tests.stores import SECRET, fixture, shopify_post, signature, store_url, woo_post

pytestmark = pytest.mark.django_db

Status = Contact.Status


@pytest.fixture
def shop():
    store = Store.objects.create(
        kind=Store.Kind.SHOPIFY, name="Ada's shop", domain="ada-shop.myshopify.com", secret=SECRET
    )
    store.tags.add(TagFactory(name="shopify"))
    return store


@pytest.fixture
def woo():
    return Store.objects.create(kind=Store.Kind.WOOCOMMERCE, name="Woo", secret="woo-secret")


def _nothing_stored():
    assert not Contact.objects.exists()
    assert not StoreWebhook.objects.exists()
    assert not ConsentEvent.objects.exists()


# --- Shopify: a customer with the consent Shopify records -------------------------------


def test_shopify_customer_is_added_with_the_consent_shopify_recorded(shop):
    response = shopify_post(shop, "customers/create", fixture("shopify_customers_create.json"))
    assert response.status_code == 200
    assert response.json() == {"outcome": "created (subscribed)"}
    contact = Contact.objects.get(email="bob@biller.com")
    assert (contact.status, contact.source) == (Status.SUBSCRIBED, Contact.Source.STORE)
    assert contact.confirmed_at == datetime.fromisoformat("2026-11-30T09:12:40-05:00")
    assert (contact.first_name, contact.last_name, contact.phone) == (
        "Bob", "Biller", "+16135550135",
    )  # fmt: skip
    assert sorted(contact.tags.values_list("name", flat=True)) == ["VIP", "newsletter", "shopify"]
    assert contact.sms_consent == "not_subscribed"
    assert contact.sms_opt_in_level == "single_opt_in"
    event = contact.consent_events.get()
    assert (event.kind, event.method, event.status_after) == ("sync", "shopify", "subscribed")
    assert event.detail["opt_in_level"] == "single_opt_in"
    assert event.detail["topic"] == "customers/create"
    assert event.actor == "store: Ada's shop"
    assert "subscribed (single_opt_in)" in event.consent_text
    assert StoreCustomer.objects.get(store=shop).contact == contact


def test_shopify_unsubscribe_suppresses_the_contact(shop):
    shopify_post(shop, "customers/create", fixture("shopify_customers_create.json"))
    update = fixture("shopify_customers_update_unsubscribed.json")
    assert shopify_post(shop, "customers/update", update).status_code == 200
    contact = Contact.objects.get(email="bob@biller.com")
    assert contact.status == Status.UNSUBSCRIBED
    assert contact.first_name == "Robert"
    assert contact.unsubscribed_at == datetime.fromisoformat("2026-12-02T16:40:01-05:00")


def test_an_older_update_delivered_late_does_not_win(shop):
    """Shopify does not promise order: the unsubscribe arrives first, then the create."""
    update = fixture("shopify_customers_update_unsubscribed.json")
    shopify_post(shop, "customers/update", update)
    shopify_post(shop, "customers/create", fixture("shopify_customers_create.json"))
    contact = Contact.objects.get(email="bob@biller.com")
    assert contact.status == Status.UNSUBSCRIBED
    assert contact.first_name == "Robert"  # the create's "Bob" is older
    assert contact.optin_requested_at is None  # and it asks nothing of the person


def test_a_redelivered_webhook_changes_nothing(shop):
    payload = fixture("shopify_customers_create.json")
    first = shopify_post(shop, "customers/create", payload, webhook_id="w-1")
    contact = Contact.objects.get()
    contact_unsubscribe(contact=contact, evidence=Evidence(method="one-click"))
    again = shopify_post(shop, "customers/create", payload, webhook_id="w-1")
    assert (first.status_code, again.status_code) == (200, 200)
    assert again.json() == {"outcome": "duplicate: created (subscribed)"}
    contact.refresh_from_db()
    assert contact.status == Status.UNSUBSCRIBED
    assert contact.consent_events.filter(kind="sync").count() == 1
    assert StoreWebhook.objects.count() == 1


def test_shop_consent_older_than_an_unsubscribe_here_does_not_resubscribe(shop):
    shopify_post(shop, "customers/create", fixture("shopify_customers_create.json"))
    contact = Contact.objects.get()
    contact_unsubscribe(contact=contact, evidence=Evidence(method="one-click"))
    # An order later: Shopify sends the customer again, its consent as recorded back then.
    order = {**fixture("shopify_customers_create.json"), "updated_at": "2026-12-05T10:00:00Z"}
    shopify_post(shop, "customers/update", order)
    contact.refresh_from_db()
    assert contact.status == Status.UNSUBSCRIBED
    assert contact.optin_requested_at is None


def test_shopify_pending_double_opt_in_is_kept_pending_and_not_mailed_by_us(shop, mailoutbox):
    payload = fixture("shopify_customers_create.json")
    payload["email_marketing_consent"] = {
        "state": "pending", "opt_in_level": "confirmed_opt_in", "consent_updated_at": None,
    }  # fmt: skip
    shopify_post(shop, "customers/create", payload)
    contact = Contact.objects.get()
    assert contact.status == Status.PENDING
    assert contact.optin_requested_at is None
    assert mailoutbox == []
    # The customer confirms Shopify's mail: Shopify says subscribed, confirmed_opt_in.
    payload["email_marketing_consent"] = {
        "state": "subscribed", "opt_in_level": "confirmed_opt_in",
        "consent_updated_at": "2026-11-30T09:20:00-05:00",
    }  # fmt: skip
    payload["updated_at"] = "2026-11-30T09:20:01-05:00"
    shopify_post(shop, "customers/update", payload)
    contact.refresh_from_db()
    assert contact.status == Status.SUBSCRIBED


def test_customer_without_an_email_address_is_acknowledged_and_skipped(shop):
    payload = {**fixture("shopify_customers_create.json"), "email": None}
    response = shopify_post(shop, "customers/create", payload)
    assert response.status_code == 200
    assert response.json() == {"outcome": "skipped: no valid email address"}
    assert not Contact.objects.exists()


# --- refused before anything is stored ----------------------------------------------------


def test_unsigned_post_is_refused_and_stores_nothing(shop):
    body = json.dumps(fixture("shopify_customers_create.json")).encode()
    response = Client().post(
        store_url(shop), data=body, content_type="application/json",
        headers={"X-Shopify-Topic": "customers/create", "X-Shopify-Webhook-Id": "w"},
    )  # fmt: skip
    assert response.status_code == 401
    _nothing_stored()


def test_post_signed_with_another_secret_is_refused(shop):
    payload = fixture("shopify_customers_create.json")
    response = shopify_post(shop, "customers/create", payload, secret="not-the-secret")
    assert response.status_code == 401
    assert response.json() == {"error": "Bad signature."}
    _nothing_stored()


def test_signature_over_other_bytes_is_refused(shop):
    """A forger who replays a real signature with an altered body."""
    body = json.dumps(fixture("shopify_customers_create.json")).encode()
    signed = signature(SECRET, body)
    tampered = body.replace(b"bob@biller.com", b"eve@evil.test")
    response = shopify_post(
        shop, "customers/create", None, raw=tampered, headers={"X-Shopify-Hmac-Sha256": signed}
    )
    assert response.status_code == 401
    _nothing_stored()


def test_post_naming_another_shop_is_refused(shop):
    payload = fixture("shopify_customers_create.json")
    response = shopify_post(
        shop, "customers/create", payload, headers={"X-Shopify-Shop-Domain": "other.myshopify.com"}
    )
    assert response.status_code == 401
    _nothing_stored()


def test_unknown_or_disabled_store_is_not_found(shop):
    payload = fixture("shopify_customers_create.json")
    key = shop.key
    shop.key = "no-such-store-key"
    assert shopify_post(shop, "customers/create", payload).status_code == 404
    shop.key = key
    Store.objects.filter(pk=shop.pk).update(enabled=False)
    assert shopify_post(shop, "customers/create", payload).status_code == 404
    _nothing_stored()


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b"\xff\xfe", b""])
def test_signed_body_that_is_not_a_json_object_is_refused(shop, raw):
    response = shopify_post(shop, "customers/create", None, raw=raw)
    assert response.status_code == 400
    assert "JSON" in response.json()["error"]
    _nothing_stored()


def test_oversized_body_is_refused_unread(shop):
    raw = b'{"email": "a@example.com", "note": "' + b"x" * (300 * 1024) + b'"}'
    response = shopify_post(shop, "customers/create", None, raw=raw)
    assert response.status_code == 413
    _nothing_stored()


def test_missing_webhook_id_is_refused(shop):
    payload = fixture("shopify_customers_create.json")
    response = shopify_post(shop, "customers/create", payload, headers={"X-Shopify-Webhook-Id": ""})
    assert response.status_code == 400
    _nothing_stored()


def test_a_get_is_not_allowed(shop):
    assert Client().get(store_url(shop)).status_code == 405


# --- Shopify's privacy webhooks -------------------------------------------------------------


def test_customer_redact_erases_the_contact_as_the_admins_erase_does(shop):
    shopify_post(shop, "customers/create", fixture("shopify_customers_create.json"))
    response = shopify_post(shop, "customers/redact", fixture("shopify_customers_redact.json"))
    assert response.json() == {"outcome": "erased"}
    assert not Contact.objects.exists()
    assert not ConsentEvent.objects.exists()
    assert SuppressedEmail.objects.count() == 1
    request = StorePrivacyRequest.objects.get()
    assert (request.topic, request.outcome) == ("customers/redact", "erased")
    assert request.completed_at is not None
    # The create, delivered again late under a new id: the erased address stays erased.
    shopify_post(shop, "customers/create", fixture("shopify_customers_create.json"))
    assert not Contact.objects.exists()


def test_data_request_is_recorded_for_the_owner_and_changes_nothing(shop):
    shopify_post(shop, "customers/create", fixture("shopify_customers_create.json"))
    contact = Contact.objects.get()
    payload = fixture("shopify_customers_data_request.json")
    response = shopify_post(shop, "customers/data_request", payload)
    assert response.status_code == 200
    request = StorePrivacyRequest.objects.get()
    assert (request.topic, request.contact, request.outcome) == (
        "customers/data_request", contact, "to answer",
    )  # fmt: skip
    assert request.completed_at is None
    contact.refresh_from_db()
    assert contact.status == Status.SUBSCRIBED


def test_shop_redact_erases_the_stores_customers_and_keeps_those_who_came_another_way(shop):
    shopify_post(shop, "customers/create", fixture("shopify_customers_create.json"))
    signed_up = ContactFactory(email="kept@example.com", source=Contact.Source.FORM)
    StoreCustomer.objects.create(store=shop, remote_id="42", contact=signed_up)
    response = shopify_post(shop, "shop/redact", fixture("shopify_shop_redact.json"))
    assert response.status_code == 200
    assert list(Contact.objects.values_list("email", flat=True)) == ["kept@example.com"]
    assert not StoreCustomer.objects.exists()
    shop.refresh_from_db()
    assert not shop.enabled


# --- WooCommerce ------------------------------------------------------------------------------


def test_woocommerce_ping_is_answered_and_stores_nothing(woo):
    response = Client().post(
        store_url(woo), data=b"webhook_id=7", content_type="application/x-www-form-urlencoded"
    )
    assert response.status_code == 200
    _nothing_stored()


def test_woocommerce_customer_is_kept_pending_and_not_mailed(woo, mailoutbox):
    response = woo_post(woo, "customer.created", fixture("woocommerce_customer_created.json"))
    assert response.json() == {"outcome": "created (pending)"}
    contact = Contact.objects.get()
    assert (contact.email, contact.first_name, contact.phone) == (
        "john.doe@example.com", "John", "+14155552671",
    )  # fmt: skip
    assert contact.status == Status.PENDING
    assert contact.optin_requested_at is None
    assert mailoutbox == []
    assert contact.consent_events.get().method == "woocommerce"


@pytest.mark.usefixtures("eager_tasks")
def test_woocommerce_store_set_to_ask_sends_a_double_opt_in(
    woo, mailoutbox, django_capture_on_commit_callbacks
):
    Store.objects.filter(pk=woo.pk).update(confirm_unconsented=True)
    with django_capture_on_commit_callbacks(execute=True):
        woo_post(woo, "customer.created", fixture("woocommerce_customer_created.json"))
    contact = Contact.objects.get()
    assert contact.status == Status.PENDING
    assert [m.to for m in mailoutbox] == [["john.doe@example.com"]]
    assert "/confirm/" in mailoutbox[0].body


def test_woocommerce_bad_signature_is_refused(woo):
    payload = fixture("woocommerce_customer_created.json")
    response = woo_post(woo, "customer.created", payload, secret="guess")
    assert response.status_code == 401
    _nothing_stored()


def test_woocommerce_older_update_does_not_overwrite_a_newer_one(woo):
    newer = {**fixture("woocommerce_customer_created.json"), "first_name": "Johnny"}
    newer["date_modified_gmt"] = "2026-11-25T08:00:00"
    woo_post(woo, "customer.updated", newer)
    woo_post(woo, "customer.created", fixture("woocommerce_customer_created.json"))
    assert Contact.objects.get().first_name == "Johnny"


def test_signature_is_checked_against_the_posting_platforms_header(shop, woo):
    """A Shopify-style signature posted to a WooCommerce store's URL is no signature."""
    payload = fixture("woocommerce_customer_created.json")
    body = json.dumps(payload).encode()
    response = Client().post(
        store_url(woo), data=body, content_type="application/json",
        headers={
            "X-Shopify-Hmac-Sha256": signature(woo.secret, body),
            "X-WC-Webhook-Topic": "customer.created", "X-WC-Webhook-Delivery-ID": "1",
        },
    )  # fmt: skip
    assert response.status_code == 401
    _nothing_stored()


def test_receipts_are_kept_past_any_redelivery_then_pruned(shop):
    from datetime import timedelta

    from django.utils import timezone

    from audience.tasks import prune_store_webhooks

    old = StoreWebhook.objects.create(store=shop, webhook_id="old", topic="customers/update")
    recent = StoreWebhook.objects.create(store=shop, webhook_id="new", topic="customers/update")
    StoreWebhook.objects.filter(pk=old.pk).update(received_at=timezone.now() - timedelta(days=8))
    StoreWebhook.objects.filter(pk=recent.pk).update(
        received_at=timezone.now() - timedelta(days=2)  # Shopify still retries at 48 hours
    )
    assert prune_store_webhooks() == 1
    assert list(StoreWebhook.objects.values_list("webhook_id", flat=True)) == ["new"]
