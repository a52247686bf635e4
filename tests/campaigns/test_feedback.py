"""Provider webhooks, through anymail's real Mailgun tracking endpoint (signature checked)."""

import hashlib
import hmac
import json
import time

import pytest

from campaigns.models import Campaign, Delivery
from tests.factories import ContactFactory
from tests.webhooks import mount_tracking

pytestmark = pytest.mark.django_db

SIGNING_KEY = "test-webhook-signing-key"
URL = "/anymail/mailgun/tracking/"


@pytest.fixture(autouse=True)
def _mailgun_webhooks(settings):
    settings.ANYMAIL = {**settings.ANYMAIL, "MAILGUN_WEBHOOK_SIGNING_KEY": SIGNING_KEY}
    mount_tracking(settings, "mailgun")


def _post(client, event_data: dict, *, key: str = SIGNING_KEY):
    timestamp, token = str(int(time.time())), "tok-" + str(time.time_ns())
    signature = hmac.new(key.encode(), (timestamp + token).encode(), hashlib.sha256).hexdigest()
    body = {
        "signature": {"timestamp": timestamp, "token": token, "signature": signature},
        "event-data": {"timestamp": time.time(), "id": token, **event_data},
    }
    return client.post(URL, json.dumps(body), content_type="application/json")


def _delivery(contact):
    campaign = Campaign.objects.create(name="Still here", subject="We're still here", body="Hi")
    return Delivery.objects.create(campaign=campaign, contact=contact, status="sent")


def test_permanent_bounce_suppresses_the_contact_with_evidence(client):
    contact = ContactFactory(email="gone@example.com")
    response = _post(client, {"event": "failed", "severity": "permanent",
                              "recipient": "gone@example.com", "reason": "bounce",
                              "delivery-status": {"message": "550 No such user"}})  # fmt: skip
    assert response.status_code == 200
    contact.refresh_from_db()
    assert contact.status == "bounced"
    event = contact.consent_events.get()
    assert (event.kind, event.method, event.status_before) == (
        "bounce", "provider-mailgun", "subscribed")  # fmt: skip
    assert "550 No such user" in event.detail["mta_response"]


def test_temporary_failure_changes_nothing(client):
    contact = ContactFactory(email="later@example.com")
    _post(client, {"event": "failed", "severity": "temporary", "recipient": "later@example.com"})
    contact.refresh_from_db()
    assert contact.status == "subscribed"


def test_complaint_outranks_an_unsubscribe_but_a_bounce_does_not(client):
    contact = ContactFactory(email="angry@example.com", status="unsubscribed")
    _post(client, {"event": "failed", "severity": "permanent", "recipient": "angry@example.com"})
    contact.refresh_from_db()
    assert contact.status == "unsubscribed"
    _post(client, {"event": "complained", "recipient": "angry@example.com"})
    contact.refresh_from_db()
    assert contact.status == "complained"


def test_open_and_click_mark_the_delivery_once(client):
    contact = ContactFactory(email="fan@example.com")
    delivery = _delivery(contact)
    vars_ = {"user-variables": {"campaign": str(delivery.campaign_id)}}
    _post(client, {"event": "clicked", "recipient": "fan@example.com", "url": "https://x", **vars_})
    delivery.refresh_from_db()
    first_click = delivery.clicked_at
    assert delivery.opened_at is not None and first_click is not None
    _post(client, {"event": "clicked", "recipient": "fan@example.com", **vars_})
    delivery.refresh_from_db()
    assert delivery.clicked_at == first_click


def test_forged_webhook_is_refused_and_changes_nothing(client):
    contact = ContactFactory(email="safe@example.com")
    response = _post(client, {"event": "complained", "recipient": "safe@example.com"}, key="wrong")
    assert response.status_code == 403
    contact.refresh_from_db()
    assert contact.status == "subscribed"


def test_event_for_an_unknown_address_is_accepted_and_ignored(client):
    response = _post(client, {"event": "complained", "recipient": "nobody@example.com"})
    assert response.status_code == 200
