from django.contrib import admin
from django.urls import include, path

from config.health import healthz

admin.site.site_header = "Stillhere"
admin.site.site_title = "Stillhere"
admin.site.index_title = "Your audience, your list"

urlpatterns = [
    # The public endpoints first: a signup surge is matched before the admin is tried.
    path("", include("audience.urls")),
    path("admin/", admin.site.urls),
    path("healthz", healthz, name="healthz"),
    # Provider tracking webhooks; campaigns.feedback handles what they report.
    path("anymail/", include("anymail.urls")),
]
