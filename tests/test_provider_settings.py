"""EMAIL_FAILOVER_PROVIDER and its EMAIL_FAILOVER_* credentials, as settings.py reads
them from the environment, and the connections config.providers opens with them."""

from __future__ import annotations

import os
import runpy
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from config import providers

SETTINGS = Path(__file__).resolve().parent.parent / "config" / "settings.py"
BASE = {
    "SECRET_KEY": "settings-test-secret-key-0123456789abcdefghij",
    "DEBUG": "0",
    "EMAIL_PROVIDER": "mailgun",
    "EMAIL_API_KEY": "key-primary",
    "MAILGUN_SENDER_DOMAIN": "mg.shop.example",
    "MAILGUN_WEBHOOK_SIGNING_KEY": "signing-key",
    "ANYMAIL_WEBHOOK_SECRET": "user:password",
}


def _load(monkeypatch, tmp_path, **env) -> dict:
    """settings.py run afresh on `env` (the live settings are left alone)."""
    for name in list(os.environ):
        if name.startswith(("EMAIL_", "MAILGUN_", "ANYMAIL_", "AWS_")) or name == "DEBUG":
            monkeypatch.delenv(name)
    for name, value in {**BASE, "STILLHERE_VAR_DIR": str(tmp_path), **env}.items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    return runpy.run_path(str(SETTINGS))


def test_without_a_failover_the_settings_are_as_before(monkeypatch, tmp_path):
    conf = _load(monkeypatch, tmp_path)
    assert conf["EMAIL_FAILOVER_PROVIDER"] == conf["EMAIL_FAILOVER_BACKEND"] == ""
    assert conf["WEBHOOK_PROVIDERS"] == ["mailgun"]
    assert conf["ANYMAIL"]["MAILGUN_API_KEY"] == "key-primary"


def test_a_failover_gets_its_own_credentials_and_its_webhook_is_mounted(monkeypatch, tmp_path):
    conf = _load(
        monkeypatch,
        tmp_path,
        EMAIL_FAILOVER_PROVIDER="postmark",
        EMAIL_FAILOVER_API_KEY="pm-token",
        EMAIL_FAILOVER_API_URL="http://127.0.0.1:9/",
    )
    assert conf["EMAIL_FAILOVER_BACKEND"] == "anymail.backends.postmark.EmailBackend"
    assert conf["EMAIL_FAILOVER_OPTIONS"] == {
        "server_token": "pm-token",
        "api_url": "http://127.0.0.1:9/",
        "requests_timeout": 20,
    }
    assert conf["EMAIL_FAILOVER_AFTER_CHUNKS"] == 2
    assert conf["WEBHOOK_PROVIDERS"] == ["mailgun", "postmark"]
    # The primary's settings are untouched: its credentials stay where they were.
    assert "POSTMARK_SERVER_TOKEN" not in conf["ANYMAIL"]


def test_production_refuses_a_failover_webhook_without_its_credentials(monkeypatch, tmp_path):
    with pytest.raises(ImproperlyConfigured) as refused:
        _load(
            monkeypatch,
            tmp_path,
            ANYMAIL_WEBHOOK_SECRET=None,
            EMAIL_FAILOVER_PROVIDER="postmark",
            EMAIL_FAILOVER_API_KEY="pm-token",
        )
    assert "ANYMAIL_WEBHOOK_SECRET is not set" in str(refused.value)
    assert "/anymail/postmark/tracking/" in str(refused.value)
    assert "EMAIL_FAILOVER_PROVIDER" in str(refused.value)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"EMAIL_FAILOVER_PROVIDER": "postmark"}, "needs EMAIL_FAILOVER_API_KEY"),
        (
            {"EMAIL_FAILOVER_PROVIDER": "mailgun", "EMAIL_FAILOVER_API_KEY": "key-primary"},
            "with the same credentials as EMAIL_PROVIDER=mailgun",
        ),
        ({"EMAIL_FAILOVER_PROVIDER": "smtp"}, "needs EMAIL_FAILOVER_HOST"),
        (
            {"EMAIL_FAILOVER_PROVIDER": "mailjet", "EMAIL_FAILOVER_API_KEY": "k"},
            "needs EMAIL_FAILOVER_API_SECRET",
        ),
        (
            {"EMAIL_PROVIDER": "outbox", "EMAIL_FAILOVER_PROVIDER": "postmark"},
            "EMAIL_PROVIDER=outbox keeps mail here",
        ),
        ({"EMAIL_FAILOVER_PROVIDER": "outbox"}, "EMAIL_FAILOVER_PROVIDER must be one of"),
        (
            {
                "EMAIL_PROVIDER": "smtp",
                "EMAIL_HOST": "relay.example",
                "EMAIL_FAILOVER_PROVIDER": "smtp",
                "EMAIL_FAILOVER_HOST": "relay.example",
            },
            "same credentials",
        ),
    ],
    ids=["no-key", "same-account", "smtp-no-host", "mailjet-no-secret", "no-primary",
         "outbox", "same-relay"],
)  # fmt: skip
def test_bad_failover_settings_are_refused_with_a_clear_error(monkeypatch, tmp_path, env, message):
    with pytest.raises(ImproperlyConfigured, match=message):
        _load(monkeypatch, tmp_path, **env)


def test_a_second_account_of_the_same_provider_keeps_its_own_key_and_domain(
    monkeypatch, tmp_path, settings
):
    """Two Mailgun accounts: the failover backend gets its key, domain and URL as kwargs,
    which anymail reads before settings.ANYMAIL (where the primary's are)."""
    conf = _load(
        monkeypatch,
        tmp_path,
        EMAIL_FAILOVER_PROVIDER="mailgun",
        EMAIL_FAILOVER_API_KEY="key-second",
        EMAIL_FAILOVER_API_URL="https://api.eu.mailgun.net/v3",
    )
    for name in ("ANYMAIL", "EMAIL_PROVIDER", "EMAIL_BACKEND"):
        setattr(settings, name, conf[name])
    for name in ("PROVIDER", "BACKEND", "OPTIONS"):
        setattr(settings, f"EMAIL_FAILOVER_{name}", conf[f"EMAIL_FAILOVER_{name}"])
    primary = providers.connection_for(providers.primary())
    secondary = providers.connection_for(providers.secondary())
    assert (primary.api_key, primary.sender_domain) == ("key-primary", "mg.shop.example")
    assert (secondary.api_key, secondary.sender_domain) == ("key-second", None)
    assert secondary.api_url == "https://api.eu.mailgun.net/v3/"
    assert secondary.timeout == 20


def test_an_smtp_failover_connects_with_its_own_relay(monkeypatch, tmp_path, settings):
    conf = _load(
        monkeypatch,
        tmp_path,
        EMAIL_FAILOVER_PROVIDER="smtp",
        EMAIL_FAILOVER_HOST="backup-relay.example",
        EMAIL_FAILOVER_PORT="465",
        EMAIL_FAILOVER_USER="shop",
        EMAIL_FAILOVER_PASSWORD="pw",
    )
    for name in ("PROVIDER", "BACKEND", "OPTIONS"):
        setattr(settings, f"EMAIL_FAILOVER_{name}", conf[f"EMAIL_FAILOVER_{name}"])
    conn = providers.connection_for(providers.secondary())
    assert (conn.host, conn.port, conn.username, conn.password) == (
        "backup-relay.example",
        465,
        "shop",
        "pw",
    )
    assert (conn.use_ssl, conn.use_tls, conn.timeout) == (True, False, 20)
