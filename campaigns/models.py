from django.db import models


class OutboxMessage(models.Model):
    """A message kept by the quickstart's local outbox backend instead of being sent.

    With no email provider configured, Stillhere "sends" here, and the admin shows each
    message with clickable links, so a newcomer can confirm a double opt-in by hand.
    """

    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    from_email = models.CharField(max_length=500)
    to = models.TextField(help_text="Recipients, one per line.")
    subject = models.CharField(max_length=1000)
    text_body = models.TextField(blank=True)
    html_body = models.TextField(blank=True)
    headers = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = "outbox message"

    def __str__(self) -> str:
        return f"{self.subject} → {self.to.replace(chr(10), ', ')}"
