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
