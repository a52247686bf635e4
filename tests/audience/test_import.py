"""Contact import: every format, the consent rules, idempotency, bad files and bad rows."""

from __future__ import annotations

import codecs
import csv
import datetime as dt
import io
import time
from pathlib import Path

import openpyxl
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from audience import confirmations, importing
from audience.models import ConsentEvent, Contact, ImportJob, SuppressedEmail, Tag
from audience.services import email_hash
from tests.factories import ContactFactory

pytestmark = pytest.mark.django_db

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "imports"


@pytest.fixture(autouse=True)
def _media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT


def csv_bytes(rows, *, delimiter=",", encoding="utf-8", bom=b"") -> bytes:
    text = io.StringIO()
    csv.writer(text, delimiter=delimiter, lineterminator="\r\n").writerows(rows)
    return bom + text.getvalue().encode(encoding)


def run(data: bytes, name: str = "contacts.csv", **options) -> ImportJob:
    job = importing.job_create(f=io.BytesIO(data), name=name, size=len(data))
    job = importing.job_start(job=job, options=options, dispatch=False)
    return importing.run_job(job.pk)


def contact(email: str) -> Contact:
    return Contact.objects.get(email=email)


def tags_of(email: str) -> set[str]:
    return set(contact(email).tags.values_list("name", flat=True))


# --- formats -----------------------------------------------------------------------------


def test_mailchimp_export_is_recognised_and_keeps_consent_evidence():
    data = (FIXTURES / "mailchimp_subscribed.csv").read_bytes()
    job = run(data, "members_export.csv", new_status="consent")
    assert (job.profile, job.encoding, job.delimiter) == ("mailchimp", "utf-8", ",")
    assert job.status == "done"
    assert job.counts["new"] == 2

    ada = contact("ada@example.com")
    assert (ada.first_name, ada.last_name, ada.phone) == ("Ada", "Lovelace", "+442079460958")
    assert ada.status == "subscribed"
    assert ada.confirmed_at.isoformat() == "2023-03-01T09:16:40+00:00"
    assert ada.source == "import"
    assert tags_of("ada@example.com") == {"VIP", "Newsletter"}
    assert ada.attributes["Birthday"] == "12/10"
    assert "MEMBER_RATING" not in ada.attributes and "LEID" not in ada.attributes

    event = ada.consent_events.get()
    assert (event.kind, event.method, event.status_before, event.status_after) == (
        "import", "import", "", "subscribed",
    )  # fmt: skip
    assert event.detail["evidence"] == {
        "optin_time": "2023-03-01 09:15:02",
        "optin_ip": "203.0.113.7",
        "confirm_time": "2023-03-01 09:16:40",
        "confirm_ip": "203.0.113.7",
    }
    assert event.detail["import_job"] == job.pk
    # Stored trimmed and lower-cased.
    assert contact("grace@example.com").status == "subscribed"


def test_mailchimp_unsubscribed_file_unsubscribes_and_stores_opted_out():
    ContactFactory(email="linus@example.com", status="subscribed")
    data = (FIXTURES / "mailchimp_unsubscribed.csv").read_bytes()
    job = run(data, new_status="consent")
    assert job.profile == "mailchimp"

    linus = contact("linus@example.com")
    assert linus.status == "unsubscribed"
    assert linus.unsubscribed_at.isoformat() == "2024-02-02T12:00:00+00:00"
    event = linus.consent_events.get()
    assert (event.status_before, event.status_after) == ("subscribed", "unsubscribed")
    assert event.detail["evidence"]["unsub_time"] == "2024-02-02 12:00:00"

    # New from an unsubscribed file: stored, but as unsubscribed, despite OPTIN_TIME.
    margaret = contact("margaret@example.com")
    assert margaret.status == "unsubscribed"
    assert margaret.attributes["UNSUB_REASON"] == "Other"


def test_shopify_export_honours_accepts_email_marketing():
    data = (FIXTURES / "shopify_customers.csv").read_bytes()
    job = run(data, "customers_export.csv", new_status="consent")
    assert job.profile == "shopify"

    ines = contact("ines@example.com")
    assert ines.status == "subscribed"
    assert ines.phone == "+34600123456"
    assert tags_of("ines@example.com") == {"repeat buyer", "wholesale"}
    assert ines.attributes["Accepts SMS Marketing"] == "no"
    assert ines.attributes["Total Spent"] == "120.50"
    assert "Customer ID" not in ines.attributes

    # "no": kept, never subscribed, and no double opt-in mail either.
    tom = contact("tom@example.com")
    assert tom.status == "pending"
    assert tom.confirmation_sent_at is None
    assert contact("uma@example.com").phone == "+14155550132"


def test_shopify_declined_row_gets_no_double_opt_in_in_pending_mode(
    django_capture_on_commit_callbacks,
):
    data = (FIXTURES / "shopify_customers.csv").read_bytes()
    with django_capture_on_commit_callbacks() as callbacks:
        run(data, new_status="pending")
    assert contact("ines@example.com").status == "pending"
    # The two who said yes are owed their mail, and one sending task is queued after commit.
    assert sorted(
        Contact.objects.filter(confirmation_due=True).values_list("email", flat=True)
    ) == [
        "ines@example.com",
        "uma@example.com",
    ]
    assert callbacks == [confirmations.kick]


def test_meta_lead_ads_utf16_tab_with_p_prefix():
    rows = [
        ["id", "created_time", "ad_id", "ad_name", "form_id", "form_name", "is_organic",
         "platform", "full_name", "email", "phone_number"],
        ["l:123", "2024-07-01T10:00:00+0000", "ag:1", "Summer", "f:9", "Lead form", "false",
         "ig", "Zoë Ünal", "zoe@example.com", "p:+4915123456789"],
        ["l:124", "2024-07-01T11:00:00+0000", "ag:1", "Summer", "f:9", "Lead form", "false",
         "fb", "Yan", "yan@example.com", "p:+33612345678"],
    ]  # fmt: skip
    data = csv_bytes(rows, delimiter="\t", encoding="utf-16")  # Python writes the BOM
    assert data[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)
    job = run(data, "leads.csv")
    assert (job.profile, job.encoding, job.delimiter) == ("meta_leads", "utf-16", "\t")
    zoe = contact("zoe@example.com")
    assert (zoe.first_name, zoe.last_name, zoe.phone) == ("Zoë", "Ünal", "+4915123456789")
    assert zoe.status == "pending"
    assert zoe.attributes["form_name"] == "Lead form"
    assert "ad_id" not in zoe.attributes
    assert contact("yan@example.com").first_name == "Yan"


def test_klaviyo_consent_values():
    ContactFactory(email="lee@example.com", status="subscribed")
    data = (FIXTURES / "klaviyo_profiles.csv").read_bytes()
    job = run(data, new_status="consent")
    assert job.profile == "klaviyo"
    kim = contact("kim@example.com")
    assert kim.status == "subscribed"
    assert kim.confirmed_at.isoformat() == "2024-05-01T10:00:00+00:00"
    assert kim.consent_events.get().detail["evidence"]["consent_value"] == "SUBSCRIBED"
    assert contact("lee@example.com").status == "unsubscribed"
    assert contact("max@example.com").status == "pending"


def test_woocommerce_customers_report():
    data = (FIXTURES / "woocommerce_customers.csv").read_bytes()
    job = run(data)
    assert job.profile == "woocommerce"
    nora = contact("nora@example.com")
    assert (nora.first_name, nora.last_name) == ("Nora", "Quist")
    assert nora.attributes["Total spend"] == "210.00"
    assert "Username" not in nora.attributes


@pytest.mark.parametrize(
    ("encoding", "bom", "delimiter"),
    [
        ("utf-8", b"", ","),
        ("utf-8", codecs.BOM_UTF8, ";"),
        ("cp1252", b"", ";"),
        ("utf-16-le", codecs.BOM_UTF16_LE, "\t"),
        ("utf-8", b"", "\t"),
    ],
)
def test_generic_sheet_in_any_encoding_and_delimiter(encoding, bom, delimiter):
    rows = [
        ["E-MAIL", "first", "LAST", "Phone", "TAGS", "Lieblingsfarbe"],
        ["rene@example.com", "René", "Müller", "+49 30 901820", "a; b", "grün"],
        ["jo@example.com", "Jo", "", "", "", ""],
    ]
    data = csv_bytes(rows, delimiter=delimiter, encoding=encoding, bom=bom)
    job = run(data, unknown="attribute")
    expected = {"utf-8": "utf-8-sig" if bom else "utf-8", "cp1252": "cp1252"}
    assert job.encoding == expected.get(encoding, "utf-16")
    assert job.delimiter == delimiter
    assert job.profile == "generic"
    rene = contact("rene@example.com")
    assert (rene.first_name, rene.last_name, rene.phone) == ("René", "Müller", "+4930901820")
    assert tags_of("rene@example.com") == {"a", "b"}
    assert rene.attributes["Lieblingsfarbe"] == "grün"


def test_unknown_columns_can_be_ignored():
    data = csv_bytes([["Email", "Favourite colour"], ["a@example.com", "green"]])
    job = importing.job_create(f=io.BytesIO(data), name="x.csv", size=len(data), unknown="ignore")
    assert job.mapping == ["email", "ignore"]
    importing.job_start(job=job, options={"unknown": "ignore"}, dispatch=False)
    importing.run_job(job.pk)
    assert contact("a@example.com").attributes == {}


def test_xlsx_with_numbers_and_dates():
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.append(["Email", "Name", "Phone", "Signed up"])
    ws.append(["xl@example.com", "Excel Person", 4155550123, "2024-01-01"])
    ws.append([None, None, None, None])
    ws.append(["xl2@example.com", "Second", None, None])
    buf = io.BytesIO()
    wb.save(buf)
    job = run(buf.getvalue(), "people.xlsx")
    assert (job.file_format, job.status) == ("xlsx", "done")
    xl = contact("xl@example.com")
    assert (xl.first_name, xl.last_name, xl.phone) == ("Excel", "Person", "+14155550123")
    assert contact("xl2@example.com").first_name == "Second"
    assert job.counts["new"] == 2


# --- consent rules ---------------------------------------------------------------------------


@pytest.mark.parametrize("status", ["unsubscribed", "bounced", "complained", "pending"])
def test_import_never_resubscribes_or_subscribes_existing(status):
    existing = ContactFactory(email="old@example.com", status=status, first_name="")
    data = (
        (FIXTURES / "klaviyo_profiles.csv")
        .read_bytes()
        .replace(b"kim@example.com", b"OLD@example.com")
    )
    job = run(data, new_status="consent")
    existing.refresh_from_db()
    assert existing.status == status
    assert existing.first_name == "Kim"  # gaps are filled; status is not touched
    assert not existing.consent_events.exists()
    assert job.counts["suppressed" if status != "pending" else "updated"] == 1


def test_import_skips_erased_addresses():
    SuppressedEmail.objects.create(email_hash=email_hash("ada@example.com"))
    data = (FIXTURES / "mailchimp_subscribed.csv").read_bytes()
    job = run(data, new_status="consent")
    assert not Contact.objects.filter(email="ada@example.com").exists()
    assert Contact.objects.filter(email="grace@example.com").exists()
    assert job.counts["suppressed"] == 1


def test_subscribed_only_with_evidence_and_when_chosen():
    rows = [["Email", "Name"], ["noproof@example.com", "No Proof"]]
    run(csv_bytes(rows), new_status="consent")
    assert contact("noproof@example.com").status == "pending"
    data = (FIXTURES / "mailchimp_subscribed.csv").read_bytes()
    run(data, new_status="none")
    assert contact("ada@example.com").status == "pending"
    assert contact("ada@example.com").confirmation_sent_at is None


def test_import_does_not_overwrite_names_a_contact_gave():
    ContactFactory(email="ada@example.com", first_name="Augusta", last_name="King", phone="")
    run((FIXTURES / "mailchimp_subscribed.csv").read_bytes())
    ada = contact("ada@example.com")
    assert (ada.first_name, ada.last_name, ada.phone) == ("Augusta", "King", "+442079460958")


# --- idempotency and duplicates --------------------------------------------------------------


def test_importing_the_same_file_twice_changes_nothing_the_second_time():
    ContactFactory(email="linus@example.com", status="subscribed")
    files = ["mailchimp_subscribed.csv", "mailchimp_unsubscribed.csv", "shopify_customers.csv"]
    for name in files:
        run((FIXTURES / name).read_bytes(), new_status="consent", tags="spring")

    def snapshot():
        return (
            list(Contact.objects.order_by("pk").values()),
            list(Contact.tags.through.objects.order_by("pk").values_list("contact", "tag")),
            ConsentEvent.objects.count(),
            Tag.objects.count(),
        )

    before = snapshot()
    for name in files:
        job = run((FIXTURES / name).read_bytes(), new_status="consent", tags="spring")
        assert job.counts.get("new", 0) == 0
        assert job.counts.get("updated", 0) == 0
    assert snapshot() == before


def test_same_email_in_different_case_merges_into_one_contact():
    rows = [
        ["Email", "First Name", "Last Name", "Tags"],
        ["Sam@Example.com", "Sam", "", "a"],
        ["sam@example.com ", "", "Smith", "b"],
        ["SAM@EXAMPLE.COM", "Other", "", "A"],
    ]
    job = run(csv_bytes(rows))
    sam = contact("sam@example.com")
    assert Contact.objects.count() == 1
    assert (sam.first_name, sam.last_name) == ("Sam", "Smith")
    assert tags_of("sam@example.com") == {"a", "b"}
    assert job.counts["new"] == 1 and job.counts["merged"] == 2
    assert sam.consent_events.count() == 1


def test_duplicates_across_chunks_still_make_one_contact(monkeypatch):
    monkeypatch.setattr("audience.importing.parsing.CHUNK", 2)
    rows = [["Email", "Name"]] + [[f"p{i}@example.com", ""] for i in range(5)]
    rows += [["P1@EXAMPLE.COM", "Late Name"]]
    job = run(csv_bytes(rows))
    assert Contact.objects.count() == 5
    assert contact("p1@example.com").first_name == "Late"
    assert job.counts["new"] == 5 and job.counts["updated"] == 1


# --- bad files and bad rows --------------------------------------------------------------------


def _refused(data: bytes, name: str = "f.csv", size: int | None = None) -> str:
    with pytest.raises(importing.ImportFileError) as exc:
        importing.job_create(
            f=io.BytesIO(data), name=name, size=len(data) if size is None else size
        )
    assert ImportJob.objects.count() == 0
    assert Contact.objects.count() == 0
    return str(exc.value)


def test_binary_junk_is_refused_with_a_clear_message(_media):
    junk = bytes(range(256)) * 40
    assert "does not look like a spreadsheet" in _refused(junk, "photo.csv")
    assert not Path(_media).exists() or not any(Path(_media).rglob("*.*"))


def test_file_without_email_column_is_refused():
    message = _refused(csv_bytes([["Name", "Phone"], ["Ann", "+14155550100"]]))
    assert "No email column" in message and "Name, Phone" in message


def test_email_column_is_found_by_its_values_when_the_header_is_odd():
    data = csv_bytes([["Kunde", "Kontakt"], ["Ann", "ann@example.com"], ["Bo", "bo@example.com"]])
    run(data)
    assert Contact.objects.count() == 2


def test_file_over_the_size_limit_is_refused(settings):
    settings.IMPORT_MAX_BYTES = 1024
    data = csv_bytes([["Email"]] + [[f"p{i}@example.com"] for i in range(100)])
    assert "largest accepted" in _refused(data)


def test_truncated_xlsx_is_refused():
    wb = openpyxl.Workbook()
    wb.active.append(["Email"])
    wb.active.append(["t@example.com"])
    buf = io.BytesIO()
    wb.save(buf)
    data = buf.getvalue()
    assert "damaged or incomplete" in _refused(data[: len(data) // 2], "t.xlsx")


def test_empty_and_old_xls_files_are_refused():
    assert "empty" in _refused(b"   \n\n")
    assert ".xls" in _refused(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\0" * 600, "old.xls")


def test_a_bad_row_never_stops_the_good_ones(tmp_path):
    rows = [
        ["Email", "First Name", "Phone"],
        ["good1@example.com", "One", "+14155550100"],
        ["not-an-email", "Bad", ""],
        ["", "No address", ""],
        ["good2@example.com", "Two", "12"],
        ["=cmd|'/c calc'!A1@x", "Evil", ""],
        ["good3@example.com", "x" * 500, ""],
    ]
    job = run(csv_bytes(rows))
    assert job.status == "done"
    assert set(Contact.objects.values_list("email", flat=True)) == {
        "good1@example.com", "good2@example.com", "good3@example.com",
    }  # fmt: skip
    assert contact("good2@example.com").phone == ""  # bad phone left out, contact kept
    assert len(contact("good3@example.com").first_name) == 100
    assert job.counts["invalid"] == 3 and job.counts["phone_dropped"] == 1
    with job.rejected.open("rb") as f:
        rejected = list(csv.reader(io.StringIO(f.read().decode("utf-8-sig"))))
    assert rejected[0] == ["row", "reason", "Email", "First Name", "Phone"]
    assert [r[:3] for r in rejected[1:]] == [
        ["3", "invalid email address", "not-an-email"],
        ["4", "no email address", ""],
        ["6", "invalid email address", "'=cmd|'/c calc'!A1@x"],
    ]


def test_unreadable_csv_row_is_rejected_and_the_rest_imported():
    big = "x" * (2 * 1024 * 1024)
    data = (
        f'Email,Note\r\nok1@example.com,fine\r\nbad@example.com,"{big}"\r\nok2@example.com,fine\r\n'
    )
    job = run(data.encode())
    assert {"ok1@example.com", "ok2@example.com"} <= set(
        Contact.objects.values_list("email", flat=True)
    )
    assert job.counts["invalid"] >= 1


def test_preview_writes_nothing_and_counts_each_outcome():
    ContactFactory(email="ada@example.com", status="unsubscribed")
    ContactFactory(email="grace@example.com", status="subscribed", phone="", first_name="Grace",
                   last_name="Hopper")  # fmt: skip
    data = csv_bytes(
        [
            ["Email Address", "First Name", "OPTIN_TIME", "TAGS"],
            ["ada@example.com", "Ada", "2023-01-01 00:00:00", ""],
            ["grace@example.com", "Grace", "", ""],
            ["new@example.com", "New", "2023-01-01 00:00:00", '"Brand new tag"'],
            ["broken", "", "", ""],
        ]
    )
    job = importing.job_create(f=io.BytesIO(data), name="m.csv", size=len(data))
    job.options = {**job.options, "new_status": "consent", "tags": ["fresh"]}
    job.save()
    before = (Contact.objects.count(), Tag.objects.count(), ConsentEvent.objects.count())
    preview = importing.job_preview(job)
    assert (Contact.objects.count(), Tag.objects.count(), ConsentEvent.objects.count()) == before
    counts = {
        k: preview.counts[k] for k in ("new", "updated", "unchanged", "suppressed", "invalid")
    }
    assert counts == {"new": 1, "updated": 1, "unchanged": 0, "suppressed": 1, "invalid": 1}
    rows = {r["line"]: r for r in preview.rows}
    assert rows[4]["status"] == "subscribed"
    assert rows[4]["tags"] == ["fresh", "Brand new tag"]
    assert rows[2]["outcome"] == "suppressed"
    assert rows[5]["outcome"] == "invalid"


# --- the command --------------------------------------------------------------------------


def test_import_contacts_command_runs_the_same_path(capsys):
    call_command(
        "import_contacts", str(FIXTURES / "shopify_customers.csv"), "--new-status", "consent",
        "--tags", "from-cli",
    )  # fmt: skip
    out = capsys.readouterr()
    assert "done: 3 new" in out.out
    assert "3/3 rows" in out.err
    assert contact("ines@example.com").status == "subscribed"
    assert "from-cli" in tags_of("tom@example.com")
    job = ImportJob.objects.get()
    assert job.status == "done" and job.counts["new"] == 3


def test_import_contacts_command_reports_a_bad_file(tmp_path):
    path = tmp_path / "junk.csv"
    path.write_bytes(bytes(range(256)) * 10)
    with pytest.raises(CommandError, match="does not look like a spreadsheet"):
        call_command("import_contacts", str(path))
    assert ImportJob.objects.count() == 0


@pytest.mark.django_db(transaction=True)
def test_parallel_writers_merge_an_address_repeated_across_chunks(monkeypatch):
    # Outside a transaction PostgreSQL gets two writers; chunks of two rows put the same
    # address into chunks that are written at the same time.
    monkeypatch.setattr("audience.importing.parsing.CHUNK", 2)
    rows = [["Email", "First Name", "Last Name", "Tags"]]
    for i in range(40):
        rows.append([f"p{i % 7}@example.com", f"F{i}" if i < 7 else "", f"L{i}", f"t{i % 3}"])
    job = run(csv_bytes(rows), new_status="none")
    assert job.status == "done"
    assert Contact.objects.count() == 7
    assert ConsentEvent.objects.count() == 7  # one per contact created, none for repeats
    assert job.counts["new"] == 7
    assert job.counts["new"] + job.counts["updated"] + job.counts["unchanged"] == 40
    for i in range(7):
        c = contact(f"p{i}@example.com")
        assert c.first_name == f"F{i}"
        assert tags_of(c.email) == {"t0", "t1", "t2"}
    again = run(csv_bytes(rows), new_status="none")
    assert again.counts.get("new", 0) == 0 and again.counts.get("updated", 0) == 0


# --- large files: parsed by a child process ----------------------------------------------


@pytest.fixture
def parse_in_child(monkeypatch):
    """Every file counts as large; returns the list of files the child parsed."""
    from audience.importing import parsing

    parsed = []

    class Spied(parsing.ChildChunks):
        def __iter__(self):
            parsed.append(self.path)
            return super().__iter__()

    monkeypatch.setattr(parsing, "CHILD_MIN_BYTES", 0)
    monkeypatch.setattr(parsing, "ChildChunks", Spied)
    return parsed


def test_a_large_file_parsed_in_a_child_process_imports_the_same(parse_in_child, monkeypatch):
    monkeypatch.setattr("audience.importing.parsing.CHUNK", 2)  # the child gets it too
    rows = [
        ["Email", "First Name", "Phone", "Tags", "Favourite"],
        ["good1@example.com", "Zoë", "+14155550100", "vip", "tea"],
        ["not-an-email", "Bad", "", "", ""],
        ["GOOD1@example.com", "", "", "late", ""],
        ["good2@example.com", "Two", "12", "", ""],
        ["", "No address", "", "", ""],
        ["good3@example.com", "Three", "", "", ""],
    ]
    job = run(csv_bytes(rows), new_status="none")
    assert len(parse_in_child) == 1
    assert job.status == "done"
    assert set(Contact.objects.values_list("email", flat=True)) == {
        "good1@example.com", "good2@example.com", "good3@example.com",
    }  # fmt: skip
    good1 = contact("good1@example.com")
    assert (good1.first_name, good1.phone, good1.attributes["Favourite"]) == (
        "Zoë", "+14155550100", "tea",
    )  # fmt: skip
    assert tags_of("good1@example.com") == {"vip", "late"}  # merged across chunks
    assert contact("good2@example.com").phone == ""
    assert job.counts["invalid"] == 2 and job.counts["phone_dropped"] == 1
    assert job.counts["new"] == 3 and job.rows_done == 6
    with job.rejected.open("rb") as f:
        rejected = list(csv.reader(io.StringIO(f.read().decode("utf-8-sig"))))
    assert [r[:3] for r in rejected[1:]] == [
        ["3", "invalid email address", "not-an-email"],
        ["6", "no email address", ""],
    ]


def test_a_file_the_child_cannot_read_fails_the_import_with_its_message(parse_in_child):
    job = importing.job_create(
        f=io.BytesIO(csv_bytes([["Email"], ["a@example.com"]])), name="c.csv", size=30
    )
    job = importing.job_start(job=job, options={}, dispatch=False)
    with job.file.open("wb") as f:  # the stored file lost its rows after the upload
        f.write(b"\r\n\r\n")
    job = importing.run_job(job.pk)
    assert len(parse_in_child) == 1
    assert (job.status, job.error) == ("failed", "The file has no rows.")
    assert Contact.objects.count() == 0


def test_a_parser_process_that_dies_fails_the_import_and_says_so(parse_in_child, monkeypatch):
    monkeypatch.setattr("audience.importing.parsing.sys.executable", "/bin/false")
    job = importing.job_create(
        f=io.BytesIO(csv_bytes([["Email"], ["a@example.com"]])), name="c.csv", size=30
    )
    job = importing.job_start(job=job, options={}, dispatch=False)
    with pytest.raises(RuntimeError, match="parser process failed"):
        importing.run_job(job.pk)
    job.refresh_from_db()
    assert job.status == "failed" and "running the same file again is safe" in job.error
    assert Contact.objects.count() == 0


def test_an_import_that_fails_while_writing_stops_its_parser_process(parse_in_child, monkeypatch):
    import subprocess

    from audience.importing import jobs

    children = []
    popen = subprocess.Popen

    def spawn(*args, **kwargs):
        children.append(popen(*args, **kwargs))
        return children[-1]

    def failing_write(records, **kwargs):
        raise RuntimeError("the database went away")

    monkeypatch.setattr("audience.importing.parsing.subprocess.Popen", spawn)
    monkeypatch.setattr("audience.importing.parsing.CHUNK", 1)
    monkeypatch.setattr(jobs, "import_chunk", failing_write)
    rows = [["Email"]] + [[f"p{i}@example.com"] for i in range(200)]
    with pytest.raises(RuntimeError, match="went away"):
        run(csv_bytes(rows))
    assert len(children) == 1
    assert children[0].poll() is not None  # ended, not left parsing for nobody
    assert ImportJob.objects.get().status == "failed"


# --- an import whose worker stopped -------------------------------------------------------


def _queued(rows) -> ImportJob:
    data = csv_bytes(rows)
    job = importing.job_create(f=io.BytesIO(data), name="c.csv", size=len(data))
    return importing.job_start(job=job, options={}, dispatch=False)


def _dies_mid_run(job: ImportJob, *, silent_for: dt.timedelta) -> None:
    """What a worker killed mid-import leaves behind: a running job that went quiet."""
    ImportJob.objects.filter(pk=job.pk).update(
        status="running", rows_done=1, heartbeat_at=timezone.now() - silent_for
    )


def test_a_task_delivered_again_resumes_an_import_whose_worker_died():
    job = _queued([["Email"], ["a@example.com"], ["b@example.com"]])
    _dies_mid_run(job, silent_for=dt.timedelta(minutes=10))
    job = importing.run_job(job.pk)  # the broker hands the unacknowledged task to a worker
    assert (job.status, job.rows_done, job.counts["new"]) == ("done", 2, 2)
    assert Contact.objects.count() == 2


def test_a_running_import_that_is_alive_is_left_alone(django_capture_on_commit_callbacks):
    job = _queued([["Email"], ["a@example.com"]])
    _dies_mid_run(job, silent_for=dt.timedelta(seconds=30))
    with django_capture_on_commit_callbacks() as callbacks:
        assert importing.jobs_resume_stalled() == []
    assert callbacks == []
    assert importing.run_job(job.pk) is None  # a second delivery does not run it twice
    assert ImportJob.objects.get().status == "running" and Contact.objects.count() == 0


def test_the_sweep_queues_a_stalled_import_once(django_capture_on_commit_callbacks):
    job = _queued([["Email"], ["a@example.com"]])
    _dies_mid_run(job, silent_for=dt.timedelta(minutes=10))
    with django_capture_on_commit_callbacks() as callbacks:
        assert importing.jobs_resume_stalled() == [job.pk]
        assert importing.jobs_resume_stalled() == []  # queued again: not stalled any more
    assert len(callbacks) == 1
    job.refresh_from_db()
    assert job.status == "queued"
    assert importing.run_job(job.pk).status == "done"


def test_the_parser_process_uses_this_process_s_phone_region(parse_in_child, settings):
    settings.PHONE_DEFAULT_REGION = "GB"
    job = run(csv_bytes([["Email", "Phone"], ["uk@example.com", "020 7946 0958"]]))
    assert len(parse_in_child) == 1
    assert (job.status, contact("uk@example.com").phone) == ("done", "+442079460958")


@pytest.mark.django_db(transaction=True)
def test_a_run_busy_on_one_chunk_still_says_it_is_alive(monkeypatch, settings):
    from audience.importing import jobs

    job = _queued([["Email"], ["a@example.com"]])
    ImportJob.objects.filter(pk=job.pk).update(heartbeat_at=timezone.now() - dt.timedelta(hours=1))
    write = jobs.import_chunk
    beats = []

    def slow_write(records, **kwargs):  # a chunk waiting on a lock, say
        time.sleep(0.5)
        beats.append(ImportJob.objects.get(pk=job.pk).heartbeat_at)
        return write(records, **kwargs)

    settings.IMPORT_STALL_SECONDS = 0.25  # a beat every 0.05 s
    monkeypatch.setattr(jobs, "import_chunk", slow_write)
    assert importing.run_job(job.pk).status == "done"
    assert beats[0] > timezone.now() - dt.timedelta(seconds=5)  # beaten during the chunk
    assert importing.jobs_resume_stalled() == []


def test_a_run_resumed_elsewhere_does_not_overwrite_the_new_run(monkeypatch):
    job = _queued([["Email"], ["a@example.com"], ["b@example.com"]])
    monkeypatch.setattr("audience.importing.parsing.CHUNK", 1)
    resumed_at = timezone.now() + dt.timedelta(seconds=1)

    def resumed_elsewhere(done, total, counts):
        # This run was thought dead and another worker claimed the job.
        ImportJob.objects.filter(pk=job.pk).update(started_at=resumed_at, rows_done=0)

    job = importing.run_job(job.pk, progress=resumed_elsewhere)
    assert (job.status, job.started_at, job.rows_done) == ("running", resumed_at, 0)


# --- hostile files: bounded time and memory on every path ---------------------------------

# Run in a child process of its own, so its peak memory is the file's alone (and a file
# that would eat the machine meets an address-space limit, not the other tests).
_MEASURE = r"""
import json, os, resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
import django
django.setup()
from audience.importing import ImportFileError, inspect
from audience.importing.parsing import ParserSpec, chunks
from audience.importing.profiles import GENERIC

mode, path = sys.argv[1], sys.argv[2]
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.perf_counter()
result = {}
try:
    with open(path, "rb") as f:
        found = inspect(f)
        result = {"header": found.header, "rows_total": found.rows_total}
        if mode == "all":  # what the import's task reads: every row
            spec = ParserSpec(found.detected, found.header, found.mapping, GENERIC.tag_style)
            got = list(chunks(f, spec))
            result["records"] = sum(len(c.records) for c in got)
            result["consumed"] = sum(c.consumed for c in got)
except ImportFileError as exc:
    result = {"error": str(exc)}
except MemoryError:
    result = {"error": "MemoryError"}
result["seconds"] = time.perf_counter() - started
result["grew_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
print(json.dumps(result))
"""


def _measure(tmp_path, data: bytes, mode: str = "check", name: str = "f.xlsx") -> dict:
    import json
    import os
    import subprocess
    import sys

    path = tmp_path / name
    path.write_bytes(data)
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings"}
    env.setdefault("SECRET_KEY", "test-only-secret-0123456789-0123456789-0123456789")
    root = Path(__file__).resolve().parent.parent.parent
    try:
        done = subprocess.run(
            [sys.executable, "-c", _MEASURE, mode, str(path)],
            capture_output=True, text=True, timeout=60, env=env, cwd=root,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.fail(f"reading {name} ({mode}) took more than 60 s")
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_shared_strings_zip_bomb_is_refused_from_the_zip_directory_at_once(tmp_path):
    from tests.audience.hostile_xlsx import shared_strings_bomb

    data = shared_strings_bomb(unpacked=3 * 1024**3)
    assert len(data) < 10 * 1024 * 1024  # 3 GB of shared strings in a few MB
    got = _measure(tmp_path, data)
    assert "unpacks to 3,072 MB" in got.get("error", ""), got
    assert "IMPORT_MAX_UNCOMPRESSED_BYTES" in got["error"]
    assert got["seconds"] < 2, got
    assert got["grew_mb"] < 64, got


def test_shared_strings_under_the_total_but_too_big_to_hold_in_memory_are_refused(tmp_path):
    from tests.audience.hostile_xlsx import shared_strings_bomb

    # 1 GB: within IMPORT_MAX_UNCOMPRESSED_BYTES (2 GB), but openpyxl would hold every
    # string in memory; only the streamed sheet may take the large share.
    got = _measure(tmp_path, shared_strings_bomb(unpacked=1024**3))
    assert "shared strings, styles and other parts unpack to 1,024 MB" in got.get("error", "")
    assert got["seconds"] < 2 and got["grew_mb"] < 64, got


@pytest.mark.parametrize("mode", ["check", "all"])
def test_a_sheet_claiming_16384_columns_and_a_million_rows_reads_only_its_cells(tmp_path, mode):
    from tests.audience.hostile_xlsx import huge_dimension

    data = huge_dimension()
    assert len(data) < 8 * 1024
    got = _measure(tmp_path, data, mode)
    assert got.get("header") == ["Email", "First Name"], got
    assert got["rows_total"] == 2
    if mode == "all":
        assert (got["records"], got["consumed"]) == (2, 2)
    assert got["seconds"] < 2 and got["grew_mb"] < 64, got


def test_a_sheet_that_unpacks_to_more_than_its_directory_says_fails_in_bounded_memory(
    tmp_path,
):
    from tests.audience.hostile_xlsx import lying_sheet

    # It passes the upload's check (the directory claims 512 KB, the first rows are
    # good); reading on stops where the directory said, and the CRC says the rest lies.
    data = lying_sheet(claims=512 * 1024, unpacks=1024**3)
    checked = _measure(tmp_path, data, "check")
    assert checked.get("header") == ["Email", "First Name"], checked
    got = _measure(tmp_path, data, "all")
    assert "damaged" in got.get("error", ""), got
    assert got["grew_mb"] < 64, got


def test_a_csv_that_is_one_huge_line_is_read_in_bounded_memory(tmp_path):
    data = b"Email\r\n" + b"x" * (200 * 1024 * 1024) + b"\r\nada@example.com\r\n"
    got = _measure(tmp_path, data, "all", name="line.csv")
    assert got.get("header") == ["Email"], got
    assert got["records"] == 1  # the long line is rejected rows, the address imported
    assert got["grew_mb"] < 64, got


def test_the_upload_check_reads_a_sample_and_the_task_counts_the_rest(monkeypatch):
    from audience.importing import jobs

    monkeypatch.setattr(jobs, "INSPECT_LINES", 50)
    rows = [["Email"]] + [[f"p{i}@example.com"] for i in range(120)]
    job = importing.job_create(f=io.BytesIO(csv_bytes(rows)), name="c.csv", size=1)
    assert job.rows_total == 0  # not read past the sample
    preview = importing.job_preview(job)
    assert preview.complete and preview.counts["new"] == 120
    job = importing.job_start(job=job, options={}, dispatch=False)
    job = importing.run_job(job.pk)
    assert (job.status, job.rows_total, job.rows_done) == ("done", 120, 120)


def test_the_preview_reads_a_bounded_number_of_lines(monkeypatch):
    rows = [["Email"]] + [[f"p{i}@example.com"] for i in range(30)]
    job = importing.job_create(f=io.BytesIO(csv_bytes(rows)), name="c.csv", size=1)
    preview = importing.job_preview(job, limit=11)
    assert not preview.complete
    assert preview.counted_rows == 10 and preview.counts["new"] == 10


def test_a_hostile_xlsx_imports_its_real_cells_and_a_lying_one_fails_the_job():
    from tests.audience.hostile_xlsx import huge_dimension, lying_sheet

    job = run(huge_dimension(), "wide.xlsx")
    assert (job.status, job.rows_done) == ("done", 2)
    assert contact("grace@example.com").first_name == "Grace"

    data = lying_sheet(rows=30, claims=256 * 1024, unpacks=64 * 1024 * 1024)
    job = importing.job_create(f=io.BytesIO(data), name="lies.xlsx", size=len(data))
    job = importing.job_start(job=job, options={}, dispatch=False)
    job = importing.run_job(job.pk)
    assert job.status == "failed"
    assert "This Excel file is damaged or incomplete" in job.error


def test_import_contacts_command_refuses_a_zip_bomb_with_a_clear_error(tmp_path):
    from tests.audience.hostile_xlsx import shared_strings_bomb

    path = tmp_path / "bomb.xlsx"
    path.write_bytes(shared_strings_bomb())
    started = time.monotonic()
    with pytest.raises(CommandError, match=r"unpacks to 3,072 MB.*IMPORT_MAX_UNCOMPRESSED"):
        call_command("import_contacts", str(path))
    assert time.monotonic() - started < 2
    assert ImportJob.objects.count() == 0
