"""The import's default mode follows the file's own consent evidence, and the preview
says what it will do and why; the import label is the contact's source."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from audience import exporting, importing
from audience.models import Contact, ImportJob
from tests.factories import ContactFactory

pytestmark = pytest.mark.django_db

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "imports"


@pytest.fixture(autouse=True)
def _media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"


def csv_bytes(rows) -> bytes:
    text = io.StringIO()
    csv.writer(text, lineterminator="\r\n").writerows(rows)
    return text.getvalue().encode()


def run(data: bytes, name: str = "contacts.csv", **options) -> ImportJob:
    """An import as a new owner runs it: upload, then start with the options untouched."""
    job = importing.job_create(f=io.BytesIO(data), name=name, size=len(data))
    job = importing.job_start(job=job, options=options or None, dispatch=False)
    job = importing.run_job(job.pk)
    assert job.status == "done", job.error
    return job


def status(email: str) -> str:
    return Contact.objects.get(email=email).status


# --- item 1: the default follows the file's evidence --------------------------------------


def test_a_mailchimp_subscribed_export_arrives_subscribed_with_its_opt_in_kept():
    job = run((FIXTURES / "mailchimp_subscribed.csv").read_bytes(), "members_export.csv")
    assert job.options["new_status"] == "file"
    ada = Contact.objects.get(email="ada@example.com")
    assert ada.status == "subscribed"
    assert ada.confirmed_at.isoformat() == "2023-03-01T09:16:40+00:00"
    assert ada.confirmation_sent_at is None  # nobody is mailed by an import's default
    event = ada.consent_events.get()
    assert (event.status_before, event.status_after) == ("", "subscribed")
    assert event.detail["evidence"]["optin_time"] == "2023-03-01 09:15:02"
    assert status("grace@example.com") == "subscribed"


def test_shopify_rows_that_accept_email_marketing_arrive_subscribed_the_others_stored():
    run((FIXTURES / "shopify_customers.csv").read_bytes(), "customers_export.csv")
    assert status("ines@example.com") == "subscribed"
    assert status("uma@example.com") == "subscribed"
    tom = Contact.objects.get(email="tom@example.com")  # "no": kept, never asked
    assert (tom.status, tom.confirmation_due, tom.confirmation_sent_at) == ("pending", False, None)
    ines = Contact.objects.get(email="ines@example.com")
    assert ines.consent_events.get().detail["evidence"] == {"consent_value": "yes"}


def test_the_file_s_opt_outs_are_kept_and_nobody_who_left_is_subscribed_again():
    ContactFactory(email="linus@example.com", status="subscribed")
    ContactFactory(email="kim@example.com", status="unsubscribed")
    run((FIXTURES / "mailchimp_unsubscribed.csv").read_bytes())
    assert status("linus@example.com") == "unsubscribed"
    assert status("margaret@example.com") == "unsubscribed"
    run((FIXTURES / "klaviyo_profiles.csv").read_bytes())
    assert status("kim@example.com") == "unsubscribed"  # "SUBSCRIBED" in the file: still out
    assert status("lee@example.com") == "unsubscribed"


def test_a_sheet_of_unknown_origin_proves_nobody_s_consent_unless_the_owner_says_so():
    rows = [["Email", "Newsletter", "Consent date"], ["sam@example.com", "yes", "2024-01-01"]]
    run(csv_bytes(rows))
    assert status("sam@example.com") == "pending"
    rows[1][0] = "sue@example.com"
    run(csv_bytes(rows), new_status="consent")  # the owner vouches for it
    assert status("sue@example.com") == "subscribed"


def test_a_consent_column_remapped_by_hand_is_not_the_platform_s_evidence():
    data = csv_bytes(
        [["Email", "Accepts Email Marketing", "Note"], ["nat@example.com", "no", "yes"]]
    )
    job = importing.job_create(f=io.BytesIO(data), name="c.csv", size=len(data))
    assert job.profile == "shopify"
    mapping = ["email", "ignore", "consent"]  # the owner points "consent" at a note
    importing.job_start(job=job, mapping=mapping, options={"new_status": "file"}, dispatch=False)
    importing.run_job(job.pk)
    assert status("nat@example.com") == "pending"


def test_the_other_modes_can_still_be_chosen():
    data = (FIXTURES / "shopify_customers.csv").read_bytes()
    run(data, new_status="none")
    assert status("ines@example.com") == "pending"
    assert not Contact.objects.filter(confirmation_due=True).exists()


def test_a_meta_lead_ads_download_records_no_consent_so_its_leads_are_stored():
    rows = [
        ["id", "created_time", "ad_id", "full_name", "email"],
        ["l:1", "2024-07-01T10:00:00+0000", "ag:1", "Zoe", "zoe@example.com"],
    ]
    run(csv_bytes(rows))
    assert status("zoe@example.com") == "pending"


# --- the preview says what will happen and why -------------------------------------------


@pytest.fixture
def admin_client_(client, django_user_model):
    user = django_user_model.objects.create_superuser("boss", "boss@example.com", "pw-123456789")
    client.force_login(user)
    return client


def _upload(client, name: str, data: bytes):
    response = client.post(
        reverse("admin:audience_importjob_add"),
        {"file": SimpleUploadedFile(name, data, content_type="text/csv"), "unknown": "attribute"},
    )
    assert response.status_code == 302, response.content.decode()[:500]
    return ImportJob.objects.latest("pk")


def _text(page, element_id: str) -> str:
    html = page.content.decode()
    start = html.index(f'id="{element_id}">') + len(f'id="{element_id}">')
    return html[start : html.index("<", start)]


def test_the_preview_counts_and_explains_the_default(admin_client_):
    ContactFactory(email="tom@example.com", status="subscribed")  # the file says "no": kept
    data = (FIXTURES / "shopify_customers.csv").read_bytes() + (
        b"'7004,Una,Dee,una@example.com,unsubscribed,,,,US,,,no,0.00,0,,no,\r\n"
    )
    job = _upload(admin_client_, "customers_export.csv", data)
    page = admin_client_.get(reverse("admin:audience_importjob_preview", args=[job.pk]))
    html = page.content.decode()
    assert '<input type="radio" name="new_status" value="file"' in html
    assert 'value="file" required id="id_new_status_0" checked' in html
    assert _text(page, "consent-subscribed") == "2"  # ines, uma
    assert _text(page, "consent-kept") == "1"  # una
    assert _text(page, "consent-stored") == "0"  # tom is known: his status is his own
    why = _text(page, "consent-why")
    assert "Shopify customers export" in why and "Accepts Email Marketing = yes" in why
    assert "stay suppressed" in why
    assert Contact.objects.count() == 1  # a preview stores nothing

    generic = _upload(admin_client_, "list.csv", csv_bytes([["Email"], ["a@example.com"]]))
    page = admin_client_.get(reverse("admin:audience_importjob_preview", args=[generic.pk]))
    assert (_text(page, "consent-subscribed"), _text(page, "consent-stored")) == ("0", "1")
    assert "cannot prove anyone" in _text(page, "consent-why")


def test_the_preview_explains_a_mode_the_owner_picked(admin_client_):
    job = _upload(
        admin_client_, "members.csv", (FIXTURES / "mailchimp_subscribed.csv").read_bytes()
    )
    data = {f"col_{i}": t for i, t in enumerate(job.mapping)}
    data.update({"tags": "", "source": "", "new_status": "pending", "unknown": "attribute"})
    data["action"] = "refresh"
    page = admin_client_.post(
        reverse("admin:audience_importjob_preview", args=[job.pk]), data, follow=True
    )
    assert _text(page, "consent-asked") == "2"
    assert _text(page, "consent-subscribed") == "0"
    assert "double opt-in" in _text(page, "consent-why")


# --- item 3: the import label is the contact's source -------------------------------------


def _export_rows() -> dict[str, dict]:
    body = b"".join(exporting.stream_csv(Contact.objects.all())).decode("utf-8-sig")
    rows = list(csv.reader(io.StringIO(body)))
    return {r[0]: dict(zip(rows[0], r, strict=True)) for r in rows[1:]}


def test_the_import_label_is_the_contact_s_source_in_the_preview_and_the_export(admin_client_):
    job = _upload(
        admin_client_, "customers_export.csv", (FIXTURES / "shopify_customers.csv").read_bytes()
    )
    data = {f"col_{i}": t for i, t in enumerate(job.mapping)}
    data.update(
        {"tags": "", "source": "shopify-2026", "new_status": "file", "unknown": "attribute"}
    )
    data["action"] = "refresh"
    page = admin_client_.post(
        reverse("admin:audience_importjob_preview", args=[job.pk]), data, follow=True
    )
    assert "<td>import: shopify-2026</td>" in page.content.decode()
    data["action"] = "start"
    admin_client_.post(reverse("admin:audience_importjob_preview", args=[job.pk]), data)
    importing.run_job(job.pk)

    ines = Contact.objects.get(email="ines@example.com")
    assert ines.source == "import"
    exported = _export_rows()["ines@example.com"]
    assert exported["source"] == "import: shopify-2026"
    assert "shopify-2026" not in exported["attributes"]  # said once, in the source column
    assert ines.consent_events.get().detail["source"] == "shopify-2026"
    # The contact list and the contact's page say the same as the export.
    listing = admin_client_.get(reverse("admin:audience_contact_changelist")).content.decode()
    assert '<td class="field-source_label">import: shopify-2026</td>' in listing
    page = admin_client_.get(reverse("admin:audience_contact_change", args=[ines.pk]))
    assert "import: shopify-2026" in page.content.decode()
