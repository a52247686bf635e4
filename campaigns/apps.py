from django.apps import AppConfig


class CampaignsConfig(AppConfig):
    name = "campaigns"
    verbose_name = "Campaigns"

    def ready(self) -> None:
        # feedback connects the receiver for anymail's tracking webhooks.
        from campaigns import feedback, segment_rules  # noqa: F401

        # The audience's segment vocabulary gains the rules that read Delivery rows.
        segment_rules.register()
