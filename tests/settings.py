"""Test settings: the product's settings, read with a few defaults a shell may lack."""

import os

os.environ.setdefault("SECRET_KEY", "test-only-secret-key-that-is-long-enough-0123456789")
os.environ.setdefault("SITE_URL", "http://testserver")
# Tests hold their own clocks; the speed bump for bots would only slow them down.
os.environ.setdefault("SIGNUP_MIN_SECONDS", "0")
# Confirmation mail is queued after each signup, at once, so a test sees it straight away.
os.environ.setdefault("CONFIRMATION_BATCH_SECONDS", "0")

# A signup is stored before it is answered, so a test can look at it straight away; the
# signup buffer (audience.intake) has its own tests, which turn it on.
os.environ.setdefault("SIGNUP_BUFFER", "0")

from config.settings import *  # noqa: F403
from config.settings import STORAGES

# Tests render templates without running collectstatic first.
STORAGES = {
    **STORAGES,
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
