"""System checks of the project's settings (registered in config.apps.StillhereConfig)."""

from __future__ import annotations

from django.conf import settings
from django.core import checks

from config.webhooks import credentials_hint, credentials_message, missing_credentials


@checks.register(checks.Tags.security)
def webhook_credentials(app_configs=None, **kwargs) -> list[checks.CheckMessage]:
    """A mounted tracking webhook without its credentials takes forged bounces and
    complaints from anyone. settings.py refuses to start that way with DEBUG=0; this
    says it under DEBUG=1 too (and in `check --deploy`), before it is deployed."""
    level = checks.Warning if settings.DEBUG else checks.Error
    return [
        level(
            credentials_message(provider, variable),
            hint=credentials_hint(variable),
            obj=f"EMAIL_PROVIDER={provider}",
            id="stillhere.W001" if settings.DEBUG else "stillhere.E001",
        )
        for provider, variable in missing_credentials(settings.WEBHOOK_PROVIDERS, settings.ANYMAIL)
    ]
