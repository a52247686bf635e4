"""Only a campaign that can still be edited offers Save buttons on its admin page."""

import pytest
from django.urls import reverse

from campaigns.models import Campaign

pytestmark = pytest.mark.django_db

SAVE_BUTTONS = ['name="_save"', 'name="_continue"', 'name="_addanother"']


def _campaign(status):
    return Campaign.objects.create(
        name="Spring news", subject="Hello", body="Our spring range is in.", status=status
    )


def _page(client, campaign) -> str:
    response = client.get(reverse("admin:campaigns_campaign_change", args=[campaign.pk]))
    assert response.status_code == 200
    return response.content.decode()


@pytest.mark.parametrize("status", [Campaign.Status.DRAFT, Campaign.Status.SCHEDULED])
def test_an_editable_campaign_offers_its_save_buttons(admin_client, status):
    page = _page(admin_client, _campaign(status))
    for button in SAVE_BUTTONS:
        assert button in page


@pytest.mark.parametrize(
    "status",
    [
        Campaign.Status.SENDING,
        Campaign.Status.PAUSED,
        Campaign.Status.SENT,
        Campaign.Status.CANCELLED,
        Campaign.Status.FAILED,
    ],
)
def test_a_started_campaign_offers_no_save_buttons_only_close(admin_client, status):
    page = _page(admin_client, _campaign(status))
    for button in SAVE_BUTTONS:
        assert button not in page
    changelist = reverse("admin:campaigns_campaign_changelist")
    assert f'<a href="{changelist}" class="closelink">Close</a>' in page


def test_a_post_to_a_sent_campaign_changes_nothing_and_says_why(admin_client):
    campaign = _campaign(Campaign.Status.SENT)
    url = reverse("admin:campaigns_campaign_change", args=[campaign.pk])
    response = admin_client.post(
        url, {"name": "Renamed", "subject": "Changed", "body": "New", "_save": "Save"}, follow=True
    )
    assert response.redirect_chain == [(url, 302)]
    assert "it can no longer be edited" in response.content.decode()
    campaign.refresh_from_db()
    assert (campaign.name, campaign.subject, campaign.status) == (
        "Spring news",
        "Hello",
        Campaign.Status.SENT,
    )
