"""`{% campaign_events_for campaign as events %}`: the campaign page's history list reads
its events itself, so the page needs one include and no change to the admin's view."""

from django import template

from campaigns.models import Campaign, CampaignEvent
from campaigns.selectors import campaign_events

register = template.Library()

# The page shows the recent history; older events stay in the table.
SHOWN = 50


@register.simple_tag
def campaign_events_for(campaign: Campaign | None) -> list[CampaignEvent]:
    if campaign is None or campaign.pk is None:
        return []
    return campaign_events(campaign, limit=SHOWN)
