"""The consent rule for a connected store or an API client (audience.consent, Via.SYNC).

Outcomes are written out by hand: a sync may complete a pending contact with the consent
its store recorded, moves any contact towards suppression, never brings an opted-out
address back to subscribed by itself, and loses to a later change of status (webhooks
arrive out of order).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from audience import consent
from audience.consent import Ask, Incoming, State, Via

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
WINDOW = timedelta(hours=1)


def _decide(current: State | None, ask: Ask, *, at: datetime = NOW) -> consent.Outcome:
    return consent.decide(current, Incoming(Via.SYNC, ask, at), now=NOW, resend_window=WINDOW)


# status before, ask → (status after, ConsentEvent written, double opt-in request opened,
# confirmation mail owed)
RULES = [
    (None, Ask.SUBSCRIBE, ("subscribed", True, False, False)),
    (None, Ask.STORE, ("pending", True, False, False)),
    (None, Ask.UNSUBSCRIBED, ("unsubscribed", True, False, False)),
    (None, Ask.CONFIRM_FIRST, ("pending", True, True, True)),
    ("pending", Ask.SUBSCRIBE, ("subscribed", True, False, False)),
    ("pending", Ask.STORE, ("pending", False, False, False)),
    ("pending", Ask.UNSUBSCRIBED, ("unsubscribed", True, False, False)),
    ("subscribed", Ask.SUBSCRIBE, ("subscribed", False, False, False)),
    ("subscribed", Ask.STORE, ("subscribed", False, False, False)),
    ("subscribed", Ask.CONFIRM_FIRST, ("subscribed", False, False, False)),
    ("subscribed", Ask.UNSUBSCRIBED, ("unsubscribed", True, False, False)),
    # Opted out: a store saying "subscribed" is the person asking again, not proof.
    ("unsubscribed", Ask.SUBSCRIBE, ("unsubscribed", True, True, True)),
    ("unsubscribed", Ask.STORE, ("unsubscribed", False, False, False)),
    ("unsubscribed", Ask.UNSUBSCRIBED, ("unsubscribed", False, False, False)),
    ("bounced", Ask.SUBSCRIBE, ("bounced", True, True, True)),
    ("complained", Ask.SUBSCRIBE, ("complained", True, False, False)),
    ("complained", Ask.CONFIRM_FIRST, ("complained", True, False, False)),
]


@pytest.mark.parametrize(("before", "ask", "expected"), RULES)
def test_sync_consent_rule(before, ask, expected):
    current = None if before is None else State(status=before)
    outcome = _decide(current, ask)
    status, event, opened, mailed = expected
    assert (outcome.status, outcome.event, outcome.open_request, outcome.mail) == (
        status,
        event,
        opened,
        mailed,
    )


@pytest.mark.parametrize("before", ["unsubscribed", "bounced", "complained"])
def test_sync_never_resubscribes_an_opted_out_contact(before):
    for ask in Ask:
        assert _decide(State(status=before), ask).status != "subscribed"


def test_sync_older_than_the_last_status_change_changes_no_status():
    changed = NOW - timedelta(minutes=5)
    older = changed - timedelta(seconds=1)
    unsubscribed = State(status="unsubscribed", status_changed_at=changed, unsubscribed_at=changed)
    assert _decide(unsubscribed, Ask.SUBSCRIBE, at=older).status == "unsubscribed"
    assert not _decide(unsubscribed, Ask.SUBSCRIBE, at=older).mail
    subscribed = State(status="subscribed", status_changed_at=changed)
    stale = _decide(subscribed, Ask.UNSUBSCRIBED, at=older)
    assert (stale.status, stale.event) == ("subscribed", False)
    # The same update sent after the change wins.
    fresh = _decide(subscribed, Ask.UNSUBSCRIBED, at=changed + timedelta(seconds=1))
    assert (fresh.status, fresh.event) == ("unsubscribed", True)


def test_sync_asking_again_mails_at_most_once_per_resend_window():
    recently = State(status="unsubscribed", confirmation_sent_at=NOW - WINDOW / 2)
    assert not _decide(recently, Ask.SUBSCRIBE).mail
    long_ago = State(status="unsubscribed", confirmation_sent_at=NOW - WINDOW * 2)
    assert _decide(long_ago, Ask.SUBSCRIBE).mail


def test_sync_pending_contact_completed_closes_its_open_request():
    outcome = _decide(State(status="pending", request_open=True), Ask.SUBSCRIBE)
    assert (outcome.status, outcome.close_request) == ("subscribed", True)
