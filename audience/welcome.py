"""The welcome email a contact is owed when it becomes subscribed (filled by the welcome
work: see WELCOME in the issue notes). Audience services call `welcome_owe` in the same
transaction that subscribes a contact."""

from __future__ import annotations


def welcome_owe(*, contact, signup_form=None, store=None) -> None:
    """`contact` has just become subscribed through `signup_form` or `store` (either may
    be None). Records, in the caller's transaction, that its welcome email is owed if
    the form or store has one; the worker sends it."""
