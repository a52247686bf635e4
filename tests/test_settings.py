import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from config.env import env_bool, env_int, parse_database_url, parse_site_url

ROOT = Path(__file__).resolve().parent.parent


def test_database_url_parses_postgres():
    conf = parse_database_url("postgres://shop:s%40cret@db.internal:5433/stillhere", base_dir=ROOT)
    assert conf["ENGINE"] == "django.db.backends.postgresql"
    assert (conf["NAME"], conf["USER"], conf["PASSWORD"]) == ("stillhere", "shop", "s@cret")
    assert (conf["HOST"], conf["PORT"]) == ("db.internal", "5433")


def test_database_url_relative_sqlite_lives_in_the_project():
    conf = parse_database_url("sqlite:///var/x.sqlite3", base_dir=ROOT)
    assert conf["NAME"] == ROOT / "var" / "x.sqlite3"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://root@localhost/db", "unsupported scheme 'mysql'"),
        ("postgres://user@localhost:5432/", "must name a database"),
        ("postgres://user@localhost:notaport/db", "malformed"),
        ("sqlite://", "sqlite:///var/db.sqlite3"),
        ("just-a-path.sqlite3", "unsupported scheme"),
    ],
)
def test_malformed_database_url_is_refused_with_a_clear_message(url, message):
    with pytest.raises(ImproperlyConfigured, match="DATABASE_URL") as exc:
        parse_database_url(url, base_dir=ROOT)
    assert message in str(exc.value)


def _django_setup(env: dict) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "DEBUG"}}
    full.update(env)
    return subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        cwd=ROOT,
        env={**full, "DJANGO_SETTINGS_MODULE": "config.settings"},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_start_up_fails_on_malformed_database_url():
    result = _django_setup({"DATABASE_URL": "postgres//oops"})
    assert result.returncode != 0
    assert "ImproperlyConfigured: DATABASE_URL has an unsupported scheme" in result.stderr


def test_production_refuses_to_start_without_secret_key():
    result = _django_setup({"SECRET_KEY": "", "DEBUG": "0"})
    assert result.returncode != 0
    assert "SECRET_KEY is not set" in result.stderr


def test_check_deploy_is_clean_with_production_settings(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in {"DEBUG", "SIGNUP_MIN_SECONDS"}} | {
        "SECRET_KEY": "x" * 20 + "production-secret-key-value-0123456789abcdef",
        "SITE_URL": "https://news.example.com",
        "ALLOWED_HOSTS": "news.example.com",
        "REDIS_URL": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
        "STILLHERE_VAR_DIR": str(tmp_path),
    }
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_collectstatic_works_with_the_production_storage(tmp_path):
    """The deployment's `collectstatic` (README) hashes and compresses every static file
    and rewrites what they reference; a reference to a missing file stops it."""
    env = {k: v for k, v in os.environ.items() if k != "DEBUG"} | {
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "SECRET_KEY": "x" * 20 + "production-secret-key-value-0123456789abcdef",
        "STILLHERE_VAR_DIR": str(tmp_path),
    }
    result = subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    manifest = json.loads((tmp_path / "static" / "staticfiles.json").read_text())
    assert "vendor/chartjs/chart.umd.min.js" in manifest["paths"]


def test_bad_boolean_and_integer_are_refused(monkeypatch):
    monkeypatch.setenv("DEBUG", "maybe")
    with pytest.raises(ImproperlyConfigured, match="DEBUG must be a boolean"):
        env_bool("DEBUG")
    monkeypatch.setenv("EMAIL_PORT", "25x")
    with pytest.raises(ImproperlyConfigured, match="EMAIL_PORT must be an integer"):
        env_int("EMAIL_PORT", 587)


def test_site_url_must_be_absolute():
    with pytest.raises(ImproperlyConfigured, match="SITE_URL must be an absolute"):
        parse_site_url("SITE_URL", "news.example.com")
    assert parse_site_url("SITE_URL", "https://news.example.com/") == "https://news.example.com"


def test_bad_rate_is_refused(monkeypatch):
    from config.env import env_rate

    monkeypatch.setenv("SIGNUP_RATE_PER_IP", "ten per minute")
    with pytest.raises(ImproperlyConfigured, match="SIGNUP_RATE_PER_IP must be a rate"):
        env_rate("SIGNUP_RATE_PER_IP", "10/m")
    monkeypatch.setenv("SIGNUP_RATE_PER_IP", "100/5m")
    assert env_rate("SIGNUP_RATE_PER_IP", "10/m") == "100/5m"
