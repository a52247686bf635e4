"""The real Celery worker, on whatever broker the settings name (Redis in CI)."""

import time

import pytest
from django.db import transaction

from audience.tasks import send_confirmation
from campaigns.models import OutboxMessage
from tests.factories import ContactFactory

pytestmark = pytest.mark.worker


def _wait_for(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


@pytest.fixture
def outbox_backend(settings):
    settings.EMAIL_BACKEND = "campaigns.outbox.OutboxEmailBackend"


def test_worker_runs_a_task_that_writes_to_the_database(celery_worker, outbox_backend):
    contact = ContactFactory(email="worker@example.com", status="pending")
    send_confirmation.delay(contact.pk)
    assert _wait_for(lambda: OutboxMessage.objects.filter(to="worker@example.com").exists())
    message = OutboxMessage.objects.get(to="worker@example.com")
    assert "confirm" in message.subject.lower()
    assert "/confirm/" in message.text_body


def test_task_dispatched_in_a_rolled_back_transaction_never_runs(celery_worker, outbox_backend):
    ghost = ContactFactory(email="ghost@example.com", status="pending")
    marker = ContactFactory(email="marker@example.com", status="pending")

    class Rollback(Exception):
        pass

    with pytest.raises(Rollback), transaction.atomic():
        send_confirmation.delay_on_commit(ghost.pk)
        raise Rollback

    with transaction.atomic():
        send_confirmation.delay_on_commit(marker.pk)
    # The worker takes tasks in order; once the marker's mail exists, anything queued
    # before it would have run too.
    assert _wait_for(lambda: OutboxMessage.objects.filter(to="marker@example.com").exists())
    time.sleep(0.5)
    assert not OutboxMessage.objects.filter(to="ghost@example.com").exists()
