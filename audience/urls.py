from django.urls import path

from audience import views
from audience.integrations.receiving import store_webhook

app_name = "audience"

# Included first in config/urls.py: no pattern here may match the admin's, healthz's or
# anymail's paths (no catch-all).
urlpatterns = [
    path("f/<slug:key>/submit", views.signup_submit, name="signup-submit"),  # the busiest
    path("f/<slug:key>/", views.signup_page, name="signup-page"),
    path("f/<slug:key>/frame/", views.signup_frame, name="signup-frame"),
    path("f/<slug:key>/embed.js", views.signup_script, name="signup-script"),
    path("f/<slug:key>/thanks/", views.signup_thanks, name="signup-thanks"),
    path("confirm/<str:token>/", views.confirm, name="confirm"),
    path("u/<str:token>/", views.unsubscribe, name="unsubscribe"),
    path("p/<str:token>/", views.preferences, name="preferences"),
    path("demo/shop/", views.demo_shop, name="demo-shop"),
    # A connected store's customer webhooks (audience.integrations).
    path("integrations/<str:kind>/<str:key>/", store_webhook, name="store-webhook"),
]
