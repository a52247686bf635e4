"""Have a Celery task run soon after a commit, cheaply enough to call on every signup.

The double opt-in mail (audience.confirmations) and the welcome email (audience.welcome)
are debts written in the database with the change that owes them; a task sends whatever
is owed. A `Kick` makes sure such a task runs shortly: each process publishes at most one
per CONFIRMATION_BATCH_SECONDS, delayed by twice that so the writes it covers have
committed, and the beat sweep sends whatever a lost or early task missed. When the broker
is down, the first kick that finds out says so and the process stops trying for
BROKER_DOWN_SECONDS: a signup then costs no broker round trip at all, instead of a failed
connection per request (0.7 s each, measured), and the sweep sends once it is back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from django.conf import settings

logger = logging.getLogger(__name__)

# How long a process leaves the broker alone after a publish failed. The debt is in the
# database, so nothing is lost meanwhile; longer only delays the mail after an outage,
# shorter costs more visitors a failed connection attempt while it lasts.
BROKER_DOWN_SECONDS = 30.0


class Kick:
    """`kick()` has the task `task()` returns run soon (None: nothing sends, do nothing).
    Call it after commit (`transaction.on_commit(kick)`), so that the task finds the rows.
    `what` names the mail in the warning logged when the broker cannot be reached."""

    def __init__(self, task: Callable[[], object | None], *, what: str) -> None:
        self._task = task
        self._what = what
        self._lock = threading.Lock()
        self._at = self._broker_down_until = float("-inf")

    def __call__(self) -> None:
        task = self._task()
        if task is None:
            return
        every = settings.CONFIRMATION_BATCH_SECONDS
        now = time.monotonic()
        with self._lock:
            if now < self._broker_down_until:
                return  # the broker failed a moment ago; the sweep sends this later
            if every and now - self._at < every:
                return  # a task is already on its way and will find these rows too
            self._at = now
        try:
            # One attempt, no publish retries: the sweep is the retry, and a visitor is
            # waiting.
            task.apply_async(countdown=2 * every, retry=False)
        except Exception:
            # The debt is committed; the beat sweep will pay it. Failing the request now
            # (it has committed) would help nobody, and neither would making every
            # following visitor wait for the same dead broker.
            with self._lock:
                self._at = float("-inf")
                self._broker_down_until = time.monotonic() + BROKER_DOWN_SECONDS
            logger.warning(
                "Could not queue %s; not trying again for %.0f s, the sweep will send it",
                self._what,
                BROKER_DOWN_SECONDS,
                exc_info=True,
            )

    def forget(self) -> None:
        """Start as a fresh process does: no task queued yet, the broker not known down."""
        with self._lock:
            self._at = self._broker_down_until = float("-inf")
