"""The admin import flow: upload → preview → run (Celery) → progress → summary."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.contrib.auth.models import Permission, User
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from django.utils import timezone

from audience import importing
from audience.models import Contact, ImportJob, WelcomeEmail
from campaigns.models import OutboxMessage
from tests.factories import SignupFormFactory
from tests.polling import wait_for

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "imports"


@pytest.fixture(autouse=True)
def _media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"


@pytest.fixture
def admin_client_(client, django_user_model):
    user = django_user_model.objects.create_superuser("boss", "boss@example.com", "pw-123456789")
    client.force_login(user)
    return client


def _upload(client, name: str, data: bytes | None = None, unknown: str = "attribute"):
    data = data if data is not None else (FIXTURES / name).read_bytes()
    return client.post(
        reverse("admin:audience_importjob_add"),
        {"file": SimpleUploadedFile(name, data, content_type="text/csv"), "unknown": unknown},
    )


def _start_data(job: ImportJob, **options) -> dict:
    data = {f"col_{i}": target for i, target in enumerate(job.mapping)}
    data.update({"tags": "", "source": "spring", "new_status": "none", "unknown": "attribute"})
    data.update(options)
    data["action"] = "start"
    return data


@pytest.mark.django_db
def test_upload_shows_a_preview_then_runs_with_progress_and_summary(
    admin_client_, django_capture_on_commit_callbacks
):
    rows = (FIXTURES / "mailchimp_subscribed.csv").read_bytes() + b"broken-address,X,Y\r\n"
    response = _upload(admin_client_, "members.csv", rows)
    job = ImportJob.objects.get()
    assert response.status_code == 302
    assert response["Location"] == reverse("admin:audience_importjob_preview", args=[job.pk])

    page = admin_client_.get(response["Location"]).content.decode()
    assert "Mailchimp audience export" in page
    assert 'id="detected-encoding">utf-8<' in page
    assert "ada@example.com" in page and "invalid email address" in page
    assert '<option value="optin_time" selected>' in page
    assert Contact.objects.count() == 0

    # Edit the mapping: keep MEMBER_RATING as an attribute, and start.
    data = _start_data(job, tags="spring, vip", new_status="consent")
    data[f"col_{job.columns.index('MEMBER_RATING')}"] = "attribute"
    with django_capture_on_commit_callbacks() as callbacks:
        response = admin_client_.post(
            reverse("admin:audience_importjob_preview", args=[job.pk]), data
        )
    assert response["Location"] == reverse("admin:audience_importjob_progress", args=[job.pk])
    assert len(callbacks) == 1  # run_import dispatched after commit
    job.refresh_from_db()
    assert job.status == "queued"
    assert job.options == {"tags": ["spring", "vip"], "source": "spring",
                           "new_status": "consent", "unknown": "attribute",
                           "welcome_form": None}  # fmt: skip

    importing.run_job(job.pk)  # what the worker does (the worker test below runs it for real)
    state = admin_client_.get(
        reverse("admin:audience_importjob_progress_json", args=[job.pk])
    ).json()
    assert state["status"] == "done"
    assert (state["rows_done"], state["rows_total"], state["percent"]) == (3, 3, 100.0)
    assert state["counts"]["new"] == 2 and state["counts"]["invalid"] == 1
    assert state["rate"] > 0

    ada = Contact.objects.get(email="ada@example.com")
    assert ada.status == "subscribed"
    assert ada.attributes["MEMBER_RATING"] == "4"
    assert ada.attributes["import_source"] == "spring"
    # "vip" from the options and "VIP" from the file are one tag (names are case-insensitive).
    assert {t.lower() for t in ada.tags.values_list("name", flat=True)} == {
        "vip",
        "newsletter",
        "spring",
    }

    rejected = admin_client_.get(state["rejected_url"])
    body = b"".join(rejected.streaming_content).decode("utf-8-sig")
    assert "broken-address" in body and "invalid email address" in body
    progress = admin_client_.get(reverse("admin:audience_importjob_progress", args=[job.pk]))
    assert b'id="bar"' in progress.content


@pytest.mark.django_db
def test_an_import_can_owe_a_form_welcome_to_whom_it_subscribes(admin_client_):
    greeted = SignupFormFactory(
        name="Newsletter", welcome_enabled=True, welcome_subject="Hi", welcome_body="Hi"
    )
    SignupFormFactory(name="Quiet form")  # no welcome: not offered
    _upload(admin_client_, "mailchimp_subscribed.csv")
    job = ImportJob.objects.get()
    preview = reverse("admin:audience_importjob_preview", args=[job.pk])
    page = admin_client_.get(preview).content.decode()
    assert f'<option value="{greeted.pk}">Newsletter</option>' in page
    assert "Quiet form" not in page
    refused = admin_client_.post(
        preview, _start_data(job, new_status="pending", welcome_form=greeted.pk)
    )
    assert "only to contacts the import subscribes" in refused.content.decode()
    assert ImportJob.objects.get().status == ImportJob.Status.UPLOADED
    admin_client_.post(preview, _start_data(job, new_status="consent", welcome_form=greeted.pk))
    importing.run_job(job.pk)
    owed = WelcomeEmail.objects.filter(signup_form=greeted)
    assert set(owed.values_list("contact__email", flat=True)) == set(
        Contact.objects.filter(status=Contact.Status.SUBSCRIBED).values_list("email", flat=True)
    )
    assert owed.exists()


@pytest.mark.django_db
def test_bad_upload_shows_the_message_and_stores_nothing(admin_client_):
    response = _upload(admin_client_, "junk.csv", bytes(range(256)) * 20)
    assert response.status_code == 200
    assert "does not look like a spreadsheet" in response.content.decode()
    assert ImportJob.objects.count() == 0

    response = _upload(admin_client_, "names.csv", b"Name,Phone\r\nAnn,1\r\n")
    assert "No email column" in response.content.decode()
    assert ImportJob.objects.count() == 0


@pytest.mark.django_db
def test_mapping_without_email_is_refused_in_the_preview(admin_client_):
    _upload(admin_client_, "woocommerce_customers.csv")
    job = ImportJob.objects.get()
    data = _start_data(job)
    data[f"col_{job.mapping.index('email')}"] = "ignore"
    response = admin_client_.post(reverse("admin:audience_importjob_preview", args=[job.pk]), data)
    assert "Choose the column that holds the email address." in response.content.decode()
    job.refresh_from_db()
    assert job.status == "uploaded"


@pytest.mark.django_db
def test_contact_list_links_to_import_and_export(admin_client_, client):
    page = admin_client_.get(reverse("admin:audience_contact_changelist") + "?status=pending")
    html = page.content.decode()
    assert reverse("admin:audience_importjob_add") in html
    assert reverse("admin:audience_contact_export") + "?status=pending" in html

    clerk = User.objects.create_user("clerk", password="pw-123456789", is_staff=True)
    clerk.user_permissions.add(Permission.objects.get(codename="view_contact"))
    client.force_login(clerk)
    html = client.get(reverse("admin:audience_contact_changelist")).content.decode()
    assert reverse("admin:audience_importjob_add") not in html
    assert reverse("admin:audience_contact_export") not in html
    assert client.get(reverse("admin:audience_importjob_add")).status_code == 403


@pytest.mark.worker
def test_import_runs_on_the_celery_worker_and_sends_double_opt_in(
    celery_worker, admin_client_, settings
):
    settings.EMAIL_BACKEND = "campaigns.outbox.OutboxEmailBackend"
    _upload(admin_client_, "shopify_customers.csv")
    job = ImportJob.objects.get()
    admin_client_.post(
        reverse("admin:audience_importjob_preview", args=[job.pk]),
        _start_data(job, new_status="pending"),
    )
    url = reverse("admin:audience_importjob_progress_json", args=[job.pk])
    assert wait_for(lambda: admin_client_.get(url).json()["status"] == "done")
    assert wait_for(lambda: Contact.objects.count() == 3)
    # Double opt-in for the two who accepted marketing; none for the one who said no.
    assert wait_for(lambda: OutboxMessage.objects.count() == 2)
    time.sleep(0.5)  # a mail to the one who said no would have come by now
    to = {"ines@example.com", "uma@example.com"}
    assert wait_for(lambda: set(OutboxMessage.objects.values_list("to", flat=True)) == to)


@pytest.mark.django_db
def test_upload_over_the_size_limit_is_refused_before_it_is_read(admin_client_, settings):
    settings.IMPORT_MAX_BYTES = 1024
    big = b"Email\r\n" + b"".join(f"p{i}@example.com\r\n".encode() for i in range(20_000))
    response = _upload(admin_client_, "big.csv", big)
    assert response.status_code == 200
    assert "IMPORT_MAX_BYTES" in response.content.decode()
    assert ImportJob.objects.count() == 0


@pytest.mark.django_db
def test_a_finished_import_can_be_run_again_and_changes_nothing(
    admin_client_, django_capture_on_commit_callbacks
):
    _upload(admin_client_, "klaviyo_profiles.csv")
    job = ImportJob.objects.get()
    importing.job_start(job=job, options={"new_status": "consent"}, dispatch=False)
    importing.run_job(job.pk)
    before = list(Contact.objects.order_by("pk").values())
    with django_capture_on_commit_callbacks() as callbacks:
        admin_client_.post(
            reverse("admin:audience_importjob_changelist"),
            {"action": "rerun_selected", "_selected_action": [job.pk]},
        )
    assert len(callbacks) == 1
    job.refresh_from_db()
    assert job.status == "queued"
    job = importing.run_job(job.pk)
    assert job.counts.get("new", 0) == 0 and job.counts.get("updated", 0) == 0
    assert (job.counts["unchanged"], job.counts["suppressed"]) == (2, 1)  # lee unsubscribed
    assert list(Contact.objects.order_by("pk").values()) == before

    admin_client_.post(
        reverse("admin:audience_importjob_changelist"),
        {"action": "delete_selected", "_selected_action": [job.pk], "post": "yes"},
    )
    assert ImportJob.objects.count() == 0


@pytest.mark.worker
def test_beat_resumes_an_import_whose_worker_was_killed(celery_worker, admin_client_):
    from audience.tasks import resume_stalled_imports

    _upload(admin_client_, "klaviyo_profiles.csv")
    job = ImportJob.objects.get()
    importing.job_start(job=job, options={"new_status": "consent"}, dispatch=False)
    # The worker that claimed it died after its first progress save, ten minutes ago.
    ImportJob.objects.filter(pk=job.pk).update(
        status="running", rows_done=1, heartbeat_at=timezone.now() - timedelta(minutes=10)
    )
    resume_stalled_imports.delay()  # what beat sends every minute
    url = reverse("admin:audience_importjob_progress_json", args=[job.pk])
    assert wait_for(lambda: admin_client_.get(url).json()["status"] == "done")
    assert wait_for(lambda: Contact.objects.filter(status="subscribed").exists())


@pytest.mark.django_db
@pytest.mark.parametrize("object_id", ["abc", "1x", "٣", "-1"])
def test_a_non_numeric_import_job_id_is_not_found(admin_client_, object_id):
    # The admin's change URL accepts any text as the id; a typo or a probe is a 404.
    for url in (
        f"/admin/audience/importjob/{object_id}/change/",
        f"/admin/audience/importjob/{object_id}/",
    ):
        response = admin_client_.get(url, follow=True)
        assert response.status_code == 404, url


@pytest.mark.django_db
def test_an_xlsx_zip_bomb_upload_is_answered_at_once_with_a_form_error(admin_client_):
    from tests.audience.hostile_xlsx import shared_strings_bomb

    data = shared_strings_bomb()
    started = time.monotonic()
    response = _upload(admin_client_, "bomb.xlsx", data)
    assert time.monotonic() - started < 2
    assert response.status_code == 200
    errors = response.context["form"].errors["file"]
    assert "unpacks to 3,072 MB" in errors[0] and "IMPORT_MAX_UNCOMPRESSED_BYTES" in errors[0]
    assert ImportJob.objects.count() == 0
