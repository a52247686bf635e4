"""SIGKILL the worker sending a welcome email at each step of its send; it must go at
most once, and exactly once when the worker died before it claimed the row.

Real worker processes (`python -m celery -A config worker`) on the configured broker,
against the test database, sending through the fake Mailgun on loopback. Each kill is
placed, not timed: the test holds a lock (the welcome table, or the welcome's row) that
the worker must wait for at the step to hit, or the fake provider stalls its answer;
the worker is killed while it waits there, its database connection with it (a backend
waiting on a lock does not notice its client is gone: it is terminated, as the dead
worker's socket would have it). A fresh worker and the beat sweep (run here on a short
timer) carry on:

- killed before its claim: the row is still owed, and the sweep sends it, once;
- killed mid-HTTP (the provider took it and has not answered; or it stalls before
  taking it): the row stays claimed, the sweep makes it in doubt, nothing re-sends it;
- killed after the provider answered, before the row was marked sent: the same.
"""

from __future__ import annotations

import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from django.db import connection, transaction

from audience import services
from audience.models import Contact, WelcomeEmail
from audience.tokens import contact_url
from bench.fake_esp import FakeESP
from tests.factories import SignupFormFactory
from tests.faults.workers import Database, mailgun_worker_env, seed_blast, start_worker, stop, wait

pytestmark = pytest.mark.worker

APP = "stillhere-welcome-fault"  # the workers' connections, as pg_stat_activity names them
CLAIM_TIMEOUT = 5  # the least CAMPAIGN_CLAIM_TIMEOUT takes
EMAIL = "new@example.com"


def _welcome_owed(client) -> WelcomeEmail:
    seed_blast(0)  # sender settings complete enough to send
    form = SignupFormFactory(
        double_opt_in=True, welcome_enabled=True,
        welcome_subject="Welcome, {{ first_name }}", welcome_body="Hello **{{ first_name }}**.",
    )  # fmt: skip
    services.contact_subscribe(
        form=form, email=EMAIL, first_name="Ada", evidence=services.Evidence(method="hosted")
    )
    assert client.post(contact_url("confirm", Contact.objects.get(email=EMAIL))).status_code == 200
    return WelcomeEmail.objects.get(contact__email=EMAIL)


def _state(db: Database, welcome: WelcomeEmail) -> str:
    return db.query("SELECT state FROM audience_welcomeemail WHERE id = %s", welcome.pk)[0][0]


def _waiting_worker_backends(cursor) -> list[int]:
    # pg_stat_activity is read once per transaction unless told to look again.
    cursor.execute("SELECT pg_stat_clear_snapshot()")
    cursor.execute(
        "SELECT pid FROM pg_stat_activity WHERE application_name = %s "
        "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()",
        [APP],
    )
    return [pid for (pid,) in cursor.fetchall()]


def _kill_while_waiting(worker: subprocess.Popen, cursor) -> None:
    """SIGKILL the worker, which waits on our lock, and end its database backend."""
    assert wait(lambda: _waiting_worker_backends(cursor), timeout=60, step=0.1)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    for pid in _waiting_worker_backends(cursor):
        cursor.execute("SELECT pg_terminate_backend(%s)", [pid])


def _kill_before_claim(start, esp, welcome) -> None:
    """The worker's first statement on the welcome table waits for our table lock."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("LOCK TABLE audience_welcomeemail IN ACCESS EXCLUSIVE MODE")
        _kill_while_waiting(start(), cursor)


def _kill_mid_http(how: str):
    def kill(start, esp, welcome) -> None:
        """The provider has the request in hand and does not answer: `deliver_late`
        takes the message first (delivered), `timeout` stalls before taking it."""
        control = {"deliver_late": "deliver_late_next", "timeout": "timeout_next"}[how]
        esp.state.control({control: 1, "seconds": 60})
        worker = start()
        assert wait(lambda: esp.state.in_flight == 1, timeout=60, step=0.05)
        worker.send_signal(signal.SIGKILL)
        worker.wait()

    return kill


def _kill_before_mark(start, esp, welcome) -> None:
    """The provider answers while we hold the row: the worker's mark waits for us."""
    esp.state.control({"deliver_late_next": 1, "seconds": 2})
    worker = start()
    assert wait(lambda: esp.state.in_flight == 1, timeout=60, step=0.05)  # claimed, sent
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            "SELECT id FROM audience_welcomeemail WHERE id = %s FOR UPDATE", [welcome.pk]
        )
        _kill_while_waiting(worker, cursor)
        assert esp.state.in_flight == 0 and esp.state.stats()["requests"] == 1  # answered


def _sweep() -> None:
    from campaigns.tasks import send_due_welcomes

    send_due_welcomes.delay()  # beat's job, on a short timer


# (kill, the state the welcome ends in, what the provider took)
CASES = {
    "before-claim": (_kill_before_claim, WelcomeEmail.State.SENT, 1),
    "mid-http-delivered": (_kill_mid_http("deliver_late"), WelcomeEmail.State.IN_DOUBT, 1),
    "mid-http-stalled": (_kill_mid_http("timeout"), WelcomeEmail.State.IN_DOUBT, 0),
    "answered-before-mark": (_kill_before_mark, WelcomeEmail.State.IN_DOUBT, 1),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_welcome_goes_at_most_once_whatever_step_its_worker_dies_at(
    case, transactional_db, client, fault_report
):
    if connection.vendor != "postgresql":
        pytest.skip("places its kills with PostgreSQL's locks (CI runs it on PostgreSQL)")
    from config.celery import app

    kill, final, taken = CASES[case]
    app.control.purge()
    esp = FakeESP().start()
    tmp = Path(tempfile.mkdtemp(prefix="stillhere-faults-"))
    db = Database(tmp)
    workers: list[subprocess.Popen] = []
    survived, lost, duplicates = 0, None, None
    try:
        env = mailgun_worker_env(
            esp.url, db.url, PGAPPNAME=APP, CAMPAIGN_CLAIM_TIMEOUT=CLAIM_TIMEOUT,
            EMAIL_TIMEOUT=120,  # the kill, not the client's timeout, ends the stalled call
        )  # fmt: skip
        welcome = _welcome_owed(client)  # its kick is queued for the first worker

        def start() -> subprocess.Popen:
            workers.append(start_worker(env, tmp / f"worker{len(workers) + 1}.log"))
            return workers[-1]

        kill(start, esp, welcome)
        assert _state(db, welcome) == (
            WelcomeEmail.State.OWED if case == "before-claim" else WelcomeEmail.State.SENDING
        )

        start()

        def settled() -> bool:
            _sweep()
            return _state(db, welcome) == final

        assert wait(settled, timeout=90, step=1), (tmp / "worker2.log").read_text()
        # Sweeps after it, past another claim timeout: an in-doubt row is never re-sent.
        deadline = time.monotonic() + CLAIM_TIMEOUT + 2
        while time.monotonic() < deadline:
            _sweep()
            time.sleep(1)
        time.sleep(2)  # the last sweep has run
        assert _state(db, welcome) == final
        received = esp.state.recipients[EMAIL]
        assert received == taken
        assert esp.state.stats()["recipients"] == taken  # nobody else was mailed
        (message_id,) = db.query(
            "SELECT message_id FROM audience_welcomeemail WHERE id = %s", welcome.pk
        )[0]
        assert bool(message_id) == (final == WelcomeEmail.State.SENT)
        survived, lost, duplicates = 1, 0, max(received - 1, 0)
    finally:
        fault_report(
            fault="worker SIGKILL at each step of a welcome email",
            cases=1,
            survived=survived,
            lost=lost,
            duplicates=duplicates,
        )
        for proc in workers:
            stop(proc)
        esp.stop()
