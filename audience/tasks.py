from celery import shared_task

from audience import confirmations
from audience.models import Contact


@shared_task(acks_late=True)
def send_due_confirmations() -> int:
    """Send every owed double opt-in mail (queued by confirmations.kick after signups, and
    by beat every minute as the sweep and the retry). Safe to run twice, and on many
    workers at once.

    First it applies the signups for known addresses that were taken in their request
    (services.signups_apply_deferred): they may owe a mail too, and the same kick that
    queues this task after every signup brings them here."""
    from audience import services

    _, deferred_left = services.signups_apply_deferred()
    sent, more = confirmations.send_due()
    more = more or deferred_left
    if more:
        send_due_confirmations.delay()
    return sent


@shared_task
def drain_signups() -> int:
    """Move buffered signups into contacts (audience.buffer): queued by the signup that
    finds no drain on its way, and by beat every minute as the sweep. Safe to run twice,
    and on many workers at once: drains take turns, and each moves what is left."""
    from audience import buffer

    return buffer.drain()


@shared_task
def send_confirmation(contact_id: int) -> None:
    """Queued by versions before Contact.confirmation_due (one task per signup): owe the
    mail instead, so messages still in the broker during an upgrade are not lost."""
    Contact.objects.filter(pk=contact_id, status=Contact.Status.PENDING).update(
        confirmation_due=True
    )
    confirmations.kick()


@shared_task(acks_late=True)
def run_import(job_id: int) -> None:
    """Run a queued contact import. Safe to run twice: only one run claims the job, and
    importing the same rows again changes nothing."""
    from audience.importing import run_job

    run_job(job_id)


@shared_task
def resume_stalled_imports() -> list[int]:
    """Beat, every minute: queue again the imports whose worker stopped mid-run."""
    from audience.importing import jobs_resume_stalled

    return jobs_resume_stalled()


@shared_task
def import_send_confirmations(contact_ids: list[int]) -> None:
    """Queued by versions before imports owed the mail in their own transaction: owe it
    now, so messages still in the broker during an upgrade are not lost."""
    from audience import services

    services.confirmations_request(contacts=Contact.objects.filter(pk__in=contact_ids))


@shared_task
def prune_store_webhooks() -> int:
    """Beat, hourly: forget the receipts of store webhooks too old to be delivered again."""
    from audience.integrations.receiving import receipts_prune

    return receipts_prune()
