"""Keep the permanent tokens in unsubscribe, preferences and confirm links out of the
app's own logs (django.request's 404/400 lines, runserver's django.server lines).

Anyone holding one of those paths can unsubscribe the contact or change their
preferences for good, and logs are kept longer and read by more people than mail.
"""

from __future__ import annotations

import logging
import re

# audience/urls.py: confirm/<token>/, u/<token>/, p/<token>/.
_TOKEN_PATH = re.compile(r"(/(?:u|p|confirm)/)[^/\s?#\"']+")


def redact(text: str) -> str:
    return _TOKEN_PATH.sub(r"\1[token]", text)


class RedactTokens(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {
                k: redact(v) if isinstance(v, str) else v for k, v in record.args.items()
            }
        return True
