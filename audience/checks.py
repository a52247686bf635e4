"""System checks of the audience app (registered in AudienceConfig.ready)."""

from __future__ import annotations

from django.conf import settings
from django.core import checks


@checks.register(checks.Tags.security, deploy=True)
def signup_buffer_forced(app_configs=None, **kwargs) -> list[checks.CheckMessage]:
    """SIGNUP_BUFFER=force answers signups once Redis has them, whatever Redis says about
    keeping them: only right for a Redis whose persistence cannot be read but is known."""
    if settings.SIGNUP_BUFFER != "force":
        return []
    return [
        checks.Warning(
            "SIGNUP_BUFFER=force buffers signups in Redis whatever Redis reports about "
            "persistence: a Redis that restarts without its data loses every signup "
            "waiting in it, after each was answered.",
            hint=(
                "Run Redis with appendonly yes and set SIGNUP_BUFFER=auto (the default), "
                "which buffers only while Redis reports it; keep force only for a Redis "
                "known to persist that refuses CONFIG GET and INFO."
            ),
            id="audience.W001",
        )
    ]
