"""The admin index's dashboard: the owner's figures above Django's app list.

A template tag, so the admin site, its URLs and its index view stay Django's own; it
lives in campaigns because the dashboard shows both apps (the audience never imports
campaigns).
"""

from __future__ import annotations

from django import template

from audience.dashboard import SIGNUP_WINDOWS, audience_counts, signups_per_day
from audience.models import Contact
from campaigns.selectors import campaign_dashboard_rates, campaigns_recent

register = template.Library()


@register.inclusion_tag("admin/dashboard.html", takes_context=True)
def admin_dashboard(context) -> dict:
    user = context["request"].user
    shown: dict = {"windows": SIGNUP_WINDOWS, "default_window": min(SIGNUP_WINDOWS)}
    # Each part only for those who may see what it is drawn from.
    if user.has_perm("audience.view_contact"):
        counts = audience_counts()
        shown["audience"] = counts
        shown["statuses"] = [
            (status, label, counts.by_status[status], status not in counts.exact_statuses)
            for status, label in Contact.Status.choices
        ]
        shown["signups"] = signups_per_day(days=max(SIGNUP_WINDOWS))
    if user.has_perm("campaigns.view_campaign"):
        shown["show_campaigns"] = True
        shown["campaigns"] = campaign_dashboard_rates(campaigns_recent())
    return shown
