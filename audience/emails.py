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
    message.send()


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
        return False
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
    return isinstance(
        exc, AnymailRecipientsRefused | AnymailInvalidAddress | smtplib.SMTPRecipientsRefused
    )
