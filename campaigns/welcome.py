"""Sending the welcome emails the audience owes (audience.welcome), at most once each.

A WelcomeEmail row goes owed → sending → sent. A worker claims a row with a conditional
UPDATE (owed → sending, stamped claimed_at) in a short transaction that locks the row
and its contact (SKIP LOCKED on PostgreSQL, so workers share the work) and checks that
the contact is still subscribed (else the row is skipped: only subscribed contacts are
mailed). The claim commits before the provider call, then the mail goes, then the row
is marked sent with the provider's message id.

At most once, not at least once as a campaign is: a worker killed between its claim
and its mark leaves the row `sending`, and we cannot know whether the provider took
the message. The sweep turns such a row, once its claim is CAMPAIGN_CLAIM_TIMEOUT old,
into `in_doubt`, and nothing sends an in-doubt row again: one missing welcome costs
less than a second one in the inbox of someone who just subscribed. A provider call
whose answer never came (a read timeout) is in doubt at once, and is not failed over to
the second provider for the same reason. A row still `owed` (its worker died before
claiming it, or the kick was lost) is sent by the next sweep.

The message is a campaign's: the form's or store's subject and Markdown body compiled by
campaigns.rendering into the campaign layout (logo, accent colour, the visible
unsubscribe link, the postal address), with List-Unsubscribe and List-Unsubscribe-Post.
"""

from __future__ import annotations

import logging
import smtplib
from dataclasses import dataclass
from datetime import timedelta

from anymail.exceptions import AnymailError
from django.conf import settings
from django.core.mail import EmailMultiAlternatives
from django.db import connection, transaction
from django.utils import timezone

from audience.emails import is_refusal, is_setup_problem, is_transient
from audience.models import Contact, WelcomeEmail
from campaigns.models import SenderSettings
from campaigns.rendering import compile_campaign, render_from_skeleton
from campaigns.sending import _message_id, _reason, _unanswered
from config.providers import send_failing_over

logger = logging.getLogger(__name__)

State = WelcomeEmail.State

IN_DOUBT_STALE = (
    "The worker stopped while sending it; the provider may have taken it, so it is not sent again."
)
IN_DOUBT_UNANSWERED = (
    "The provider's answer never came; it may have arrived, so it is not sent again: "
)


@dataclass(frozen=True)
class _Content:
    """A form's or store's welcome as campaigns.rendering compiles a campaign: `pk` keys
    the compiled skeleton (the contents are in the key too, so an edit is seen)."""

    pk: str
    subject: str
    body: str
    preheader: str = ""


@dataclass(frozen=True)
class Sent:
    sent: int
    more: bool


def welcomes_send(*, limit: int = 200) -> Sent:
    """Give up on stale claims, then send owed welcomes, up to `limit`. Stops at the first
    error that is about the provider, not one message (down, bad credentials): every
    later mail would fail alike, and the rows stay owed for the next sweep."""
    welcomes_doubt_stale()
    ids = list(
        WelcomeEmail.objects.filter(state=State.OWED)
        .order_by("pk")
        .values_list("pk", flat=True)[:limit]
    )
    sender = SenderSettings.load()
    sent = 0
    for welcome_id in ids:
        try:
            sent += welcome_send(welcome_id=welcome_id, sender=sender)
        except Exception as exc:
            if is_transient(exc) or is_setup_problem(exc):
                logger.warning("Welcome email could not be sent (%s); kept for the sweep", exc)
                return Sent(sent, False)
            raise
    return Sent(sent, len(ids) == limit)


def welcomes_doubt_stale() -> int:
    """Rows claimed longer ago than CAMPAIGN_CLAIM_TIMEOUT whose worker never marked
    them: in doubt, never sent again. A conditional UPDATE: a worker that does finish
    later still marks its row sent (it then knows)."""
    stale = timezone.now() - timedelta(seconds=settings.CAMPAIGN_CLAIM_TIMEOUT)
    doubted = WelcomeEmail.objects.filter(state=State.SENDING, claimed_at__lt=stale).update(
        state=State.IN_DOUBT, error=IN_DOUBT_STALE
    )
    if doubted:
        logger.warning("%s welcome email(s) in doubt: their worker stopped mid-send", doubted)
    return doubted


def welcome_send(*, welcome_id: int, sender: SenderSettings | None = None) -> bool:
    """Claim, send and mark one owed welcome; True if it went. False if it was not owed
    (any more), another worker holds it or its contact, or it was skipped or refused.
    A provider error that is not about this message propagates, the row owed again."""
    claimed = _claim(welcome_id)
    if claimed is None:
        return False
    welcome, claimed_at = claimed
    try:
        message = _message(welcome, sender or SenderSettings.load())
    except Exception as exc:
        # Checked when it was saved (as a campaign's body is): a bug, not a passing
        # trouble, and sending again would fail alike.
        logger.exception("Welcome email %s could not be rendered", welcome.pk)
        _settle(welcome, claimed_at, state=State.FAILED, error=_reason(exc))
        return False
    if message is None:
        _settle(welcome, claimed_at, state=State.SKIPPED, error=_SKIPPED_OFF)
        return False
    try:
        # Through the primary, or the failover when the primary turned it away for a
        # passing reason; not when its answer never came (it may have taken it).
        send_failing_over([message], transient=_fail_over)
    except Exception as exc:
        if _unanswered(exc):
            _settle(
                welcome, claimed_at, state=State.IN_DOUBT, error=IN_DOUBT_UNANSWERED + _reason(exc)
            )
            return False
        if _provider_said_no(exc):
            _settle(welcome, claimed_at, state=State.FAILED, error=_reason(exc))
            return False
        # Nothing reached the provider, it is down for now or its settings are wrong (or
        # the error is no provider's at all): owed again, for the next sweep.
        WelcomeEmail.objects.filter(
            pk=welcome.pk, state=State.SENDING, claimed_at=claimed_at
        ).update(state=State.OWED, claimed_at=None, error=_reason(exc))
        raise
    _settle(
        welcome, claimed_at, state=State.SENT, error="", sent_at=timezone.now(),
        message_id=_message_id(message),
    )  # fmt: skip
    return True


_SKIPPED_OFF = "The welcome email was turned off, or its form or store deleted, before it went."
_SKIPPED_NOT_SUBSCRIBED = "Not sent: the contact was no longer subscribed ({status})."


def _provider_said_no(exc: BaseException) -> bool:
    """The provider answered that it will not take this message (a refused or invalid
    address, a request it rejects): sending it again would be refused alike."""
    if is_transient(exc) or is_setup_problem(exc):
        return False
    return is_refusal(exc) or isinstance(exc, AnymailError | smtplib.SMTPException)


def _fail_over(exc: BaseException) -> bool:
    return is_transient(exc) and not _unanswered(exc)


def _claim(welcome_id: int) -> tuple[WelcomeEmail, object] | None:
    """Claim the owed row (owed → sending) if its contact is still subscribed; commits
    before the provider is called, so a killed worker leaves a claim the sweep sees."""
    now = timezone.now()
    with transaction.atomic():
        rows = WelcomeEmail.objects.select_related("contact", "signup_form", "store").filter(
            pk=welcome_id, state=State.OWED
        )
        if connection.vendor == "postgresql":
            # The contact too: an unsubscribe under way waits, or this row waits for
            # the next sweep, but neither reads the other half-done.
            rows = rows.select_for_update(skip_locked=True, of=("self", "contact"))
        welcome = rows.first()
        if welcome is None:
            return None
        status = welcome.contact.status
        if status != Contact.Status.SUBSCRIBED:
            WelcomeEmail.objects.filter(pk=welcome.pk, state=State.OWED).update(
                state=State.SKIPPED, error=_SKIPPED_NOT_SUBSCRIBED.format(status=status)
            )
            return None
        # Conditional: on SQLite (no row locks) a second worker's UPDATE finds nothing.
        if not WelcomeEmail.objects.filter(pk=welcome.pk, state=State.OWED).update(
            state=State.SENDING, claimed_at=now
        ):
            return None
    return welcome, now


def _settle(welcome: WelcomeEmail, claimed_at, *, state: str, error: str, **fields) -> None:
    """The outcome of this worker's claim; also over a sweep that meanwhile said in doubt
    (this worker knows better now), never over another worker's claim."""
    WelcomeEmail.objects.filter(
        pk=welcome.pk, state__in=(State.SENDING, State.IN_DOUBT), claimed_at=claimed_at
    ).update(state=state, error=error, **fields)


def _message(welcome: WelcomeEmail, sender: SenderSettings) -> EmailMultiAlternatives | None:
    """The welcome as the contact gets it, or None if its form or store has no welcome
    (turned off, or deleted, since it was owed)."""
    source = welcome.signup_form or welcome.store
    if source is None or not source.welcome_enabled:
        return None
    kind = "form" if welcome.signup_form is not None else "store"
    content = _Content(
        pk=f"welcome-{kind}-{source.pk}", subject=source.welcome_subject, body=source.welcome_body
    )
    rendered = render_from_skeleton(compile_campaign(content, sender), welcome.contact, sender)
    message = EmailMultiAlternatives(
        subject=rendered.subject, body=rendered.text, from_email=rendered.from_email,
        to=[welcome.contact.email], reply_to=rendered.reply_to, headers=rendered.headers,
    )  # fmt: skip
    message.attach_alternative(rendered.html, "text/html")
    # Echoed in the provider's webhooks: no campaign, so a bounce or complaint still
    # suppresses the address (campaigns.feedback) without touching any campaign's report.
    message.metadata = {"welcome": str(welcome.pk)}
    return message
