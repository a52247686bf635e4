"""The real Celery worker, on whatever broker the settings name (Redis in CI)."""

import time

import pytest
from django.db import transaction

from audience import services
from audience.models import Contact
from audience.tasks import send_due_confirmations
from campaigns.models import OutboxMessage
from tests.factories import SignupFormFactory
from tests.polling import wait_for

pytestmark = pytest.mark.worker


@pytest.fixture
def outbox_backend(settings):
    settings.EMAIL_BACKEND = "campaigns.outbox.OutboxEmailBackend"


def _signup(email, form):
    return services.contact_subscribe(
        form=form, email=email, evidence=services.Evidence(method="form-html")
    )


def _mails_to(email):
    return OutboxMessage.objects.filter(to=email)


def test_worker_sends_the_confirmation_a_signup_owes(celery_worker, outbox_backend):
    contact = _signup("worker@example.com", SignupFormFactory(double_opt_in=True))
    assert wait_for(lambda: _mails_to("worker@example.com").exists())
    message = _mails_to("worker@example.com").get()
    assert "confirm" in message.subject.lower()
    assert "/confirm/" in message.text_body
    # The debt is paid: the next sweep sends nothing more.
    assert wait_for(lambda: not Contact.objects.get(pk=contact.pk).confirmation_due)
    send_due_confirmations.apply().get()
    assert _mails_to("worker@example.com").count() == 1


def test_signups_in_a_rolled_back_transaction_send_nothing(celery_worker, outbox_backend):
    form = SignupFormFactory(double_opt_in=True)

    class Rollback(Exception):
        pass

    with pytest.raises(Rollback), transaction.atomic():
        _signup("ghost@example.com", form)
        raise Rollback

    with transaction.atomic():
        _signup("marker@example.com", form)
    assert wait_for(lambda: _mails_to("marker@example.com").exists())
    send_due_confirmations.apply().get()  # a sweep after both
    assert not Contact.objects.filter(email="ghost@example.com").exists()
    assert not _mails_to("ghost@example.com").exists()


def test_a_burst_of_signups_shares_one_task_and_everyone_gets_one_mail(
    celery_worker, outbox_backend, settings
):
    settings.CONFIRMATION_BATCH_SECONDS = 0.5
    form = SignupFormFactory(double_opt_in=True)
    emails = [f"burst{i}@example.com" for i in range(20)]
    for email in emails:
        _signup(email, form)
    assert wait_for(lambda: OutboxMessage.objects.filter(to__in=emails).count() == 20)
    time.sleep(1.5)  # any late task has run by now
    assert sorted(OutboxMessage.objects.filter(to__in=emails).values_list("to", flat=True)) == (
        sorted(emails)
    )
    assert not Contact.objects.filter(email__in=emails, confirmation_due=True).exists()


def test_the_sweep_sends_mail_whose_task_was_lost(celery_worker, outbox_backend):
    form = SignupFormFactory(double_opt_in=True)
    contact = _signup("lost@example.com", form)
    assert wait_for(lambda: _mails_to("lost@example.com").exists())
    # As if the web process died between commit and queueing the task: owed, not queued.
    Contact.objects.filter(pk=contact.pk).update(confirmation_due=True)
    OutboxMessage.objects.all().delete()
    assert send_due_confirmations.apply().get() == 1  # beat runs this every minute
    assert _mails_to("lost@example.com").count() == 1
