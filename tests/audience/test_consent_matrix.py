"""One table of consent rules, held against every writer of the audience.

The expected outcomes are written out here by hand, not computed by audience.consent:
each writer (a signup written in its request, the signup buffer's batch write, the bulk
import) must reach exactly these, whatever path it takes inside (PostgreSQL's one-
statement insert for new addresses, the ORM for known ones, COPY for imports).
"""

from __future__ import annotations

import csv
import io
from datetime import timedelta

import pytest
from django.db import transaction
from django.utils import timezone

from audience import importing, services
from audience.models import ConsentEvent, Contact
from audience.tokens import make_token, read_token
from tests.factories import ContactFactory, SignupFormFactory

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("eager_tasks")]

EMAIL = "kim@example.com"
EVIDENCE = services.Evidence(method="form-html", ip="203.0.113.9", user_agent="Bot/1.0")

# status before → (status after, confirmation mail owed, request open after) for a
# signup through a double opt-in form and one through a single opt-in form.
SIGNUP_RULES = {
    None: {True: ("pending", True, True), False: ("subscribed", False, False)},
    "pending": {True: ("pending", True, True), False: ("pending", True, True)},
    "subscribed": {True: ("subscribed", False, False), False: ("subscribed", False, False)},
    "unsubscribed": {True: ("unsubscribed", True, True), False: ("unsubscribed", True, True)},
    "bounced": {True: ("bounced", True, True), False: ("bounced", True, True)},
    "complained": {True: ("complained", False, False), False: ("complained", False, False)},
}


def _direct(form, **fields):
    services.contact_subscribe(form=form, email=EMAIL, evidence=EVIDENCE, **fields)


def _buffered(form, **fields):
    """What the signup buffer's drain does with a batch it read."""
    signup = services.Signup(
        form=form, email=EMAIL, evidence=EVIDENCE, consent_text=form.consent_text,
        double_opt_in=form.double_opt_in, at=timezone.now(), **fields,
    )  # fmt: skip
    with transaction.atomic():
        assert services.contacts_subscribe_batch([signup]) == []


def _deferred(form, **fields):
    """The public view's direct write: a known address is applied by a worker."""
    services.contact_subscribe(
        form=form, email=EMAIL, evidence=EVIDENCE, defer_known=True, **fields
    )


SIGNUP_WRITERS = {"direct": _direct, "direct-deferred": _deferred, "buffer": _buffered}


def _existing(status):
    if status is None:
        return None
    contact = ContactFactory(email=EMAIL, status=status, first_name="Kim", last_name="")
    # Any earlier mail was long ago: the window is not what is being tested here.
    Contact.objects.filter(pk=contact.pk).update(
        confirmation_sent_at=timezone.now() - timedelta(days=60)
    )
    return contact


@pytest.mark.parametrize("writer", SIGNUP_WRITERS)
@pytest.mark.parametrize("double_opt_in", [True, False], ids=["double", "single"])
@pytest.mark.parametrize("before", list(SIGNUP_RULES), ids=lambda s: s or "new")
def test_signup_rules_hold_in_every_writer(
    writer, double_opt_in, before, django_capture_on_commit_callbacks, mailoutbox
):
    _existing(before)
    form = SignupFormFactory(double_opt_in=double_opt_in)
    write = SIGNUP_WRITERS[writer]
    with django_capture_on_commit_callbacks(execute=True):
        write(form, first_name="Mallory", last_name="Forger")
    status, mailed, request_open = SIGNUP_RULES[before][double_opt_in]

    contact = Contact.objects.get(email=EMAIL)
    assert contact.status == status
    assert (contact.optin_requested_at is not None) == request_open
    assert len(mailoutbox) == (1 if mailed else 0)
    if before is not None:
        # A form anyone can fill in never rewrites (or fills in) what the contact gave.
        assert (contact.first_name, contact.last_name) == ("Kim", "")
    event = contact.consent_events.get(kind=ConsentEvent.Kind.SIGNUP)
    assert (event.status_before, event.status_after) == (before or "", status)
    assert (event.ip, event.signup_form_id) == ("203.0.113.9", form.pk)

    # The same address again, at once: one event and one mail per window, not per request.
    with django_capture_on_commit_callbacks(execute=True):
        write(form)
    assert contact.consent_events.filter(kind=ConsentEvent.Kind.SIGNUP).count() == 1
    assert len(mailoutbox) == (1 if mailed else 0)
    contact.refresh_from_db()
    assert contact.status == status

    if mailed:
        # The mail's link confirms the request it was issued for, and nothing else.
        token = make_token("confirm", contact)
        assert read_token("confirm", token) == contact
        assert token.split(":")[0] in mailoutbox[0].body


def test_a_bounced_address_is_asked_at_most_once_in_30_days(
    django_capture_on_commit_callbacks, mailoutbox, settings
):
    settings.CONFIRMATION_RESEND_SECONDS = 1
    contact = ContactFactory(email=EMAIL, status="bounced")
    form = SignupFormFactory()
    with django_capture_on_commit_callbacks(execute=True):
        _direct(form)
    assert len(mailoutbox) == 1
    # Past the resend window, but not past 30 days: no second mail to a bouncing address.
    Contact.objects.filter(pk=contact.pk).update(
        confirmation_sent_at=timezone.now() - timedelta(days=29)
    )
    with django_capture_on_commit_callbacks(execute=True):
        _direct(form)
    assert len(mailoutbox) == 1
    Contact.objects.filter(pk=contact.pk).update(
        confirmation_sent_at=timezone.now() - timedelta(days=31)
    )
    with django_capture_on_commit_callbacks(execute=True):
        _direct(form)
    assert len(mailoutbox) == 2


# --- the import -----------------------------------------------------------------------

# (status before, the row's consent column, the import's option) → status after, mail owed
IMPORT_RULES = [
    (None, "", "pending", "pending", True),
    (None, "", "none", "pending", False),
    (None, "yes", "consent", "subscribed", False),
    (None, "", "consent", "pending", False),  # no evidence in the row: not subscribed
    (None, "no", "pending", "pending", False),  # declined: never asked again
    (None, "unsubscribed", "consent", "unsubscribed", False),
    ("pending", "yes", "consent", "pending", False),
    ("pending", "unsubscribed", "consent", "unsubscribed", False),
    ("subscribed", "unsubscribed", "consent", "unsubscribed", False),
    ("unsubscribed", "yes", "consent", "unsubscribed", False),
    ("bounced", "yes", "pending", "bounced", False),
    ("complained", "yes", "consent", "complained", False),
    # The default: the file's own consent column (here Shopify's) decides for new rows,
    # and nothing it says raises a known contact's status.
    (None, "yes", "file", "subscribed", False),
    (None, "", "file", "pending", False),
    (None, "no", "file", "pending", False),
    (None, "unsubscribed", "file", "unsubscribed", False),
    ("pending", "yes", "file", "pending", False),
    ("subscribed", "unsubscribed", "file", "unsubscribed", False),
    ("unsubscribed", "yes", "file", "unsubscribed", False),
    ("bounced", "yes", "file", "bounced", False),
    ("complained", "yes", "file", "complained", False),
]


@pytest.fixture
def media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"


def _import(consent_value: str, new_status: str):
    text = io.StringIO()
    rows = [["Email", "First Name", "Accepts Email Marketing"], [EMAIL, "Mallory", consent_value]]
    csv.writer(text, lineterminator="\r\n").writerows(rows)
    data = text.getvalue().encode()
    job = importing.job_create(f=io.BytesIO(data), name="contacts.csv", size=len(data))
    job = importing.job_start(job=job, options={"new_status": new_status}, dispatch=False)
    job = importing.run_job(job.pk)
    assert job.status == job.Status.DONE, job.error


@pytest.mark.usefixtures("media")
@pytest.mark.parametrize(("before", "consent_value", "option", "after", "mailed"), IMPORT_RULES)
def test_import_rules(
    before, consent_value, option, after, mailed, django_capture_on_commit_callbacks, mailoutbox
):
    existing = _existing(before)
    old_link = make_token("confirm", existing) if before == "pending" else None
    with django_capture_on_commit_callbacks(execute=True):
        _import(consent_value, option)
    contact = Contact.objects.get(email=EMAIL)
    assert contact.status == after
    assert len(mailoutbox) == (1 if mailed else 0)
    if before is not None:
        assert contact.first_name == "Kim"  # an import fills gaps, never overwrites
    if before != after:
        event = contact.consent_events.get(kind=ConsentEvent.Kind.IMPORT)
        assert (event.status_before, event.status_after) == (before or "", after)
    else:
        assert not contact.consent_events.filter(kind=ConsentEvent.Kind.IMPORT).exists()
    if old_link is not None and after != "pending":
        # The file says this person left: the link of their open request stops working.
        assert read_token("confirm", old_link) is None
