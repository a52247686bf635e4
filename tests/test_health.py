import pytest
from django.core.cache import cache

from config.celery import app as celery_app

pytestmark = pytest.mark.django_db


def test_healthz_reports_db_and_broker_ok(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"db": "ok", "broker": "ok"}


def test_healthz_is_503_and_names_the_broker_when_it_is_unreachable(client, monkeypatch):
    # Nothing listens on port 1: the broker is down.
    monkeypatch.setattr(celery_app.conf, "broker_url", "redis://127.0.0.1:1/0")
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json() == {"db": "ok", "broker": "down"}


def test_healthz_counts_the_signups_waiting_in_the_buffer(client, settings):
    if "redis" not in settings.CACHES["default"]["BACKEND"].lower():
        pytest.skip("the signup buffer exists only when the cache is Redis (set REDIS_URL)")
    from audience import intake
    from audience.throttle import _redis_client

    settings.SIGNUP_BUFFER = True
    _redis_client().xadd(cache.make_key(intake.STREAM), {"v": "[]"})
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json()["signups_waiting"] == 1
