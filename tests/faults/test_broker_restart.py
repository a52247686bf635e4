"""Kill the broker under a running worker, start it again; the worker must carry on.

A real worker process (`python -m celery -A config worker`, prefork as deployed, with
gossip and mingle on as `make worker` runs it) on a redis-server of the test's own, on a
free port. Redis is SIGKILLed, stays down past the worker's first reconnect attempts,
and comes back on the same port, three times; after each restart the worker must still
be running and must run a task whose effect is in the database: owed confirmation mail
sent (a row in the outbox), owed exactly once.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from audience import services
from audience.models import Contact
from tests.factories import SignupFormFactory
from tests.faults.workers import ROOT, Database, stop, wait, worker_env

pytestmark = [
    pytest.mark.worker,
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server"),
]

RESTARTS = 3
DOWN_SECONDS = 6  # past the worker's first reconnect attempts (2 s, then 4 s)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """A redis-server of this test's own; killing it touches nobody else's."""

    def __init__(self, tmp: Path):
        self.tmp, self.port, self.proc = tmp, _free_port(), None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                *("redis-server", "--port", str(self.port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no", "--dir", str(self.tmp)),
            ],
            stdout=(self.tmp / "redis.log").open("ab"),
            stderr=subprocess.STDOUT,
        )
        assert wait(self._answers, timeout=10), "redis-server did not start"

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


def _start_worker(env: dict, log: Path) -> subprocess.Popen:
    # Prefork with gossip and mingle, as a deployment runs it (not the --pool solo and
    # --without-gossip of the other fault tests): the broken reconnects were there.
    return subprocess.Popen(
        [
            *(sys.executable, "-m", "celery", "-A", "config", "worker"),
            *("--concurrency", "1", "--loglevel", "INFO"),
        ],
        cwd=ROOT,
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


def _queue_sweep(broker_url: str) -> None:
    """Publish the confirmation sweep to the test's broker, as beat would."""
    from audience.tasks import send_due_confirmations
    from config.celery import app

    with app.connection_for_write(url=broker_url) as conn:
        send_due_confirmations.apply_async(connection=conn)


def test_a_worker_survives_broker_restarts_and_runs_tasks_after_each(
    transactional_db, fault_report
):
    tmp = Path(tempfile.mkdtemp(prefix="stillhere-broker-"))
    db = Database(tmp)
    broker = Broker(tmp)
    broker.start()
    log = tmp / "worker.log"
    worker = None
    survived, lost, duplicates = 0, None, None
    try:
        form = SignupFormFactory(double_opt_in=True)
        emails = [f"restart{i}@example.com" for i in range(RESTARTS)]
        for email in emails:
            services.contact_subscribe(
                form=form, email=email, evidence=services.Evidence(method="form-html")
            )
        # Owed later, one after each restart.
        Contact.objects.filter(email__in=emails).update(confirmation_due=False)
        db.hand_over()
        env = worker_env(db.url, REDIS_URL=broker.url, EMAIL_PROVIDER="outbox")
        worker = _start_worker(env, log)
        assert wait(lambda: "ready." in log.read_text(), timeout=60), log.read_text()

        def mailed(email: str) -> int:
            rows = db.query('SELECT COUNT(*) FROM campaigns_outboxmessage WHERE "to" = %s', email)
            return rows[0][0]

        for email in emails:
            broker.kill()
            time.sleep(DOWN_SECONDS)  # the outage itself: nothing to poll for
            broker.start()
            assert worker.poll() is None, f"the worker exited:\n{log.read_text()[-3000:]}"
            # A mail owed after the restart, and the sweep that sends it.
            db.query(
                "UPDATE audience_contact SET confirmation_due = %s WHERE email = %s RETURNING id",
                True,
                email,
            )
            _queue_sweep(broker.url)
            assert wait(lambda email=email: mailed(email) == 1, timeout=60, step=0.5), (
                f"no task ran after the broker came back:\n{log.read_text()[-3000:]}"
            )
            assert worker.poll() is None
            survived += 1
        assert "Unrecoverable error" not in log.read_text()
        counts = [mailed(email) for email in emails]
        assert counts == [1] * RESTARTS
        lost, duplicates = counts.count(0), sum(counts) - RESTARTS
    finally:
        fault_report(
            fault="broker (Redis) SIGKILL + restart under a running worker",
            cases=RESTARTS,
            survived=survived,
            lost=lost,
            duplicates=duplicates,
        )
        if worker is not None:
            stop(worker)
        if broker.proc.poll() is None:
            broker.kill()
