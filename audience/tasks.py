from celery import shared_task

from audience import confirmations, emails
from audience.models import Contact


@shared_task(bind=True, acks_late=True, max_retries=None)
def send_due_confirmations(self) -> int:
    """Send every owed double opt-in mail (queued by confirmations.kick after signups, and
    by beat every minute as a sweep). Safe to run twice, and on many workers at once."""
    try:
        sent, more = confirmations.send_due()
    except Exception as exc:
        if not emails.is_transient(exc):
            raise
        # The provider is unreachable or busy: the debts are kept for the retry.
        raise self.retry(exc=exc, countdown=min(300, 10 * 2**self.request.retries)) from None
    if more:
        send_due_confirmations.delay()
    return sent


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
