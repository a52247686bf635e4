from django.conf import settings
from django.contrib import admin
from django.urls import include, path

from config import api
from config.health import healthz
from config.home import home
from config.webhooks import tracking_urlpatterns

admin.site.site_header = "Stillhere"
admin.site.site_title = "Stillhere"
admin.site.index_title = "Your audience, your list"


def build_urlpatterns(webhook_providers: list[str]) -> list:
    return [
        # The public endpoints first: a signup surge is matched before the admin is tried.
        path("", include("audience.urls")),
        path("admin/", admin.site.urls),
        path("healthz", healthz, name="healthz"),
        path("api/v1/", include((api.urlpatterns, "api"))),
        path("", home, name="home"),  # the admin's "View site"
        # Provider tracking webhooks, only those of the providers we send through
        # (config.webhooks); campaigns.feedback handles what they report.
        path("anymail/", include((tracking_urlpatterns(webhook_providers), "anymail"))),
    ]


urlpatterns = build_urlpatterns(settings.WEBHOOK_PROVIDERS)
