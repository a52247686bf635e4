from celery import shared_task

from audience import emails
from audience.models import Contact


@shared_task(autoretry_for=(OSError,), retry_backoff=True, max_retries=5)
def send_confirmation(contact_id: int) -> None:
    """Send the double opt-in mail. Safe to run twice: a confirmed contact gets nothing."""
    contact = Contact.objects.filter(pk=contact_id, status=Contact.Status.PENDING).first()
    if contact is not None:
        emails.send_confirmation_email(contact=contact)
