"""The welcome email a contact is owed when it becomes subscribed: an outbox row
(WelcomeEmail), written in the transaction that subscribes the contact.

The audience services (a confirmed double opt-in, a single opt-in signup, an owner's
"mark subscribed") and the store sync (audience.sync) call `welcome_owe`; the signup hot
path on PostgreSQL writes the same row inside its one INSERT statement
(services._contacts_insert_new). Only a form or store with its welcome turned on owes one,
and a contact is owed at most one, ever: the row's unique contact makes a second
subscription (after an unsubscribe, a repeated confirm) owe nothing.

The sending is the campaigns app's (campaigns.welcome, with the campaign layout and the
unsubscribe headers), and the audience must not import campaigns: campaigns hands in
its task when it starts (`welcome_sender_set`, from campaigns.apps), and after commit
`kick` queues it, as audience.confirmations does for the double opt-in mail: at most
one publish per CONFIRMATION_BATCH_SECONDS per process, none while the broker is known
to be down. The beat sweep sends whatever a lost kick left owed.
"""

from __future__ import annotations

import logging

from django.db import transaction

from audience.kicks import Kick
from audience.models import Contact, SignupForm, Store, WelcomeEmail

logger = logging.getLogger(__name__)

_sender: dict = {}

# Have the welcome task run soon; cheap enough to call after every signup (after commit,
# so that the task finds the rows).
kick = Kick(lambda: _sender.get("task"), what="the welcome email")


def welcome_sender_set(task) -> None:
    """Say which Celery task sends owed welcomes (called once, by campaigns' ready())."""
    _sender["task"] = task


def welcome_owe(
    *, contact: Contact, signup_form: SignupForm | None = None, store: Store | None = None
) -> bool:
    """`contact` has just become subscribed through `signup_form` or `store` (either may
    be None). Records, in the caller's transaction, that its welcome email is owed if the
    form or store has one turned on and the contact was never owed one; True if it now is.
    The worker is kicked once the transaction commits."""
    source = signup_form if signup_form is not None else store
    if source is None or not source.welcome_enabled:
        return False
    if contact.status != Contact.Status.SUBSCRIBED:
        return False  # only a subscribed contact is welcomed (and mailed at all)
    # get_or_create, in its own savepoint: two subscriptions racing for one contact
    # (one is locked out by the contact's row lock anyway) still write one row.
    _, created = WelcomeEmail.objects.get_or_create(
        contact_id=contact.pk,
        defaults={"signup_form": signup_form, "store": store},
    )
    if created:
        welcome_queue()
    return created


def welcome_queue() -> None:
    """A welcome is owed in the transaction under way: have it sent once it commits."""
    transaction.on_commit(kick)
