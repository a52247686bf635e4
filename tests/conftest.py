from __future__ import annotations

import pytest
from celery.contrib.testing.worker import start_worker
from celery.signals import task_postrun
from django.core.cache import cache
from django.db import connections

from audience import confirmations, welcome
from bench.fake_esp import FakeESP
from config.celery import app as celery_app

# The fault table and `--faults` (make faults): see tests/faultreport.py.
pytest_plugins = ["tests.faultreport"]


def _clear_cache() -> None:
    """Forget rate-limit buckets between tests without flushing a shared Redis database,
    which would also wipe the broker's queues and bindings."""
    client_factory = getattr(cache, "_cache", None)
    if client_factory is not None and hasattr(client_factory, "get_client"):
        client = client_factory.get_client(write=True)
        prefix = cache.key_prefix or ""
        for key in client.scan_iter(f"{prefix}:*"):
            client.delete(key)
    else:
        cache.clear()


@pytest.fixture(autouse=True)
def _fresh_cache():
    _clear_cache()
    yield


@pytest.fixture(autouse=True)
def _full_send_window():
    """A 429 in one test halves this process's sends in flight (campaigns.sending's
    window); the next test starts from CAMPAIGN_SEND_CONCURRENCY again."""
    from campaigns import sending

    sending._window.reset()


@pytest.fixture
def site_url(settings):
    settings.SITE_URL = "http://testserver"
    return settings.SITE_URL


def _close_worker_connections(**kwargs) -> None:
    # The worker thread has its own database connections; close them after each task so
    # the test database can be flushed and dropped.
    connections.close_all()


@pytest.fixture
def celery_worker(transactional_db):
    """A real Celery worker (in a thread of this process) on the configured broker."""
    celery_app.control.purge()
    task_postrun.connect(_close_worker_connections, weak=False)
    try:
        with start_worker(
            celery_app,
            pool="solo",
            perform_ping_check=False,
            shutdown_timeout=20,
            loglevel="WARNING",
        ) as worker:
            yield worker
    finally:
        task_postrun.disconnect(_close_worker_connections)


@pytest.fixture
def eager_tasks():
    """Run tasks inline when they are dispatched.

    Only for unit tests of services, which check *what* a task does; the real path
    through the broker and a worker is covered by the tests using `celery_worker`.
    """
    celery_app.conf.task_always_eager = True
    celery_app.conf.task_eager_propagates = True
    try:
        yield
    finally:
        celery_app.conf.task_always_eager = False
        celery_app.conf.task_eager_propagates = False


@pytest.fixture
def sender(db):
    """Sender settings complete enough to send: the shop every campaign test writes for."""
    from campaigns.models import SenderSettings

    sender = SenderSettings.load()
    sender.from_name = "Corner Shop"
    sender.from_email = "hello@corner.example"
    sender.reply_to = "owner@corner.example"
    sender.postal_address = "1 High Street, Springfield"
    sender.shop_url = "https://corner.example/shop"
    sender.phone = "+1 415 555 0100"
    sender.save()
    return sender


@pytest.fixture(autouse=True)
def _confirmation_kicks_forgotten():
    """Each test starts as a fresh web process would: no confirmation task queued yet."""
    confirmations.kick.forget()
    welcome.kick.forget()


@pytest.fixture
def esp(settings):
    """A fake Mailgun on loopback (bench/fake_esp.py), speaking its real HTTP API; tell it
    to fail, stall or reject through ``esp.state.control``."""
    server = FakeESP().start()
    settings.EMAIL_BACKEND = "anymail.backends.mailgun.EmailBackend"
    settings.ANYMAIL = {
        "MAILGUN_API_KEY": "key-test",
        "MAILGUN_API_URL": f"{server.url}/v3",
        "MAILGUN_SENDER_DOMAIN": "mg.shop.example",
        "REQUESTS_TIMEOUT": 1,
    }
    settings.CAMPAIGN_RETRY_BACKOFF = 0.2
    settings.CAMPAIGN_STATUS_CHECK_SECONDS = 0
    yield server
    server.stop()
