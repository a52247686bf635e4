"""The audience's own transactional mail: the double opt-in confirmation."""

from django.conf import settings
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
