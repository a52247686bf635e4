"""The Celery app. Settings live in config/settings.py under the CELERY_ prefix.

Tasks subclass Celery's DjangoTask, which adds ``delay_on_commit``: work is queued
only once the transaction that asked for it has committed, so a rolled-back signup
sends no confirmation and a worker never looks for a row that is not there yet.
"""

import os

from celery import Celery, signals
from django.db import close_old_connections

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("stillhere", task_cls="celery.contrib.django.task:DjangoTask")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@signals.task_prerun.connect
def _database_hygiene(sender=None, **kwargs) -> None:
    """Keep a worker's database connection across tasks, as a web process does across
    requests: drop it only when it is broken or older than CONN_MAX_AGE.

    Celery's Django fixup would otherwise close it before and after every task (unless
    CELERY_DB_REUSE_MAX is set, see settings), and a blast chunk then spends a tenth of
    its time reconnecting (bench/blast.py).
    """
    if not getattr(sender.request, "is_eager", False):  # eager: the caller's connection
        close_old_connections()
