"""Stillhere settings: one file, every value from the environment.

The defaults make a quickstart that needs no server (SQLite, a filesystem broker, a
local outbox); production sets DATABASE_URL, REDIS_URL, SECRET_KEY, ALLOWED_HOSTS,
SITE_URL and an email provider. README.md lists every variable.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import phonenumbers
from django.core.exceptions import ImproperlyConfigured
from kombu import Queue

from config.env import (
    env_bool,
    env_choice,
    env_float,
    env_int,
    env_list,
    env_rate,
    env_str,
    parse_database_url,
    parse_redis_url,
    parse_site_url,
)
from config.webhooks import (
    credentials_hint,
    credentials_message,
    missing_credentials,
    tracking_providers,
)

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("STILLHERE_VAR_DIR") or BASE_DIR / "var")
VAR_DIR.mkdir(parents=True, exist_ok=True)

DEBUG = env_bool("DEBUG", False)


def _secret_key() -> str:
    key = env_str("SECRET_KEY")
    if key:
        if len(key) < 32:
            raise ImproperlyConfigured("SECRET_KEY must be at least 32 characters long")
        return key
    if not DEBUG:
        raise ImproperlyConfigured(
            "SECRET_KEY is not set. Set it to a long random value "
            "(python -c 'import secrets; print(secrets.token_urlsafe(50))'), "
            "or set DEBUG=1 for a local quickstart that keeps one under var/."
        )
    # Quickstart: generate once and keep it, so sessions and signed links survive restarts.
    path = VAR_DIR / "secret_key"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(50))
        path.chmod(0o600)
    return path.read_text().strip()


SECRET_KEY = _secret_key()
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"])
SITE_URL = parse_site_url("SITE_URL", env_str("SITE_URL", "http://127.0.0.1:8000"))
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [SITE_URL])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "crispy_forms",
    "crispy_bootstrap5",
    "anymail",
    "rest_framework",
    "drf_spectacular",
    "config.apps.StillhereConfig",
    "audience",
    "campaigns",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database --------------------------------------------------------------
DATABASES = {
    "default": parse_database_url(
        env_str("DATABASE_URL", f"sqlite:///{VAR_DIR / 'stillhere.sqlite3'}"), base_dir=BASE_DIR
    )
}
if DATABASES["default"]["ENGINE"].endswith("postgresql"):
    DATABASES["default"]["CONN_MAX_AGE"] = env_int("DB_CONN_MAX_AGE", 60, minimum=0)
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

SILENCED_SYSTEM_CHECKS = [
    # HSTS preload is an irreversible, per-domain decision; SECURE_HSTS_PRELOAD opts in.
    "security.W021",
]

# --- Redis: broker, cache, rate-limit buckets ------------------------------
REDIS_URL = env_str("REDIS_URL")
if REDIS_URL:
    REDIS_URL = parse_redis_url("REDIS_URL", REDIS_URL)
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": "stillhere",
        }
    }
    CELERY_BROKER_URL = REDIS_URL
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        # A task a dead worker held (acks_late) comes back after this long. Longer than any
        # chunk takes, short enough that a crash delays a blast by minutes, not an hour.
        "visibility_timeout": env_int("CELERY_VISIBILITY_TIMEOUT", 600, minimum=60),
        # Without these a Redis that vanishes without closing the TCP connection (a host
        # or network gone) leaves a publish, and with it a web request, waiting for the
        # OS's own timeouts (minutes); a worker's BRPOP is checked by kombu's health check.
        "socket_connect_timeout": env_float("CELERY_BROKER_TIMEOUT", 4.0, minimum=0.1),
        "socket_timeout": 30.0,
        "health_check_interval": 10,
    }
else:
    # Quickstart: one machine, no server. The cache is per process, which is what the
    # rate limits of a single runserver need; production sets REDIS_URL.
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    _broker_dir = VAR_DIR / "broker"
    for _sub in ("queue", "processed", "control"):
        (_broker_dir / _sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_URL = "filesystem://"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir / "queue"),
        "data_folder_out": str(_broker_dir / "queue"),
        "processed_folder": str(_broker_dir / "processed"),
        "store_processed": False,
        # Fanout and control exchanges (broadcast, remote control) live here, not in the cwd.
        "control_folder": str(_broker_dir / "control"),
    }
# A publish connects once, then its own retry policy decides (Celery's: 3 quick retries;
# none where the caller asks for none). kombu's default is a retry loop of its own around
# every connect: a signup after a Redis outage began took 6 s before it gave up. Workers
# reconnect by CELERY_BROKER_CONNECTION_MAX_RETRIES instead.
CELERY_BROKER_TRANSPORT_OPTIONS["max_retries"] = 0

# --- Celery ----------------------------------------------------------------
CELERY_TASK_ACKS_LATE = True
# A task a worker was killed in the middle of goes back to the queue instead of vanishing.
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# Celery's Django fixup closes the database connection around every task unless this is
# set; config/celery.py closes it instead when it is broken or past CONN_MAX_AGE.
CELERY_DB_REUSE_MAX = 1000
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_IGNORE_RESULT = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# A worker whose broker went away keeps trying to reconnect for as long as it takes
# (Celery's default gives up after 100 attempts, about 45 minutes, and the worker exits).
CELERY_BROKER_CONNECTION_MAX_RETRIES = None
CELERY_BROKER_CONNECTION_TIMEOUT = env_float("CELERY_BROKER_TIMEOUT", 4.0, minimum=0.1)
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_TIMEZONE = "UTC"
# Housekeeping (the sweeps that recover a dead worker's chunk, start due campaigns, drain
# signups) has its own queue: in the one FIFO queue it waited behind a blast's chunk tasks
# (49 s for a sweep, measured). Every worker consumes every queue named here unless told
# otherwise with -Q, so a plain `celery -A config worker` serves both.
CELERY_TASK_DEFAULT_QUEUE = "celery"
CELERY_TASK_QUEUES = [Queue("celery"), Queue("housekeeping")]
CELERY_TASK_ROUTES = {
    name: {"queue": "housekeeping"}
    for name in (
        "campaigns.tasks.sweep_stale_claims",
        "campaigns.tasks.start_due_campaigns",
        "campaigns.tasks.resume_due_campaigns",
        "audience.tasks.send_due_confirmations",
        "audience.tasks.drain_signups",
        "audience.tasks.resume_stalled_imports",
        "campaigns.tasks.send_due_welcomes",
    )
}

# --- Campaign sending ---------------------------------------------------------------
# Recipients per chunk task (one claim, one counter update).
CAMPAIGN_CHUNK_SIZE = env_int("CAMPAIGN_CHUNK_SIZE", 500, minimum=1)
# Recipients per provider API call in batch mode (Mailgun takes at most 1000).
CAMPAIGN_BATCH_SIZE = env_int("CAMPAIGN_BATCH_SIZE", 500, minimum=1)
# Provider calls in flight at once per worker process, each on its own connection: per
# message, messages; in batch mode, batch calls. A provider answers in 50-300 ms, so one
# at a time is ~7 messages/s per worker (bench/blast.py measures it).
CAMPAIGN_SEND_CONCURRENCY = env_int("CAMPAIGN_SEND_CONCURRENCY", 32, minimum=1)
# A claim older than this belongs to a dead worker: the sweeper re-queues its rows.
CAMPAIGN_CLAIM_TIMEOUT = env_int("CAMPAIGN_CLAIM_TIMEOUT", 300, minimum=5)
# How often a chunk in flight looks for pause/cancel (seconds).
CAMPAIGN_STATUS_CHECK_SECONDS = env_float("CAMPAIGN_STATUS_CHECK_SECONDS", 1.0, minimum=0)
# The campaign pauses when the provider (429/5xx/timeouts) has turned chunks away at least
# this many times and for at least CAMPAIGN_FAILURE_WINDOW seconds with no message getting
# through; a burst that several workers see at the same instant only slows it down.
CAMPAIGN_MAX_FAILED_CHUNKS = env_int("CAMPAIGN_MAX_FAILED_CHUNKS", 3, minimum=1)
CAMPAIGN_FAILURE_WINDOW = env_float("CAMPAIGN_FAILURE_WINDOW", 60.0, minimum=0)
# A pause the provider caused resumes by itself after a growing, capped backoff, at most
# this many times in a row without a message getting through (0: never by itself).
CAMPAIGN_AUTO_RESUME_MAX = env_int("CAMPAIGN_AUTO_RESUME_MAX", 12, minimum=0)
CAMPAIGN_AUTO_RESUME_BACKOFF = env_float("CAMPAIGN_AUTO_RESUME_BACKOFF", 60.0, minimum=0.1)
CAMPAIGN_AUTO_RESUME_BACKOFF_MAX = env_float(
    "CAMPAIGN_AUTO_RESUME_BACKOFF_MAX", 1800.0, minimum=0.1
)
CAMPAIGN_MAX_RETRIES = env_int("CAMPAIGN_MAX_RETRIES", 8, minimum=0)
# Campaign messages in a row that may soft-bounce (mailbox full, greylisting, …) before
# the contact is suppressed as bounced; a delivered message starts the count again.
SOFT_BOUNCE_LIMIT = env_int("SOFT_BOUNCE_LIMIT", 3, minimum=1)
CAMPAIGN_RETRY_BACKOFF = env_float("CAMPAIGN_RETRY_BACKOFF", 5.0, minimum=0)
CAMPAIGN_RETRY_BACKOFF_MAX = env_float("CAMPAIGN_RETRY_BACKOFF_MAX", 300.0, minimum=0)
# Optional mailto for List-Unsubscribe, next to the one-click HTTPS URL.
UNSUBSCRIBE_MAILTO = env_str("UNSUBSCRIBE_MAILTO")
CELERY_BEAT_SCHEDULE = {
    # The sweep for double opt-in mail a signup's own kick missed (audience.confirmations).
    "audience-send-due-confirmations": {
        "task": "audience.tasks.send_due_confirmations",
        "schedule": 60.0,
    },
    # The sweep for buffered signups a signup's own drain task missed (audience.intake).
    "audience-drain-signups": {
        "task": "audience.tasks.drain_signups",
        "schedule": 60.0,
    },
    # Imports whose worker stopped mid-run are queued again (audience.importing).
    "audience-resume-stalled-imports": {
        "task": "audience.tasks.resume_stalled_imports",
        "schedule": 60.0,
    },
    # Store webhook receipts past any redelivery (audience.integrations.receiving).
    "audience-prune-store-webhooks": {
        "task": "audience.tasks.prune_store_webhooks",
        "schedule": 3600.0,
    },
    # The sweep for welcome emails a subscription's own kick missed (campaigns.welcome),
    # and the claims of workers that died mid-send (given up on: never sent twice).
    "campaigns-send-due-welcomes": {
        "task": "campaigns.tasks.send_due_welcomes",
        "schedule": 60.0,
    },
    "campaigns-start-due": {
        "task": "campaigns.tasks.start_due_campaigns",
        "schedule": env_float("CAMPAIGN_SCAN_SECONDS", 30.0, minimum=1),
    },
    "campaigns-sweep-stale-claims": {
        "task": "campaigns.tasks.sweep_stale_claims",
        "schedule": env_float("CAMPAIGN_SWEEP_SECONDS", 60.0, minimum=1),
    },
    # Provider pauses whose time has come (each pause also queues its own resume; this
    # catches one lost with a worker or the broker).
    "campaigns-resume-due": {
        "task": "campaigns.tasks.resume_due_campaigns",
        "schedule": env_float("CAMPAIGN_SCAN_SECONDS", 30.0, minimum=1),
    },
}

# --- Email -------------------------------------------------------------------
_PROVIDERS = {
    "outbox": "campaigns.outbox.OutboxEmailBackend",
    "console": "django.core.mail.backends.console.EmailBackend",
    "smtp": "django.core.mail.backends.smtp.EmailBackend",
    "postmark": "anymail.backends.postmark.EmailBackend",
    "mailgun": "anymail.backends.mailgun.EmailBackend",
    "amazon_ses": "anymail.backends.amazon_ses.EmailBackend",
    "brevo": "anymail.backends.brevo.EmailBackend",
    "sparkpost": "anymail.backends.sparkpost.EmailBackend",
    "mailjet": "anymail.backends.mailjet.EmailBackend",
    "resend": "anymail.backends.resend.EmailBackend",
    "sendgrid": "anymail.backends.sendgrid.EmailBackend",
}
EMAIL_PROVIDER = env_choice("EMAIL_PROVIDER", list(_PROVIDERS), "outbox")
EMAIL_BACKEND = _PROVIDERS[EMAIL_PROVIDER]
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "Stillhere <hello@localhost>")
SERVER_EMAIL = env_str("SERVER_EMAIL", DEFAULT_FROM_EMAIL)
EMAIL_TIMEOUT = env_int("EMAIL_TIMEOUT", 20, minimum=1)

if EMAIL_PROVIDER == "smtp":
    EMAIL_HOST = env_str("EMAIL_HOST", "localhost")
    EMAIL_PORT = env_int("EMAIL_PORT", 587, minimum=1)
    EMAIL_HOST_USER = env_str("EMAIL_HOST_USER")
    EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD")
    EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", EMAIL_PORT == 587)
    EMAIL_USE_SSL = env_bool("EMAIL_USE_SSL", EMAIL_PORT == 465)
    if EMAIL_USE_TLS and EMAIL_USE_SSL:
        raise ImproperlyConfigured("Set only one of EMAIL_USE_TLS and EMAIL_USE_SSL")


def _anymail_settings(provider: str) -> dict:
    """Map our generic EMAIL_API_KEY / EMAIL_API_URL onto each provider's own names."""
    key = env_str("EMAIL_API_KEY")
    url = env_str("EMAIL_API_URL")
    prefix = provider.upper()
    if provider == "amazon_ses":
        # boto3 reads AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_REGION itself.
        return {}
    if not key:
        raise ImproperlyConfigured(f"EMAIL_PROVIDER={provider} needs EMAIL_API_KEY")
    conf = {
        "postmark": {"POSTMARK_SERVER_TOKEN": key},
        "mailjet": {"MAILJET_API_KEY": key, "MAILJET_SECRET_KEY": env_str("EMAIL_API_SECRET")},
    }.get(provider, {f"{prefix}_API_KEY": key})
    if provider == "mailgun":
        domain = env_str("MAILGUN_SENDER_DOMAIN")
        if domain:
            conf["MAILGUN_SENDER_DOMAIN"] = domain
    if url:
        conf[f"{prefix}_API_URL"] = parse_site_url("EMAIL_API_URL", url) + "/"
    return conf


ANYMAIL = _anymail_settings(EMAIL_PROVIDER) if EMAIL_BACKEND.startswith("anymail") else {}
# EMAIL_TIMEOUT reaches SMTP by itself; anymail has its own setting (default 30 s), and a
# send that waits that long is one the worker may send again unknowingly.
if EMAIL_PROVIDER == "amazon_ses":
    # boto3's own retries would re-send a message whose answer never came, uncounted;
    # the chunk task retries instead, and counts it.
    ANYMAIL["AMAZON_SES_CLIENT_PARAMS"] = {
        "config": {
            "connect_timeout": EMAIL_TIMEOUT,
            "read_timeout": EMAIL_TIMEOUT,
            "retries": {"total_max_attempts": 1},
        }
    }
elif EMAIL_BACKEND.startswith("anymail"):
    ANYMAIL["REQUESTS_TIMEOUT"] = EMAIL_TIMEOUT


# --- Failover provider -----------------------------------------------------------
# A second provider, with credentials of its own, that a campaign's remaining chunks go
# out through once the primary has turned EMAIL_FAILOVER_AFTER_CHUNKS chunks in a row
# away (transient errors, timeouts); confirmation mail falls over to it message by
# message. config.providers reads these; unset, sending is exactly as without failover.
# Its credentials are passed to its backend as keyword arguments (anymail reads a
# backend's kwargs before settings.ANYMAIL), so two accounts of one provider work too.
_FAILOVER = "EMAIL_FAILOVER_"
EMAIL_FAILOVER_PROVIDER = env_choice(
    "EMAIL_FAILOVER_PROVIDER",
    ["", *(name for name in _PROVIDERS if name not in {"outbox", "console"})],
    "",
)
EMAIL_FAILOVER_AFTER_CHUNKS = env_int("EMAIL_FAILOVER_AFTER_CHUNKS", 2, minimum=1)


def _failover_options(provider: str) -> dict:
    """The failover backend's keyword arguments, from the EMAIL_FAILOVER_* variables
    that mirror the primary's (EMAIL_API_KEY -> EMAIL_FAILOVER_API_KEY, ...)."""
    if provider == "smtp":
        host = env_str(_FAILOVER + "HOST")
        if not host:
            raise ImproperlyConfigured(
                "EMAIL_FAILOVER_PROVIDER=smtp needs EMAIL_FAILOVER_HOST (and "
                "EMAIL_FAILOVER_PORT, _USER, _PASSWORD as the relay asks)"
            )
        port = env_int(_FAILOVER + "PORT", 587, minimum=1)
        options = {
            "host": host,
            "port": port,
            "username": env_str(_FAILOVER + "USER"),
            "password": env_str(_FAILOVER + "PASSWORD"),
            "use_tls": env_bool(_FAILOVER + "USE_TLS", port == 587),
            "use_ssl": env_bool(_FAILOVER + "USE_SSL", port == 465),
            "timeout": EMAIL_TIMEOUT,
        }
        if options["use_tls"] and options["use_ssl"]:
            raise ImproperlyConfigured(
                "Set only one of EMAIL_FAILOVER_USE_TLS and EMAIL_FAILOVER_USE_SSL"
            )
        return options
    if provider == "amazon_ses":
        # Without keys of its own, boto3 finds credentials itself (AWS_* variables, an
        # instance role); its own retries are off for the reason given above.
        session = {
            name: env_str(_FAILOVER + variable)
            for name, variable in (
                ("aws_access_key_id", "AWS_ACCESS_KEY_ID"),
                ("aws_secret_access_key", "AWS_SECRET_ACCESS_KEY"),
                ("region_name", "AWS_REGION"),
            )
            if env_str(_FAILOVER + variable)
        }
        client = {
            "config": {
                "connect_timeout": EMAIL_TIMEOUT,
                "read_timeout": EMAIL_TIMEOUT,
                "retries": {"total_max_attempts": 1},
            }
        }
        return {"session_params": session, "client_params": client}
    key = env_str(_FAILOVER + "API_KEY")
    if not key:
        raise ImproperlyConfigured(
            f"EMAIL_FAILOVER_PROVIDER={provider} needs EMAIL_FAILOVER_API_KEY"
        )
    options: dict = {"requests_timeout": EMAIL_TIMEOUT}
    if provider == "postmark":
        options["server_token"] = key
    else:
        options["api_key"] = key
    if provider == "mailjet":
        options["secret_key"] = env_str(_FAILOVER + "API_SECRET")
        if not options["secret_key"]:
            raise ImproperlyConfigured(
                "EMAIL_FAILOVER_PROVIDER=mailjet needs EMAIL_FAILOVER_API_SECRET as well"
            )
    if provider == "mailgun":
        # Never the primary's MAILGUN_SENDER_DOMAIN: another account has its own domains.
        options["sender_domain"] = env_str(_FAILOVER + "DOMAIN") or None
    url = env_str(_FAILOVER + "API_URL")
    if url:
        options["api_url"] = parse_site_url("EMAIL_FAILOVER_API_URL", url) + "/"
    return options


def _same_account(provider: str, options: dict) -> bool:
    """Would the failover reach the very account (or relay) the primary does? Then it
    fails when the primary fails, and is no failover at all."""
    if provider != EMAIL_PROVIDER:
        return False
    if provider == "smtp":
        return (options["host"], options["port"], options["username"]) == (
            EMAIL_HOST,
            EMAIL_PORT,
            EMAIL_HOST_USER,
        )
    if provider == "amazon_ses":
        session = options["session_params"]
        return (session.get("aws_access_key_id"), session.get("region_name")) == (
            env_str("AWS_ACCESS_KEY_ID") or None,
            env_str("AWS_REGION") or env_str("AWS_DEFAULT_REGION") or None,
        )
    key = options.get("server_token") or options.get("api_key")
    same_url = options.get("api_url", "") == ANYMAIL.get(f"{provider.upper()}_API_URL", "")
    return key == env_str("EMAIL_API_KEY") and same_url


if EMAIL_FAILOVER_PROVIDER:
    if EMAIL_PROVIDER in {"outbox", "console"}:
        raise ImproperlyConfigured(
            f"EMAIL_FAILOVER_PROVIDER is set but EMAIL_PROVIDER={EMAIL_PROVIDER} keeps mail "
            "here instead of sending it: set EMAIL_PROVIDER to your main provider first"
        )
    EMAIL_FAILOVER_BACKEND = _PROVIDERS[EMAIL_FAILOVER_PROVIDER]
    EMAIL_FAILOVER_OPTIONS = _failover_options(EMAIL_FAILOVER_PROVIDER)
    if _same_account(EMAIL_FAILOVER_PROVIDER, EMAIL_FAILOVER_OPTIONS):
        raise ImproperlyConfigured(
            f"EMAIL_FAILOVER_PROVIDER={EMAIL_FAILOVER_PROVIDER} with the same credentials "
            f"as EMAIL_PROVIDER={EMAIL_PROVIDER} is the same account, which fails when the "
            "primary fails: give it its own EMAIL_FAILOVER_* credentials, or another provider"
        )
else:
    EMAIL_FAILOVER_BACKEND = ""
    EMAIL_FAILOVER_OPTIONS = {}

# Provider webhooks (bounces, complaints, opens) at /anymail/<provider>/tracking/, only
# for the providers we send through, the failover's too (config.webhooks): basic-auth
# credentials "user:password" you put in the webhook URL at the provider, and Mailgun's
# own signing key, which it checks instead. A mounted endpoint without them accepts
# forged bounces and complaints from anyone, so production refuses to start
# (config/checks.py warns under DEBUG).
WEBHOOK_PROVIDERS = tracking_providers(EMAIL_PROVIDER, EMAIL_FAILOVER_PROVIDER)
if env_str("ANYMAIL_WEBHOOK_SECRET"):
    if ":" not in env_str("ANYMAIL_WEBHOOK_SECRET"):
        raise ImproperlyConfigured("ANYMAIL_WEBHOOK_SECRET must be <user>:<password>")
    ANYMAIL["WEBHOOK_SECRET"] = env_str("ANYMAIL_WEBHOOK_SECRET")
if env_str("MAILGUN_WEBHOOK_SIGNING_KEY"):
    ANYMAIL["MAILGUN_WEBHOOK_SIGNING_KEY"] = env_str("MAILGUN_WEBHOOK_SIGNING_KEY")
if not DEBUG:
    for _provider, _variable in missing_credentials(WEBHOOK_PROVIDERS, ANYMAIL):
        raise ImproperlyConfigured(
            f"{credentials_message(_provider, _variable)} {credentials_hint(_variable)}"
        )
if EMAIL_PROVIDER == "mailjet" and not ANYMAIL.get("MAILJET_SECRET_KEY"):
    raise ImproperlyConfigured("EMAIL_PROVIDER=mailjet needs EMAIL_API_SECRET as well")

# /healthz answers anyone ok/down; its detail (each part, signups waiting) needs a staff
# login or "Authorization: Bearer <HEALTHZ_TOKEN>" (config.health).
HEALTHZ_TOKEN = env_str("HEALTHZ_TOKEN")

# --- Auth, i18n, static ---------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LANGUAGE_CODE = "en-us"
TIME_ZONE = env_str("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
STATIC_ROOT.mkdir(exist_ok=True)  # whitenoise warns at start-up when it is missing
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "django.contrib.staticfiles.storage.StaticFilesStorage"
            if DEBUG
            else "whitenoise.storage.CompressedManifestStaticFilesStorage"
        )
    },
}
MEDIA_ROOT = VAR_DIR / "media"

CRISPY_ALLOWED_TEMPLATE_PACKS = "bootstrap5"
CRISPY_TEMPLATE_PACK = "bootstrap5"

# --- Security ------------------------------------------------------------------
# Behind a TLS-terminating proxy set SECURE_PROXY_SSL_HEADER via SECURE_PROXY=1.
if env_bool("SECURE_PROXY", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
_https = SITE_URL.startswith("https://")
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", _https and not DEBUG)
SESSION_COOKIE_SECURE = _https
CSRF_COOKIE_SECURE = _https
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000 if _https and not DEBUG else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", True)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("DATA_UPLOAD_MAX_MEMORY_SIZE", 5 * 1024 * 1024, minimum=1024)

# --- Stillhere --------------------------------------------------------------------
# Demo pages (/demo/shop/) that show a signup form embedded in a shop page.
STILLHERE_DEMO = env_bool("STILLHERE_DEMO", DEBUG)

# Signup forms and double opt-in.
PHONE_DEFAULT_REGION = env_str("PHONE_DEFAULT_REGION", "US").upper()
CONFIRMATION_RESEND_SECONDS = env_int("CONFIRMATION_RESEND_SECONDS", 600, minimum=0)
CONFIRMATION_MAX_AGE_DAYS = env_int("CONFIRMATION_MAX_AGE_DAYS", 7, minimum=1)
# Each web process queues the confirmation-sending task at most once per this many
# seconds, delayed by twice that; 0 queues it after every signup, at once.
CONFIRMATION_BATCH_SECONDS = env_float("CONFIRMATION_BATCH_SECONDS", 1.0, minimum=0)
# Rates ("N/s", "N/m", "N/h", "N/5m"), counted in the cache (Redis in production).
SIGNUP_RATE_PER_IP = env_rate("SIGNUP_RATE_PER_IP", "10/m")
SIGNUP_RATE_PER_FORM = env_rate("SIGNUP_RATE_PER_FORM", "600/m")
# A form submitted sooner than this after it was rendered was filled by a bot.
SIGNUP_MIN_SECONDS = env_float("SIGNUP_MIN_SECONDS", 2.0, minimum=0)
# A rendered form's stamp is good for this long; older submits are asked to reload.
SIGNUP_STAMP_MAX_AGE = env_int("SIGNUP_STAMP_MAX_AGE", 86400, minimum=60)
# With a Redis that keeps its data, a signup is answered once it is in Redis's signup
# buffer, and a worker moves it into the database within SIGNUP_BUFFER_SECONDS
# (audience.buffer). "auto" buffers only while that Redis reports `appendonly yes` (asked
# every SIGNUP_BUFFER_CHECK_SECONDS): a Redis that restarts without its data would lose
# every signup waiting in it. "force" buffers whatever Redis reports (check --deploy
# warns). Off, or auto without persistence: each signup is written before it is answered.
_SIGNUP_BUFFER_MODES = {"auto": "auto", "on": "auto", "1": "auto", "true": "auto",
                        "yes": "auto", "force": "force", "off": "", "0": "", "false": "",
                        "no": "", "": ""}  # fmt: skip
SIGNUP_BUFFER = (
    _SIGNUP_BUFFER_MODES[env_choice("SIGNUP_BUFFER", list(_SIGNUP_BUFFER_MODES), "auto")]
    if REDIS_URL
    else ""
)
SIGNUP_BUFFER_CHECK_SECONDS = env_float("SIGNUP_BUFFER_CHECK_SECONDS", 30, minimum=0)
SIGNUP_BUFFER_SECONDS = env_float("SIGNUP_BUFFER_SECONDS", 0.5, minimum=0)
SIGNUP_MAX_BYTES = env_int("SIGNUP_MAX_BYTES", 16 * 1024, minimum=1024)
# Behind a proxy, the header that carries the visitor's address (e.g. HTTP_X_REAL_IP),
# used for rate limits and consent records. Only set it if the proxy overwrites it.
CLIENT_IP_HEADER = env_str("CLIENT_IP_HEADER", "REMOTE_ADDR")

# Largest file the contact import accepts (admin upload and manage.py import_contacts).
IMPORT_MAX_BYTES = env_int("IMPORT_MAX_BYTES", 256 * 1024 * 1024, minimum=1024)
# An XLSX is a zip: the most its parts may unpack to, checked from the zip's directory
# before anything is unpacked (a 4 MB file can claim gigabytes); 1/32 of it for the parts
# held in memory (shared strings, styles), the sheet itself being streamed.
IMPORT_MAX_UNCOMPRESSED_BYTES = env_int(
    "IMPORT_MAX_UNCOMPRESSED_BYTES", 2 * 1024 * 1024 * 1024, minimum=1024 * 1024
)
# An import that gives no sign of life for this long lost its worker and is resumed.
IMPORT_STALL_SECONDS = env_int("IMPORT_STALL_SECONDS", 300, minimum=2)

# --- REST API (/api/v1; config.api, config.api_access) ------------------------------
# Calls per token (N/s, N/m, N/h, N/5m), counted in the cache (Redis in production).
API_RATE = env_rate("API_RATE", "600/m")
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["config.api_access.BearerTokenAuthentication"],
    # Each endpoint names the token flag it needs; one that forgot still needs a token.
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_THROTTLE_CLASSES": ["config.api_access.TokenRateThrottle"],
    # JSON in and out only: no browsable API, no form posts (nor their CSRF questions).
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "config.api_errors.exception_handler",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Stillhere API",
    "DESCRIPTION": (
        "Contacts, tags and campaigns of one Stillhere. Authenticate with an API token "
        "made in the admin: Authorization: Bearer <token>. Errors are JSON: 400 names "
        'the fields ({"email": ["…"]}), 401 a missing or bad token, 403 a token '
        "without the permission, 429 too many calls (see Retry-After)."
    ),
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    # Request and response shapes apart: a read-only field (id) is not asked for.
    "COMPONENT_SPLIT_REQUEST": True,
    "SCHEMA_PATH_PREFIX": "/api/v1",
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "config.api_errors.error_responses",
    ],
}

if PHONE_DEFAULT_REGION not in phonenumbers.SUPPORTED_REGIONS:
    raise ImproperlyConfigured(
        f"PHONE_DEFAULT_REGION must be a two-letter region code like US or GB, "
        f"got {PHONE_DEFAULT_REGION!r}"
    )

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    # Unsubscribe, preferences and confirm tokens never reach a log line (config.logging);
    # on the loggers that write request paths, so every handler gets the redacted line.
    "filters": {"redact_tokens": {"()": "config.logging.RedactTokens"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO").upper()},
    "loggers": {
        "django.db.backends": {"level": "INFO"},
        "django.request": {"filters": ["redact_tokens"]},
        "django.server": {
            "handlers": ["console"],
            "level": "INFO",
            "propagate": False,
            "filters": ["redact_tokens"],
        },
    },
}
