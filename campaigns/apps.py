from dataclasses import fields

from django.apps import AppConfig


def _sender_brand():
    """The sender settings as the audience's own mail reads them (audience.branding)."""
    from audience.branding import Brand
    from campaigns.models import SenderSettings

    sender = SenderSettings.load()
    return Brand(**{f.name: getattr(sender, f.name) or "" for f in fields(Brand)})


class CampaignsConfig(AppConfig):
    name = "campaigns"
    verbose_name = "Campaigns"

    def ready(self) -> None:
        # feedback connects the receiver for anymail's tracking webhooks.
        from audience import branding, welcome
        from campaigns import feedback, segment_rules  # noqa: F401
        from campaigns.tasks import send_due_welcomes

        # The audience's segment vocabulary gains the rules that read Delivery rows.
        segment_rules.register()
        # The confirmation mail comes from the sender the owner set here; the audience
        # cannot import campaigns, so it is handed the way to read it.
        branding.brand_source_set(_sender_brand)
        # The welcome email is owed by the audience and sent here, in the campaign layout.
        welcome.welcome_sender_set(send_due_welcomes)
