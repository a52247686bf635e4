"""One small audience with a known shape, for the dashboard's tests (figures and browser)."""

from __future__ import annotations

from datetime import datetime, time, timedelta

from django.utils import timezone

from audience.models import Contact
from tests.factories import ContactFactory, SignupFormFactory

S = Contact.Status
SRC = Contact.Source


def _at(days_ago: int) -> datetime:
    # Midday of that local day: far from midnight, so the day is the day whatever the clock.
    day = timezone.localdate() - timedelta(days=days_ago)
    return timezone.make_aware(datetime.combine(day, time(12, 0)))


def seed_dashboard_audience() -> dict:
    """Contacts over 200 days; returns the figures the dashboard must show for them."""
    footer = SignupFormFactory(name="Footer form")
    popup = SignupFormFactory(name="Checkout popup")
    rows = [
        # (days ago, status, source, form, phone)
        (0, S.SUBSCRIBED, SRC.FORM, footer, "+14155550101"),
        (0, S.SUBSCRIBED, SRC.FORM, footer, "+14155550102"),
        (0, S.SUBSCRIBED, SRC.FORM, footer, ""),
        (0, S.PENDING, SRC.FORM, popup, "+14155550103"),
        (10, S.SUBSCRIBED, SRC.IMPORT, None, "+14155550104"),
        (10, S.SUBSCRIBED, SRC.IMPORT, None, ""),
        (10, S.UNSUBSCRIBED, SRC.ADMIN, None, "+14155550105"),
        (45, S.SUBSCRIBED, SRC.FORM, popup, ""),
        (45, S.SUBSCRIBED, SRC.FORM, popup, ""),
        (45, S.SUBSCRIBED, SRC.FORM, popup, ""),
        (45, S.SUBSCRIBED, SRC.FORM, popup, ""),
        (45, S.BOUNCED, SRC.IMPORT, None, ""),
        (89, S.COMPLAINED, SRC.FORM, footer, ""),
        (90, S.SUBSCRIBED, SRC.IMPORT, None, ""),  # one day before the 90-day window
        (200, S.SUBSCRIBED, SRC.ADMIN, None, ""),
        (200, S.SUBSCRIBED, SRC.ADMIN, None, ""),
    ]
    for i, (days_ago, status, source, form, phone) in enumerate(rows):
        ContactFactory(
            email=f"dash{i}@example.com",
            status=status,
            source=source,
            signup_form=form,
            phone=phone,
            created_at=_at(days_ago),
        )
    return {
        "by_status": {
            "pending": 1,
            "subscribed": 12,
            "unsubscribed": 1,
            "bounced": 1,
            "complained": 1,
        },
        "total": 16,
        "reachable_by_email": 12,
        "reachable_by_phone": 3,
        "signups_30": 7,
        "signups_90": 13,
        "by_source_90": {"Signup form": 9, "Import": 3, "Admin": 1},
        "by_form_90": {"Checkout popup": 5, "Footer form": 4},
        "today": {"Signup form": 4},
        "forms": {"footer": footer, "popup": popup},
    }
