"""The quickstart's email backend: keeps every message in the database for the admin."""

from django.core.mail.backends.base import BaseEmailBackend


class OutboxEmailBackend(BaseEmailBackend):
    def send_messages(self, email_messages) -> int:
        from campaigns.models import OutboxMessage

        rows = []
        for message in email_messages:
            html = ""
            for content, mimetype in getattr(message, "alternatives", []):
                if mimetype == "text/html":
                    html = content
            rows.append(
                OutboxMessage(
                    from_email=message.from_email,
                    to="\n".join(message.recipients()),
                    subject=message.subject,
                    text_body=message.body,
                    html_body=html,
                    headers={str(k): str(v) for k, v in message.extra_headers.items()},
                )
            )
        OutboxMessage.objects.bulk_create(rows)
        return len(rows)
