"""Double opt-in mail, owed and sent: a flag on the contact, not a task per signup.

A signup (or an import, or a repeated signup past the resend window) sets
`Contact.confirmation_due` in the same statement that writes the contact, so the debt
is committed with it. After commit, `kick()` makes sure a `send_due_confirmations` task
will run shortly; the task sends every owed mail and clears each flag as its mail goes.

Why not one Celery task per signup: publishing a message costs a signup about a third of
its CPU (bench/signup.py), and a web process that dies between commit and publish would
lose the mail for good. Here each web process publishes at most one task per
CONFIRMATION_BATCH_SECONDS, delayed by twice that so the signups it covers have
committed; the beat sweep (every minute) sends whatever a lost or early task missed.
When the broker is down, the process stops trying for a while (audience.kicks): a
signup then costs no broker round trip at all, and the sweep sends the mail once the
broker is back.

Sending is at-least-once: on PostgreSQL each contact is locked (SKIP LOCKED, so workers
share the work), mailed and cleared in one short transaction; a worker that dies
mid-mail leaves the flag set and the mail goes again.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from audience import emails
from audience.branding import Brand, brand_current
from audience.kicks import Kick
from audience.models import Contact

logger = logging.getLogger(__name__)


def _confirmations_task():
    from audience.tasks import send_due_confirmations

    return send_due_confirmations


# Have `send_due_confirmations` run soon; cheap enough to call after every signup.
kick = Kick(_confirmations_task, what="confirmation mail")


def send_due(*, limit: int = 500) -> tuple[int, bool]:
    """Send owed confirmation mail, up to `limit` contacts. Returns (sent, more_left).

    Stops at the first error that is not about one message (the provider is down, the
    credentials are wrong): every later mail would fail alike. The debts are kept, and
    the next kick or the beat sweep tries again; no retry chain piles up meanwhile. A
    mail the provider will not take for one contact is tried again until its link would
    have expired anyway (CONFIRMATION_MAX_AGE_DAYS).
    """
    expired = timezone.now() - timedelta(days=settings.CONFIRMATION_MAX_AGE_DAYS)
    due = Contact.objects.filter(confirmation_due=True)
    due.filter(confirmation_sent_at__lt=expired).update(confirmation_due=False)
    ids = list(due.order_by("pk").values_list("pk", flat=True)[:limit])
    if not ids:
        return 0, False
    # Read once for the batch: who it is from and the layout's brand. Each form's mail is
    # compiled once too (emails.confirmation_compile), so a contact costs a render.
    brand = brand_current()
    sent = 0
    for contact_id in ids:
        try:
            sent += send_one(contact_id=contact_id, brand=brand)
        except Exception as exc:
            if emails.is_transient(exc) or emails.is_setup_problem(exc):
                logger.warning(
                    "Confirmation mail could not be sent (%s); kept for the next sweep", exc
                )
                return sent, False
            logger.exception("Confirmation mail to contact %s failed; kept", contact_id)
    return sent, len(ids) == limit


def send_one(*, contact_id: int, brand: Brand | None = None) -> bool:
    """Send one owed mail and clear the debt. False if nothing was owed, another worker
    holds the contact, the contact is no longer pending or the provider refused the
    address for good; any other error propagates with the debt kept."""
    if connection.vendor == "postgresql":
        with transaction.atomic():
            contact = (
                Contact.objects.select_for_update(skip_locked=True, of=("self",))
                .select_related("signup_form")
                .filter(pk=contact_id, confirmation_due=True)
                .first()
            )
            if contact is None:
                return False
            mailed = _mail(contact, brand)
            Contact.objects.filter(pk=contact_id).update(confirmation_due=False)
        return mailed
    # SQLite (the quickstart) has no row locks, and a transaction there holds the whole
    # database's write lock: claim the debt first, and give it back if the mail fails.
    if not Contact.objects.filter(pk=contact_id, confirmation_due=True).update(
        confirmation_due=False
    ):
        return False
    contact = Contact.objects.select_related("signup_form").filter(pk=contact_id).first()
    if contact is None:
        return False
    try:
        return _mail(contact, brand)
    except Exception:
        Contact.objects.filter(pk=contact_id).update(confirmation_due=True)
        raise


def _mail(contact: Contact, brand: Brand | None) -> bool:
    if contact.optin_requested_at is None or contact.status == Contact.Status.COMPLAINED:
        return False  # confirmed, unsubscribed or suppressed since: nothing to confirm
    try:
        emails.send_confirmation_email(contact=contact, brand=brand)
    except Exception as exc:
        if not emails.is_refusal(exc):
            raise
        logger.warning("Confirmation mail to contact %s refused: %s", contact.pk, exc)
        return False
    return True
