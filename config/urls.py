from django.contrib import admin
from django.urls import include, path

from config.health import healthz

admin.site.site_header = "Stillhere"
admin.site.site_title = "Stillhere"
admin.site.index_title = "Your audience, your list"

urlpatterns = [
    path("admin/", admin.site.urls),
    path("healthz", healthz, name="healthz"),
    # Provider tracking webhooks; campaigns.feedback handles what they report.
    path("anymail/", include("anymail.urls")),
    path("", include("audience.urls")),
]
