from django.apps import AppConfig


class CampaignsConfig(AppConfig):
    name = "campaigns"
    verbose_name = "Campaigns"

    def ready(self) -> None:
        # Connects the receiver for anymail's tracking webhooks.
        from campaigns import feedback  # noqa: F401
