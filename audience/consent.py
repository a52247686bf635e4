"""The consent rules, written once: what an incoming signup or record does to a contact.

Every writer of the audience (a signup written in its request, the signup buffer's
drain, the bulk import, and later the API and store syncs) asks `decide` what to do
and applies the answer; none of them decides for itself. It is a pure function of
(the contact as stored, what came in, when): no database, no settings, no clock, so one
test matrix holds every writer to the same rules (tests/audience/test_consent_matrix.py).

The rules (ARCHITECTURE.md, "Consent moves only forward by its owner's act"):
- A new address becomes subscribed only with consent evidence (a single opt-in form,
  an import row that carries consent); otherwise it is pending, and a double opt-in
  request is opened and mailed when one was asked for.
- A signup for a known address never changes its status by itself: anyone can type
  anyone's address into a form. It opens (or keeps) a double opt-in request instead, and
  only the owner's click on that request's link moves the contact to subscribed:
  pending and unsubscribed addresses are mailed at most once per resend window, bounced
  ones at most once per BOUNCED_RESEND, complained ones never. It never overwrites what
  the contact told us (names, phone).
- An import never raises a known contact's status; it only moves it towards
  suppression (the file's own unsubscribed, bounced or complained rows), never back.
- A confirm link confirms only the request it was issued for (`may_confirm`): the
  request is closed by the confirmation and by every suppression, so an old link
  cannot undo an unsubscribe.
- What came later wins: a signup older than the contact's unsubscribe or erasure (it
  waited in the signup buffer) changes nothing.
- Every change of status is a ConsentEvent; a signup for a known address is one too,
  but repeated attempts within the resend window add one event, not one per request.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from datetime import datetime, timedelta

from audience.models import Contact

Status = Contact.Status
SUPPRESSED = frozenset({Status.UNSUBSCRIBED, Status.BOUNCED, Status.COMPLAINED})

# A bounced address may have come back (a full mailbox, a domain renewed), but each
# mail to it costs the sender's reputation: its owner's request is mailed this rarely.
BOUNCED_RESEND = timedelta(days=30)


class Ask(enum.StrEnum):
    """What the incoming signup or record asks for."""

    SUBSCRIBE = "subscribe"  # with consent evidence: a single opt-in form, an import's
    CONFIRM_FIRST = "confirm-first"  # double opt-in: mail a confirmation link first
    STORE = "store"  # keep the contact, ask nothing (an import's "none", a declined row)
    UNSUBSCRIBED = "unsubscribed"  # a file's own opt-out
    BOUNCED = "bounced"  # a file's own cleaned / bounced row
    COMPLAINED = "complained"  # a file's own complaint (a Stillhere export's status)


class Via(enum.StrEnum):
    SIGNUP = "signup"  # someone typed the address into a form: not proof of ownership
    IMPORT = "import"  # the shop's own records, with the file's evidence
    SYNC = "sync"  # a connected store or an API client, with the consent it records


@dataclass(frozen=True)
class Incoming:
    via: Via
    ask: Ask
    at: datetime  # when it was asked (a buffered signup keeps its own time)


@dataclass(frozen=True)
class State:
    """What `decide` needs to know of a stored contact."""

    status: str
    request_open: bool = False  # a double opt-in request awaits its owner's click
    confirmation_sent_at: datetime | None = None
    unsubscribed_at: datetime | None = None
    last_signup_at: datetime | None = None  # the latest signup ConsentEvent
    # When the status last changed (confirmed, unsubscribed, synced): older synced
    # consent does not win over it.
    status_changed_at: datetime | None = None


@dataclass(frozen=True)
class Outcome:
    status: str | None  # the status to store; None: leave the contact exactly as it is
    event: bool = False  # write a ConsentEvent (kind from the incoming)
    open_request: bool = False  # open a new double opt-in request (a new confirm link)
    close_request: bool = False  # the open request ends: its links stop working
    mail: bool = False  # a confirmation mail is owed now
    fill_gaps: bool = False  # empty names and phone may be filled from the incoming

    @property
    def writes(self) -> bool:
        return self.status is not None


NOTHING = Outcome(status=None)


def ask_of_signup(*, double_opt_in: bool) -> Ask:
    return Ask.CONFIRM_FIRST if double_opt_in else Ask.SUBSCRIBE


def decide(
    current: State | None,
    incoming: Incoming,
    *,
    now: datetime,
    resend_window: timedelta,
) -> Outcome:
    """What `incoming` does to a contact in state `current` (None: a new address).

    `now` is when the decision is applied (the mail window runs from when the mail is
    owed, even for a signup that waited in the buffer); `resend_window` is
    CONFIRMATION_RESEND_SECONDS.
    """
    if current is None:
        return _new(incoming)
    if incoming.via == Via.IMPORT:
        return _known_import(current, incoming)
    if incoming.via == Via.SYNC:
        return _known_sync(current, incoming, now=now, resend_window=resend_window)
    return _known_signup(current, incoming, now=now, resend_window=resend_window)


def _new(incoming: Incoming) -> Outcome:
    ask = incoming.ask
    if ask == Ask.UNSUBSCRIBED:
        return Outcome(Status.UNSUBSCRIBED, event=True)
    if ask == Ask.BOUNCED:
        return Outcome(Status.BOUNCED, event=True)
    if ask == Ask.COMPLAINED:
        return Outcome(Status.COMPLAINED, event=True)
    if ask == Ask.SUBSCRIBE:
        return Outcome(Status.SUBSCRIBED, event=True)
    if ask == Ask.CONFIRM_FIRST:
        return Outcome(Status.PENDING, event=True, open_request=True, mail=True)
    # Stored without a request: asking someone who said no is the mail they said no to.
    return Outcome(Status.PENDING, event=True)


_SUPPRESSING = {
    Ask.UNSUBSCRIBED: Status.UNSUBSCRIBED,
    Ask.BOUNCED: Status.BOUNCED,
    Ask.COMPLAINED: Status.COMPLAINED,
}


def _known_import(current: State, incoming: Incoming) -> Outcome:
    """The shop's file fills gaps, and can only move a contact towards suppression."""
    status = current.status
    if incoming.ask in _SUPPRESSING and status not in SUPPRESSED:
        after = _SUPPRESSING[incoming.ask]
        return Outcome(after, event=True, close_request=True, fill_gaps=True)
    return Outcome(status, fill_gaps=True)


def _known_sync(
    current: State, incoming: Incoming, *, now: datetime, resend_window: timedelta
) -> Outcome:
    """A store or API client states the contact's consent as its own records hold it.

    Unlike a file, a sync may complete a pending contact: the store saw its customer opt
    in (Shopify's email_marketing_consent), which is the evidence an import row carries.
    It never brings back an address that said no: a subscription stated for an
    unsubscribed or bounced contact is treated as that person signing up again (a double
    opt-in request its owner must click), and for a complaint as nothing. Consent older
    than the contact's last change of status (webhooks arrive out of order) changes no
    status.
    """
    status = current.status
    if current.status_changed_at is not None and incoming.at < current.status_changed_at:
        return Outcome(status, fill_gaps=True)
    if incoming.ask in _SUPPRESSING:
        if status in SUPPRESSED:
            return Outcome(status, fill_gaps=True)
        return Outcome(_SUPPRESSING[incoming.ask], event=True, close_request=True, fill_gaps=True)
    if incoming.ask == Ask.SUBSCRIBE and status == Status.PENDING:
        return Outcome(Status.SUBSCRIBED, event=True, close_request=True, fill_gaps=True)
    asks_again = incoming.ask == Ask.CONFIRM_FIRST or (
        incoming.ask == Ask.SUBSCRIBE and status in SUPPRESSED
    )
    if asks_again and status != Status.SUBSCRIBED:
        asked = _known_signup(current, incoming, now=now, resend_window=resend_window)
        return dataclasses.replace(asked, fill_gaps=True)
    return Outcome(status, fill_gaps=True)


def _known_signup(
    current: State, incoming: Incoming, *, now: datetime, resend_window: timedelta
) -> Outcome:
    status = current.status
    if current.unsubscribed_at is not None and current.unsubscribed_at > incoming.at:
        return NOTHING  # unsubscribed after this (buffered) signup: the later wish wins
    recent = current.last_signup_at is not None and current.last_signup_at > now - resend_window
    event = not recent
    if status == Status.SUBSCRIBED or status == Status.COMPLAINED:
        # Subscribed: nothing to ask. Complained: the owner told their mailbox provider
        # this is spam; no form typed by anyone reopens that, nor mails it.
        return Outcome(status, event=event)
    window = BOUNCED_RESEND if status == Status.BOUNCED else resend_window
    sent = current.confirmation_sent_at
    mail = sent is None or sent <= now - window
    return Outcome(status, event=event, open_request=not current.request_open, mail=mail)


def may_confirm(current: State) -> bool:
    """Whether the owner's click on an open request's link subscribes the contact.

    The caller has checked that the link was issued for this very request; a
    complaint outranks even that (it never has an open request anyway)."""
    return current.request_open and current.status != Status.COMPLAINED
