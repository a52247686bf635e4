"""Who sends, for the commands that send: `--as <username>`, checked like the admin checks."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.core.management.base import CommandError

SEND_PERMISSION = "campaigns.send_campaign"

AS_HELP = (
    "Required: the username of the person sending. They must be an active user with the "
    "'Can send campaigns' permission (or a superuser), and the send is recorded as theirs. "
    "A shell can reach the database anyway, so this is not a lock; it is so that every "
    "campaign that goes out names someone who was allowed to send it, as the admin's do, "
    "instead of an anonymous 'shell'. No such user yet? `manage.py createsuperuser`."
)


def add_as_argument(parser) -> None:
    # Checked in acting_user rather than by argparse, so a missing --as says why it is needed.
    parser.add_argument("--as", dest="acting_user", metavar="USERNAME", default="", help=AS_HELP)


def acting_user(username: str):
    """The user named `username` if they may send campaigns, else a CommandError saying why."""
    user_model = get_user_model()
    name = (username or "").strip()
    if not name:
        raise CommandError(f"Say who is sending with --as USERNAME; nothing sent. {AS_HELP}")
    user = user_model._default_manager.filter(**{user_model.USERNAME_FIELD: name}).first()
    if user is None or not user.is_active:
        raise CommandError(f"There is no active user {name!r}; nothing sent. {AS_HELP}")
    if not user.has_perm(SEND_PERMISSION):
        raise CommandError(
            f"{name!r} may not send campaigns; nothing sent. Give them the 'Can send "
            "campaigns' permission in the admin (Users), or send as someone who has it."
        )
    return user
