"""Contact export: columns, formula neutralising, streaming, permission, filters."""

from __future__ import annotations

import csv
import io
import json

import openpyxl
import pytest
from django.contrib.auth.models import Permission, User
from django.core.management import call_command
from django.urls import reverse

from audience import exporting
from audience.models import Contact
from tests.factories import ContactFactory, TagFactory

pytestmark = pytest.mark.django_db


def _csv(body: bytes) -> list[list[str]]:
    assert body.startswith(b"\xef\xbb\xbf")
    return list(csv.reader(io.StringIO(body.decode("utf-8-sig"))))


@pytest.fixture
def exporter(client):
    user = User.objects.create_user("exporter", password="pw-123456789", is_staff=True)
    user.user_permissions.add(
        Permission.objects.get(codename="view_contact"),
        Permission.objects.get(codename="export_contact"),
    )
    client.force_login(user)
    return client


@pytest.fixture
def staff_without_export(client):
    user = User.objects.create_user("clerk", password="pw-123456789", is_staff=True)
    user.user_permissions.add(
        Permission.objects.get(codename="view_contact"),
        Permission.objects.get(codename="change_contact"),
    )
    client.force_login(user)
    return client


@pytest.mark.parametrize(
    "danger",
    ["=1+1", "+1+1", "-2+3", "+cmd|' /C calc'!A0", "-SUM(A1)", "+", "-", "+1 ", "-1e3",
     "@SUM(A1)", "\tx", "\rx"],
)  # fmt: skip
def test_formula_cells_are_neutralised(danger):
    assert exporting.neutralise(danger) == "'" + danger
    assert exporting.neutralise("plain") == "plain"
    assert exporting.neutralise("") == ""


@pytest.mark.parametrize("value", ["+15035550201", "+4930123456", "-2", "+1", "-0.5", "42"])
def test_plain_numbers_and_e164_phones_are_written_as_they_are(value):
    # What follows the sign is a number: no spreadsheet can make a call of it, and the
    # apostrophe would stop the file importing into Shopify, Mailchimp or Stillhere.
    assert exporting.neutralise(value) == value


def test_csv_export_has_the_columns_and_neutralises_formulas():
    tag = TagFactory(name='=HYPERLINK("http://evil")')
    ada = ContactFactory(email="ada@example.com", first_name="=cmd|'/c calc'!A1",
                         last_name="@SUM(1)", phone="+14155550100",
                         attributes={"note": "=1+2", "Total Spent": "120.50"})  # fmt: skip
    ada.tags.add(tag, TagFactory(name="vip"))
    ContactFactory(email="bob@example.com", first_name="-Bob", last_name="\tTab", status="pending",
                   phone="+15035550201", source="import",
                   attributes={"import_source": "+cmd|' /C calc'!A0"})  # fmt: skip
    rows = _csv(b"".join(exporting.stream_csv(Contact.objects.all())))
    assert rows[0] == list(exporting.COLUMNS)
    by_email = {r[0]: dict(zip(rows[0], r, strict=True)) for r in rows[1:]}
    a = by_email["ada@example.com"]
    assert a["first_name"] == "'=cmd|'/c calc'!A1"
    assert a["last_name"] == "'@SUM(1)"
    assert a["phone"] == "+14155550100"  # a phone, not a formula: no apostrophe
    assert a["tags"] == '\'=HYPERLINK("http://evil"), vip'
    assert a["status"] == "subscribed" and a["source"] == "admin"
    assert a["created_at"].startswith(str(ada.created_at.year))
    assert json.loads(a["attributes"]) == {"note": "=1+2", "Total Spent": "120.50"}
    b = by_email["bob@example.com"]
    assert (b["first_name"], b["last_name"], b["status"]) == ("'-Bob", "'\tTab", "pending")
    assert b["phone"] == "+15035550201"
    # The import label is owner-typed text too: guarded where it reads as a formula.
    assert b["source"] == "import: +cmd|' /C calc'!A0"
    assert b["attributes"] == ""  # the label is the source column's, not repeated here


def test_xlsx_export_opens_in_a_spreadsheet_with_cells_as_typed_text():
    ContactFactory(email="x@example.com", first_name="=1+1", last_name="Ünal \x01",
                   phone="+15035550201")  # fmt: skip
    ContactFactory(email="y@example.com", first_name="Tom & <Jerry>", last_name="a\tb")
    ContactFactory(email="z@example.com", first_name="C:\\Users\\zoe", last_name="two\nlines")
    ContactFactory(email="w@example.com", first_name="non\ufffechar", last_name="\uffff")
    body = b"".join(exporting.stream_xlsx(Contact.objects.all()))
    sheet = openpyxl.load_workbook(io.BytesIO(body), read_only=True).worksheets[0]
    cells = list(sheet.iter_rows())
    rows = [[c.value or "" for c in row] for row in cells]
    assert rows[0] == list(exporting.COLUMNS)
    # Inline strings are text to a spreadsheet, never formulas: no guard, no apostrophe.
    assert rows[1][:4] == ["x@example.com", "=1+1", "Ünal ", "+15035550201"]
    assert (cells[1][1].data_type, cells[1][3].data_type) == ("s", "s")
    assert rows[2][:3] == ["y@example.com", "Tom & <Jerry>", "a\tb"]
    assert rows[3][:3] == ["z@example.com", "C:\\Users\\zoe", "two\nlines"]
    assert rows[4][:3] == ["w@example.com", "nonchar", ""]  # not XML: left out
    assert [r[4] for r in rows[1:]] == ["subscribed"] * 4 and len(rows) == 5


def test_export_streams_in_batches(monkeypatch):
    monkeypatch.setattr(exporting, "BATCH", 2)
    monkeypatch.setattr(exporting, "BLOCK", 1)
    for i in range(5):
        ContactFactory(email=f"p{i}@example.com")
    pieces = list(exporting.stream_csv(Contact.objects.all()))
    assert len(pieces) >= 3  # written out batch by batch, not all at the end
    rows = _csv(b"".join(pieces))
    assert [r[0] for r in rows[1:]] == [f"p{i}@example.com" for i in range(5)]
    xlsx = list(exporting.stream_xlsx(Contact.objects.all()))
    assert len(xlsx) >= 4
    sheet = openpyxl.load_workbook(io.BytesIO(b"".join(xlsx)), read_only=True).worksheets[0]
    assert sum(1 for _ in sheet.iter_rows()) == 6


def test_export_page_follows_the_contact_list_filter(exporter):
    ContactFactory(email="sub@example.com", status="subscribed")
    ContactFactory(email="pend@example.com", status="pending")
    page = exporter.get(reverse("admin:audience_contact_export") + "?status__exact=pending")
    assert page.status_code == 200
    assert b"status__exact=pending" in page.content
    response = exporter.get(
        reverse("admin:audience_contact_export") + "?status__exact=pending&_format=csv"
    )
    assert response.status_code == 200
    assert response["Content-Disposition"].startswith('attachment; filename="contacts-')
    rows = _csv(b"".join(response.streaming_content))
    assert [r[0] for r in rows[1:]] == ["pend@example.com"]

    response = exporter.get(reverse("admin:audience_contact_export") + "?_format=xlsx")
    sheet = openpyxl.load_workbook(
        io.BytesIO(b"".join(response.streaming_content)), read_only=True
    ).worksheets[0]
    assert sum(1 for _ in sheet.iter_rows()) == 3


def test_export_of_a_segment(exporter):
    from audience.models import Segment

    vip = TagFactory(name="vip")
    ContactFactory(email="in@example.com").tags.add(vip)
    ContactFactory(email="out@example.com")
    segment = Segment.objects.create(name="VIPs", rules=[{"field": "tag", "op": "has",
                                                          "value": "vip"}])  # fmt: skip
    response = exporter.get(
        reverse("admin:audience_contact_export") + f"?_format=csv&_segment={segment.pk}"
    )
    rows = _csv(b"".join(response.streaming_content))
    assert [r[0] for r in rows[1:]] == ["in@example.com"]


def test_export_action_exports_only_the_selected(exporter):
    keep = ContactFactory(email="keep@example.com")
    ContactFactory(email="skip@example.com")
    response = exporter.post(
        reverse("admin:audience_contact_changelist"),
        {"action": "export_selected", "_selected_action": [keep.pk]},
    )
    assert response.status_code == 200
    rows = _csv(b"".join(response.streaming_content))
    assert [r[0] for r in rows[1:]] == ["keep@example.com"]


def test_staff_without_the_export_permission_cannot_export(staff_without_export):
    keep = ContactFactory(email="keep@example.com")
    client = staff_without_export
    assert client.get(reverse("admin:audience_contact_export")).status_code == 403
    assert client.get(reverse("admin:audience_contact_export") + "?_format=csv").status_code == 403
    changelist = client.get(reverse("admin:audience_contact_changelist"))
    assert b"export_selected" not in changelist.content
    response = client.post(
        reverse("admin:audience_contact_changelist"),
        {"action": "export_selected", "_selected_action": [keep.pk]},
    )
    # The action is not offered, so Django answers with the list again, not a file.
    assert not response.has_header("Content-Disposition")
    assert response.status_code in (200, 302)


def test_export_contacts_command(tmp_path):
    ContactFactory(email="a@example.com", status="subscribed")
    ContactFactory(email="b@example.com", status="unsubscribed")
    out = tmp_path / "subs.csv"
    call_command("export_contacts", "-o", str(out), "--status", "subscribed")
    rows = _csv(out.read_bytes())
    assert [r[0] for r in rows[1:]] == ["a@example.com"]
    xlsx = tmp_path / "all.xlsx"
    call_command("export_contacts", "-o", str(xlsx))
    sheet = openpyxl.load_workbook(xlsx, read_only=True).worksheets[0]
    assert sum(1 for _ in sheet.iter_rows()) == 3


def test_each_contact_s_tags_are_listed_by_name_whatever_their_age():
    zeta, alpha, beta = (TagFactory(name=n) for n in ("zeta", "Alpha", "beta"))
    ContactFactory(email="t@example.com").tags.add(zeta, beta, alpha)
    ContactFactory(email="u@example.com").tags.add(beta)
    everyone = _csv(b"".join(exporting.stream_csv(Contact.objects.all())))
    selection = _csv(b"".join(exporting.stream_csv(Contact.objects.filter(email="t@example.com"))))
    assert [r[5] for r in everyone[1:]] == ["Alpha, beta, zeta", "beta"]
    assert [r[5] for r in selection[1:]] == ["Alpha, beta, zeta"]


def test_export_of_a_segment_that_is_not_there_is_a_404_not_everyone(exporter):
    ContactFactory(email="someone@example.com")
    url = reverse("admin:audience_contact_export") + "?_format=csv&_segment="
    for bad in ("999999", "abc", "1%20OR%201"):
        assert exporter.get(url + bad).status_code == 404
