from django.apps import AppConfig


class AudienceConfig(AppConfig):
    name = "audience"
    verbose_name = "Audience"

    def ready(self) -> None:
        from django.db.models.signals import m2m_changed, post_delete, post_save

        from audience import checks  # noqa: F401 (registers the app's system checks)
        from audience.models import SignupForm, Tag
        from audience.selectors import signup_form_cache_clear

        for signal in (post_save, post_delete):
            signal.connect(signup_form_cache_clear, sender=SignupForm, dispatch_uid=f"sf-{signal}")
            signal.connect(signup_form_cache_clear, sender=Tag, dispatch_uid=f"tag-{signal}")
        m2m_changed.connect(
            signup_form_cache_clear, sender=SignupForm.tags.through, dispatch_uid="sf-tags"
        )
