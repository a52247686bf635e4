"""Mount provider tracking webhooks in a test, as settings.py and config/urls.py would for
an EMAIL_PROVIDER (the URL conf is built once, from settings, at import)."""

from config.urls import build_urlpatterns
from config.webhooks import tracking_providers


def mount_tracking(settings, *providers: str) -> None:
    """Through pytest-django's ``settings`` fixture, so both are put back afterwards;
    Django clears its URL caches whenever ROOT_URLCONF changes."""
    settings.WEBHOOK_PROVIDERS = tracking_providers(*providers)
    settings.ROOT_URLCONF = type(
        "urls", (), {"urlpatterns": build_urlpatterns(settings.WEBHOOK_PROVIDERS)}
    )
