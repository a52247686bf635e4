"""Campaigns through the API: starting one and the emergency blast take the token's
"send campaigns" permission, and go through the same start as the admin's Send button."""

from __future__ import annotations

import pytest

from campaigns.models import Campaign, CampaignEvent, Delivery
from tests.factories import ContactFactory

pytestmark = pytest.mark.django_db

Status = Campaign.Status


def _draft(**fields) -> Campaign:
    values = {"name": "Still here", "subject": "We're still here", "body": "Hello."}
    return Campaign.objects.create(**{**values, **fields})


def test_start_sends_a_draft_to_the_subscribed(api, sender):
    ContactFactory.create_batch(3)
    ContactFactory(status="unsubscribed")
    campaign = _draft()
    response = api.post(f"/api/v1/campaigns/{campaign.pk}/start/")
    assert response.status_code == 200, response.json()
    assert (response.json()["status"], response.json()["total_count"]) == ("sending", 3)
    assert Delivery.objects.filter(campaign=campaign).count() == 3
    event = CampaignEvent.objects.get(campaign=campaign, to_status=Status.SENDING)
    assert event.actor == f"api:{api.api_token.prefix}"


def test_start_needs_the_send_permission(make_client, sender):
    ContactFactory()
    campaign = _draft()
    client = make_client(can_send_campaigns=False)
    assert client.post(f"/api/v1/campaigns/{campaign.pk}/start/").status_code == 403
    campaign.refresh_from_db()
    assert campaign.status == Status.DRAFT
    assert not Delivery.objects.exists()


def test_start_of_a_campaign_that_cannot_be_sent_is_409_saying_why(api, sender):
    campaign = _draft()
    api.post(f"/api/v1/campaigns/{campaign.pk}/start/")
    response = api.post(f"/api/v1/campaigns/{campaign.pk}/start/")  # sent already
    assert response.status_code == 409
    assert "Only a draft or scheduled campaign" in response.json()["detail"]
    assert api.post("/api/v1/campaigns/999999/start/").status_code == 404


def test_start_without_sender_settings_is_409(api):
    campaign = _draft()
    response = api.post(f"/api/v1/campaigns/{campaign.pk}/start/")
    assert response.status_code == 409
    assert "From address" in response.json()["detail"]
    campaign.refresh_from_db()
    assert campaign.status == Status.DRAFT


def test_blast_makes_the_starter_campaign_and_sends_it(api, sender):
    ContactFactory.create_batch(2)
    response = api.post("/api/v1/campaigns/blast/", {"starter": "still-here"}, format="json")
    assert response.status_code == 201, response.json()
    campaign = Campaign.objects.get(pk=response.json()["id"])
    assert campaign.is_emergency and campaign.status == Status.SENDING
    assert campaign.subject == "We're still here"
    assert "corner.example/shop" in campaign.body  # filled from the sender settings
    assert campaign.created_by == f"api:{api.api_token.prefix}"
    assert Delivery.objects.filter(campaign=campaign).count() == 2


def test_blast_that_cannot_start_leaves_no_draft(api):
    ContactFactory()
    response = api.post("/api/v1/campaigns/blast/", {"starter": "still-here"}, format="json")
    assert response.status_code == 409
    assert not Campaign.objects.exists()


def test_blast_names_a_bad_starter_or_segment(api, sender):
    response = api.post("/api/v1/campaigns/blast/", {"starter": "nope"}, format="json")
    assert (response.status_code, list(response.json())) == (400, ["starter"])
    response = api.post(
        "/api/v1/campaigns/blast/", {"starter": "were-back", "segment": 999}, format="json"
    )
    assert (response.status_code, list(response.json())) == (400, ["segment"])


def test_campaign_list(api):
    first, second = _draft(name="one"), _draft(name="two")
    response = api.get("/api/v1/campaigns/")
    assert [c["id"] for c in response.json()["results"]] == [second.pk, first.pk]
