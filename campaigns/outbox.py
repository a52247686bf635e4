"""The quickstart's email backend: keeps every message in the database for the admin."""

import time

from django.core.mail.backends.base import BaseEmailBackend
from django.db import OperationalError, transaction

# SQLite answers "database table is locked" at once, without its busy timeout, while
# another connection of a shared-cache database reads the table (the test suite's
# in-memory database, with a worker thread sending): a moment later it is free.
LOCKED_ATTEMPTS = 5


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
        for attempt in range(LOCKED_ATTEMPTS):
            try:
                with transaction.atomic():  # a savepoint inside a caller's transaction
                    OutboxMessage.objects.bulk_create(rows)
                break
            except OperationalError as exc:
                if "locked" not in str(exc) or attempt == LOCKED_ATTEMPTS - 1:
                    raise
                time.sleep(0.05 * (attempt + 1))
        return len(rows)
