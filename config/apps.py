from django.apps import AppConfig


class StillhereConfig(AppConfig):
    """The project's own app: it has no models, only system checks of its settings."""

    name = "config"
    label = "stillhere"
    verbose_name = "Stillhere"

    def ready(self) -> None:
        from config import checks  # noqa: F401 (registers the project's system checks)
