"""The app's own logs never hold an unsubscribe, preferences or confirm token."""

import logging

import pytest

pytestmark = pytest.mark.django_db

TOKEN = "Zm9yZ2V0LW1lLW5vdA:1tXyZ:permanent-token-value"


@pytest.mark.parametrize("prefix", ["u", "p", "confirm"])
def test_a_request_logged_by_django_leaves_the_token_out(client, caplog, prefix):
    with caplog.at_level(logging.WARNING, logger="django.request"):
        # No such page: django.request logs "Not Found: <path>".
        client.get(f"/{prefix}/{TOKEN}/nothing-here/")
    lines = [record.getMessage() for record in caplog.records if record.name == "django.request"]
    assert lines, "django.request logged nothing"
    assert all(TOKEN not in line for line in lines)
    assert any(f"/{prefix}/[token]/" in line for line in lines)


def test_runserver_lines_leave_the_token_out():
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    logger = logging.getLogger("django.server")
    handler = Keep()
    logger.addHandler(handler)
    try:
        logger.info('"%s" %s %s', f"GET /u/{TOKEN}/ HTTP/1.1", 200, 512)
    finally:
        logger.removeHandler(handler)
    assert seen == ['"GET /u/[token]/ HTTP/1.1" 200 512']
