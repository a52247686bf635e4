"""Settings for bench/signup.py: the product's settings plus a trivial view (the floor).

The trivial view lives only here, never in the product's URLs.
"""

from config.settings import *  # noqa: F403

ROOT_URLCONF = "bench.signup_urls"

# The benchmark's worker drains the signup buffer (part of a signup's cost) but sends no
# confirmation mail: that is owed by each signup, and measured by nobody here. Its task
# waits in a queue of its own, which the benchmark counts and then purges.
BENCH_CONFIRMATIONS_QUEUE = "celery-bench-confirmations"
CELERY_TASK_ROUTES = {
    "audience.tasks.send_due_confirmations": {"queue": BENCH_CONFIRMATIONS_QUEUE},
}
