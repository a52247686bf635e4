from celery import shared_task

from audience import emails
from audience.models import Contact


@shared_task(autoretry_for=(OSError,), retry_backoff=True, max_retries=5)
def send_confirmation(contact_id: int) -> None:
    """Send the double opt-in mail. Safe to run twice: a confirmed contact gets nothing."""
    contact = Contact.objects.filter(pk=contact_id, status=Contact.Status.PENDING).first()
    if contact is not None:
        emails.send_confirmation_email(contact=contact)


@shared_task(acks_late=True)
def run_import(job_id: int) -> None:
    """Run a queued contact import. Safe to run twice: only one run claims the job, and
    importing the same rows again changes nothing."""
    from audience.importing import run_job

    run_job(job_id)


@shared_task(autoretry_for=(OSError,), retry_backoff=True, max_retries=5)
def import_send_confirmations(contact_ids: list[int]) -> None:
    """Queue double opt-in mails for contacts an import created as pending."""
    from audience import services

    for contact in Contact.objects.filter(pk__in=contact_ids, status=Contact.Status.PENDING):
        services.confirmation_request(contact=contact)
