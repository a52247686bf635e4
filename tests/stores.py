"""Posting to the store webhook endpoint as Shopify and WooCommerce post: the payloads in
tests/fixtures/stores/ (the platforms' documented shapes), signed over the exact bytes
sent with the store's secret."""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
from pathlib import Path

from django.test import Client
from django.urls import reverse

from audience.models import Store

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "stores"
SECRET = "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"
_ids = itertools.count(1)


def fixture(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


def signature(secret: str, body: bytes) -> str:
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


def store_url(store: Store) -> str:
    return reverse("audience:store-webhook", args=[store.kind, store.key])


def shopify_post(store, topic, payload, *, webhook_id=None, secret=None, headers=None, raw=None):
    body = raw if raw is not None else json.dumps(payload).encode()
    sent = {
        "X-Shopify-Topic": topic,
        "X-Shopify-Hmac-Sha256": signature(secret or store.secret, body),
        "X-Shopify-Shop-Domain": store.domain,
        "X-Shopify-Webhook-Id": webhook_id or f"b54557e4-bdd9-4b37-8a5f-{next(_ids):012d}",
        "X-Shopify-API-Version": "2025-10",
        **(headers or {}),
    }
    return Client().post(store_url(store), data=body, content_type="application/json", headers=sent)


def woo_post(store, topic, payload, *, secret=None, delivery_id=None):
    body = json.dumps(payload).encode()
    headers = {
        "X-WC-Webhook-Source": "https://woo.example.com/",
        "X-WC-Webhook-Topic": topic,
        "X-WC-Webhook-Resource": topic.split(".")[0],
        "X-WC-Webhook-Event": topic.split(".")[1],
        "X-WC-Webhook-Signature": signature(secret or store.secret, body),
        "X-WC-Webhook-ID": "7",
        "X-WC-Webhook-Delivery-ID": delivery_id or str(next(_ids)),
    }
    return Client().post(
        store_url(store), data=body, content_type="application/json", headers=headers
    )
