"""Waiting for work another thread or process does (a Celery worker, a browser)."""

from __future__ import annotations

import time

from django.db import OperationalError


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.1) -> bool:
    """True as soon as ``predicate()`` is; False if it is still not after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return True
        except OperationalError as exc:
            # SQLite's shared in-memory test database answers "table is locked" at once
            # (no busy timeout) while a worker thread is writing: look again.
            if "locked" not in str(exc):
                raise
        time.sleep(interval)
    return False


def while_locked(action, timeout: float = 10.0, interval: float = 0.05):
    """Run ``action()`` and return its result, again while SQLite's shared in-memory test
    database says "table is locked" (a worker thread is writing; unlike the quickstart's
    file database, it has no busy timeout to wait it out)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return action()
        except OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(interval)
