import pytest

from config.celery import app as celery_app

pytestmark = pytest.mark.django_db

TOKEN = "health-token-for-the-uptime-check"


@pytest.fixture(autouse=True)
def _token(settings):
    settings.HEALTHZ_TOKEN = TOKEN


def _bearer(token: str = TOKEN) -> dict:
    return {"HTTP_AUTHORIZATION": f"Bearer {token}"}


def test_healthz_tells_anyone_only_ok(client, settings):
    settings.SIGNUP_BUFFER = "auto"
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    # A wrong token is anyone.
    assert client.get("/healthz", **_bearer("guess")).json() == {"status": "ok"}


def test_healthz_is_503_down_for_anyone_when_the_broker_is_unreachable(client, monkeypatch):
    # Nothing listens on port 1: the broker is down.
    monkeypatch.setattr(celery_app.conf, "broker_url", "redis://127.0.0.1:1/0")
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json() == {"status": "down"}
    detail = client.get("/healthz", **_bearer())
    assert detail.status_code == 503
    assert detail.json() == {"status": "down", "db": "ok", "broker": "down"}


def test_healthz_detail_for_the_token_or_a_staff_user(client, settings, django_user_model):
    settings.SIGNUP_BUFFER = ""
    assert client.get("/healthz", **_bearer()).json() == {
        "status": "ok", "db": "ok", "broker": "ok"}  # fmt: skip
    visitor = django_user_model.objects.create_user("visitor", password="x")
    client.force_login(visitor)
    assert client.get("/healthz").json() == {"status": "ok"}
    client.force_login(django_user_model.objects.create_user("op", password="x", is_staff=True))
    assert client.get("/healthz").json() == {"status": "ok", "db": "ok", "broker": "ok"}


def test_healthz_detail_counts_the_signups_waiting_in_the_buffer(client, settings):
    if "redis" not in settings.CACHES["default"]["BACKEND"].lower():
        pytest.skip("the signup buffer exists only when the cache is Redis (set REDIS_URL)")
    from django.core.cache import cache

    from audience import buffer

    settings.SIGNUP_BUFFER = "auto"
    key = cache.make_key(buffer.STREAM)
    buffer.client().delete(key)
    buffer.client().xadd(key, {"v": "[]"})
    try:
        assert client.get("/healthz").json() == {"status": "ok"}
        assert client.get("/healthz", **_bearer()).json()["signups_waiting"] == 1
    finally:
        buffer.client().delete(key)
