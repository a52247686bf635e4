"""The Celery app. Settings live in config/settings.py under the CELERY_ prefix.

Tasks subclass Celery's DjangoTask, which adds ``delay_on_commit``: work is queued
only once the transaction that asked for it has committed, so a rolled-back signup
sends no confirmation and a worker never looks for a row that is not there yet.
"""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("stillhere", task_cls="celery.contrib.django.task:DjangoTask")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
