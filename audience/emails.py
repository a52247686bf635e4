"""The audience's own transactional mail: the double opt-in confirmation."""

import smtplib

from anymail.exceptions import (
    AnymailAPIError,
    AnymailError,
    AnymailInvalidAddress,
    AnymailRecipientsRefused,
)
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.mail import EmailMultiAlternatives
from django.template.loader import render_to_string

from audience.models import Contact
from audience.tokens import contact_url
from config.providers import send_failing_over


def send_confirmation_email(*, contact: Contact) -> None:
    form = contact.signup_form
    context = {
        "contact": contact,
        "form": form,
        "confirm_url": contact_url("confirm", contact),
        "days": settings.CONFIRMATION_MAX_AGE_DAYS,
        "sender": settings.DEFAULT_FROM_EMAIL,
    }
    subject = render_to_string("email/confirm_subject.txt", context).strip()
    message = EmailMultiAlternatives(
        subject=" ".join(subject.split()),
        body=render_to_string("email/confirm.txt", context),
        to=[contact.email],
    )
    message.attach_alternative(render_to_string("email/confirm.html", context), "text/html")
    # Through the primary, or the failover provider when the primary fails for a
    # passing reason (the same providers and connections as the campaigns').
    send_failing_over([message], transient=is_transient)


def is_transient(exc: BaseException) -> bool:
    """Would sending again later help? Provider 429 / 5xx, timeouts, unreachable: yes.
    A refused recipient, a bad request or a setup problem: no."""
    if isinstance(exc, AnymailAPIError):
        code = getattr(exc, "status_code", None)
        # No status: the request never got an answer (timeout, connection refused).
        return code is None or code == 429 or code >= 500
    if isinstance(exc, AnymailError):  # refused recipients, invalid address, unsupported…
        return False
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return _refused_for_now(exc)
    if isinstance(exc, smtplib.SMTPResponseException):
        return 400 <= exc.smtp_code < 500
    return isinstance(exc, OSError | smtplib.SMTPException)


def is_setup_problem(exc: BaseException) -> bool:
    """Nothing will go out until someone fixes the settings (credentials, sender domain)."""
    if isinstance(exc, AnymailAPIError):
        return getattr(exc, "status_code", None) in {401, 403, 404}
    return isinstance(
        exc, ImproperlyConfigured | smtplib.SMTPAuthenticationError | smtplib.SMTPSenderRefused
    )


def is_refusal(exc: BaseException) -> bool:
    """The provider will never take mail for this recipient (sending again cannot help,
    and it says nothing about the other recipients)."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return not _refused_for_now(exc)
    return isinstance(exc, AnymailRecipientsRefused | AnymailInvalidAddress)


def _refused_for_now(exc: smtplib.SMTPRecipientsRefused) -> bool:
    """Every refusal a 4xx to RCPT TO (greylisting, "452 too many recipients", a relay's
    rate limit): RFC 5321 §4.2.1's transient negative, so try again later."""
    codes = [code for code, _message in exc.recipients.values()]
    return bool(codes) and all(400 <= code < 500 for code in codes)


def is_too_many(exc: BaseException) -> bool:
    """The provider takes fewer requests at once than it was sent: an HTTP 429, or an
    SMTP 421 (a relay closing the connection it cannot serve, often at connect)."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return any(code == 421 for code, _message in exc.recipients.values())
    if isinstance(exc, smtplib.SMTPResponseException):
        return exc.smtp_code == 421
    return getattr(exc, "status_code", None) == 429
