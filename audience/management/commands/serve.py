"""`make run`: migrate, seed the demo, then run the web server and a Celery worker.

Both run as child processes of this one; Ctrl-C (or either child dying) stops both,
so a newcomer never ends up with a stray worker in the background.
"""

import signal
import subprocess
import sys
import time

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Run Stillhere locally: web server on ADDRPORT plus a Celery worker with beat."

    def add_arguments(self, parser):
        parser.add_argument("addrport", nargs="?", default="127.0.0.1:8000")
        parser.add_argument("--concurrency", type=int, default=2)

    def handle(self, *args, addrport, concurrency, **options):
        call_command("migrate", interactive=False, verbosity=0)
        call_command("seed_demo")
        python = sys.executable
        worker = [
            python, "-m", "celery", "-A", "config", "worker", "--beat",
            "--loglevel", "INFO", "--concurrency", str(concurrency),
            "--schedule", str(settings.VAR_DIR / "celerybeat-schedule"),
        ]  # fmt: skip
        web = [python, str(settings.BASE_DIR / "manage.py"), "runserver", addrport]
        # Our own interpreter and manage.py, with arguments we built: nothing untrusted.
        children = [subprocess.Popen(worker), subprocess.Popen(web)]  # noqa: S603
        self.stdout.write(self.style.SUCCESS(f"Stillhere is starting on http://{addrport}/"))
        code = 0
        try:
            while all(child.poll() is None for child in children):
                time.sleep(0.5)
            code = next(child.returncode for child in children if child.returncode is not None)
            self.stderr.write(f"A child process exited with code {code}; stopping the other.")
        except KeyboardInterrupt:
            pass
        finally:
            for child in children:
                if child.poll() is None:
                    child.send_signal(signal.SIGTERM)
            for child in children:
                try:
                    child.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    child.kill()
        sys.exit(code)
