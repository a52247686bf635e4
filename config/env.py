"""Small helpers that read settings from the environment and refuse bad values.

Each helper raises ``ImproperlyConfigured`` naming the variable and what was wrong,
so a typo in a deployment fails at start-up with a message instead of at 3 a.m.
with a stack trace.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

from django.core.exceptions import ImproperlyConfigured

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default).strip()


def env_bool(name: str, default: bool = False) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (1/0, true/false, yes/no), got {raw!r}")


def env_int(name: str, default: int, *, minimum: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, got {raw!r}") from None
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, got {value}")
    return value


def env_float(name: str, default: float, *, minimum: float | None = None) -> float:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw.strip())
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a number, got {raw!r}") from None
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, got {value}")
    return value


def env_list(name: str, default: list[str] | None = None) -> list[str]:
    raw = os.environ.get(name)
    if raw is None:
        return list(default or [])
    return [item.strip() for item in raw.split(",") if item.strip()]


def env_choice(name: str, choices: list[str], default: str) -> str:
    value = env_str(name, default).lower()
    if value not in choices:
        raise ImproperlyConfigured(f"{name} must be one of {', '.join(choices)}; got {value!r}")
    return value


def parse_site_url(name: str, raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        raise ImproperlyConfigured(
            f"{name} must be an absolute http(s) URL such as https://news.example.com, got {raw!r}"
        )
    if parts.query or parts.fragment:
        raise ImproperlyConfigured(f"{name} must not carry a query or fragment, got {raw!r}")
    return raw.rstrip("/")


def parse_database_url(url: str, *, base_dir: Path, name: str = "DATABASE_URL") -> dict:
    """Turn ``sqlite:///var/db.sqlite3`` or ``postgres://u:p@host:5432/db`` into DATABASES[...].

    A relative SQLite path is taken relative to the project directory.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} is malformed ({exc}): {url!r}") from None
    scheme = parts.scheme.lower()

    if scheme == "sqlite":
        # sqlite:///relative/path or sqlite:////absolute/path
        raw_path = unquote(parts.path)
        if parts.netloc or not raw_path or raw_path == "/":
            raise ImproperlyConfigured(
                f"{name} for SQLite must look like sqlite:///var/db.sqlite3 "
                f"(or sqlite:////absolute/path.sqlite3), got {url!r}"
            )
        path = raw_path[1:]
        db_path = Path(path) if path.startswith("/") else base_dir / path
        return {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": db_path,
            "OPTIONS": {
                # The web server and the worker write at the same time on the quickstart:
                # WAL lets readers go on during a write, IMMEDIATE takes the write lock at
                # BEGIN so two writers queue (up to `timeout`) instead of deadlocking.
                "transaction_mode": "IMMEDIATE",
                "timeout": 20,
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            },
        }

    if scheme in {"postgres", "postgresql", "pgsql"}:
        db_name = unquote(parts.path.lstrip("/"))
        if not db_name or "/" in db_name:
            raise ImproperlyConfigured(
                f"{name} must name a database, as in postgres://user:pass@host:5432/stillhere; "
                f"got {url!r}"
            )
        if not parts.hostname:
            raise ImproperlyConfigured(f"{name} must name a host, got {url!r}")
        options = dict(parse_qsl(parts.query))
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": db_name,
            "USER": unquote(parts.username or ""),
            "PASSWORD": unquote(parts.password or ""),
            "HOST": parts.hostname,
            "PORT": str(port or ""),
            "OPTIONS": options,
        }

    raise ImproperlyConfigured(
        f"{name} has an unsupported scheme {parts.scheme!r}: use sqlite:///path or "
        f"postgres://user:pass@host:port/name; got {url!r}"
    )


def parse_redis_url(name: str, raw: str) -> str:
    try:
        parts = urlsplit(raw)
        parts.port  # noqa: B018 (raises ValueError on a bad port)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} is malformed ({exc}): {raw!r}") from None
    if parts.scheme not in {"redis", "rediss"} or not parts.hostname:
        raise ImproperlyConfigured(
            f"{name} must look like redis://host:6379/0 (or rediss:// for TLS), got {raw!r}"
        )
    return raw


_RATE = re.compile(r"^\d+/\d*[smhd]$")


def env_rate(name: str, default: str) -> str:
    """A rate such as 10/m, 600/h or 100/5m."""
    value = env_str(name, default).replace(" ", "")
    if not _RATE.match(value):
        raise ImproperlyConfigured(
            f"{name} must be a rate like 10/m, 600/h or 100/5m; got {value!r}"
        )
    return value
