"""Stillhere's own export imports back losslessly: a move between two installs.

The export is taken, the database emptied (as a fresh install's is), and the file
imported with the options a new owner leaves untouched."""

from __future__ import annotations

import csv
import datetime as dt
import io

import openpyxl
import pytest

from audience import exporting, importing
from audience.models import ConsentEvent, Contact, ImportJob, Tag
from tests.factories import ContactFactory, TagFactory

pytestmark = pytest.mark.django_db

UTC = dt.UTC


@pytest.fixture(autouse=True)
def _media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"


def at(day: int, hour: int = 9) -> dt.datetime:
    return dt.datetime(2025, 3, day, hour, 15, 30, tzinfo=UTC)


def seed() -> None:
    """Every status, with its consent times, tags, sources, phones and attributes."""
    vip, spring = TagFactory(name="VIP"), TagFactory(name="spring; sale | 2025")
    rows = [
        dict(email="sub@example.com", status="subscribed", phone="+15035550201",
             source="form", confirmed_at=at(2), attributes={"city": "Portland", "orders": 3}),
        dict(email="again@example.com", status="subscribed", phone="+4930901820",
             source="admin", confirmed_at=at(9), unsubscribed_at=at(5)),
        dict(email="pend@example.com", status="pending", phone="", source="form"),
        dict(email="unsub@example.com", status="unsubscribed", phone="+442079460958",
             source="import", confirmed_at=at(1), unsubscribed_at=at(4),
             attributes={"import_source": "shopify-2026", "Total Spent": "120.50"}),
        dict(email="bounce@example.com", status="bounced", phone="", source="import",
             confirmed_at=at(1), unsubscribed_at=at(6), attributes={"note": "=1+1"}),
        dict(email="spam@example.com", status="complained", phone="-", source="admin",
             confirmed_at=at(3)),
        dict(email="zoe@example.com", status="subscribed", phone="+33612345678",
             source="import", confirmed_at=at(7), first_name="Zoë", last_name="Ünal",
             attributes={"import_source": "mailchimp", "html": "<b>Tom & Jerry</b>\tx"}),
        dict(email="byhand@example.com", status="subscribed", phone="", source="admin",
             attributes={"vip": True, "sizes": ["S", "M"]}),
    ]  # fmt: skip
    for i, fields in enumerate(rows):
        fields.setdefault("first_name", f"First{i}")
        fields.setdefault("last_name", "=Last" if i == 1 else f"Last{i}")
        if fields["phone"] == "-":
            fields["phone"] = ""
        contact = ContactFactory(created_at=at(1, hour=i), **fields)
        if i % 2 == 0:
            contact.tags.add(vip)
        if i % 3 == 0:
            contact.tags.add(spring)


def snapshot() -> dict[str, tuple]:
    out = {}
    for c in Contact.objects.prefetch_related("tags"):
        out[c.email] = (
            c.first_name, c.last_name, c.phone, c.status, c.source,
            exporting.source_text(c.source, c.attributes),
            c.created_at, c.confirmed_at, c.unsubscribed_at,
            {k: v for k, v in c.attributes.items() if k != "import_source"},
            sorted(t.name for t in c.tags.all()),
        )  # fmt: skip
    return out


def empty_the_database() -> None:
    ConsentEvent.objects.all().delete()
    Contact.objects.all().delete()
    Tag.objects.all().delete()


def import_file(data: bytes, name: str) -> ImportJob:
    job = importing.job_create(f=io.BytesIO(data), name=name, size=len(data))
    assert job.profile == "stillhere"
    job = importing.job_start(job=job, dispatch=False)  # the options as they come
    job = importing.run_job(job.pk)
    assert job.status == "done", job.error
    return job


@pytest.mark.parametrize("fmt", ["csv", "xlsx"])
def test_a_stillhere_export_imports_into_a_fresh_install_as_it_was(fmt):
    seed()
    before = snapshot()
    _, stream = exporting.FORMATS[fmt]
    data = b"".join(stream(Contact.objects.all()))
    empty_the_database()

    job = import_file(data, f"contacts.{fmt}")
    assert job.counts["new"] == len(before) and job.counts.get("invalid", 0) == 0
    assert snapshot() == before

    # Suppressed stays suppressed, pending stays pending, each with its evidence.
    spam = Contact.objects.get(email="spam@example.com")
    event = spam.consent_events.get()
    assert (event.status_after, event.detail["evidence"]["status"]) == ("complained", "complained")
    pend = Contact.objects.get(email="pend@example.com")
    assert (pend.confirmation_due, pend.confirmation_sent_at) == (False, None)
    assert Contact.objects.filter(status="subscribed").count() == 4

    # And a second move from here carries the same file.
    again = b"".join(stream(Contact.objects.all()))
    if fmt == "csv":
        assert again == data


def test_the_csv_export_s_phones_read_back_as_phones_in_a_spreadsheet_and_an_import():
    seed()
    body = b"".join(exporting.stream_csv(Contact.objects.all())).decode("utf-8-sig")
    rows = list(csv.reader(io.StringIO(body)))
    phones = {r[0]: r[3] for r in rows[1:]}
    assert phones["sub@example.com"] == "+15035550201"  # not '+15035550201
    # The formula guard is still there for what could be one.
    assert {r[0]: r[2] for r in rows[1:]}["again@example.com"] == "'=Last"


def test_the_xlsx_export_s_cells_are_text_without_a_guard():
    seed()
    body = b"".join(exporting.stream_xlsx(Contact.objects.all()))
    sheet = openpyxl.load_workbook(io.BytesIO(body), read_only=True).worksheets[0]
    rows = {r[0]: r for r in sheet.iter_rows(values_only=True)}
    assert rows["sub@example.com"][3] == "+15035550201"
    assert rows["again@example.com"][2] == "=Last"


def test_a_stillhere_file_never_resubscribes_a_contact_who_left_here():
    ContactFactory(email="sub@example.com", status="unsubscribed")
    ContactFactory(email="pend@example.com", status="subscribed")
    data = (
        "\ufeffemail,first_name,last_name,phone,status,tags,source,created_at,confirmed_at,"
        "unsubscribed_at,attributes\n"
        "sub@example.com,A,B,,subscribed,,form,2025-03-01T09:00:00+00:00,"
        "2025-03-01T09:00:00+00:00,,\n"
        "pend@example.com,C,D,,complained,,form,2025-03-01T09:00:00+00:00,,"
        "2025-03-02T09:00:00+00:00,not json\n"
        'nul@example.com,E,F,,pending,,form,,,,"{""a"": ""x\\u0000y"", ""b"": [""\\u0000""]}"\n'
    ).encode()
    import_file(data, "contacts.csv")
    assert Contact.objects.get(email="sub@example.com").status == "unsubscribed"
    pend = Contact.objects.get(email="pend@example.com")
    assert pend.status == "complained"  # the file's own complaint suppresses
    assert pend.attributes["attributes"] == "not json"  # not an object: kept, not lost
    # A NUL that no database column can hold is dropped, not the contact.
    assert Contact.objects.get(email="nul@example.com").attributes == {"a": "xy", "b": [""]}


def test_an_export_written_before_the_phone_fix_imports_its_phones_and_names():
    # Older exports put the guard on every E.164 phone ('+15035550201) and on a name such
    # as "-Bob": both come back as they were, and "'quoted" keeps its own apostrophe.
    data = (
        "\ufeffemail,first_name,last_name,phone,status,tags,source,created_at,confirmed_at,"
        "unsubscribed_at\n"
        "bob@example.com,'-Bob,'quoted,'+15035550201,subscribed,,import,"
        "2025-03-01T09:00:00+00:00,2025-03-01T09:00:00+00:00,\n"
    ).encode()
    import_file(data, "contacts.csv")
    bob = Contact.objects.get(email="bob@example.com")
    assert (bob.first_name, bob.last_name, bob.phone) == ("-Bob", "'quoted", "+15035550201")
    assert (bob.status, bob.source) == ("subscribed", "import")
