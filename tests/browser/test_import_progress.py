"""The import progress page shows its red error box only when the import has an error."""

from __future__ import annotations

import pytest
from django.utils import timezone

from audience.models import ImportJob
from tests.browser.admin_session import sign_in_owner

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def _expect():
    from playwright.sync_api import expect

    return expect


@pytest.fixture
def owner_page(page, stillhere, django_user_model):
    owner = sign_in_owner(page, stillhere.url, django_user_model)
    page.owner = owner
    return page


def _job(owner, **fields) -> ImportJob:
    now = timezone.now()
    values = {"original_name": "customers.csv", "rows_total": 1200, "rows_done": 0}
    values.update(fields)
    return ImportJob.objects.create(created_by=owner, started_at=now, **values)


def test_no_error_box_while_running_or_done_and_one_when_it_fails(owner_page, stillhere):
    expect = _expect()
    page = owner_page
    done = _job(
        page.owner,
        status=ImportJob.Status.DONE,
        rows_done=1200,
        counts={"new": 1180, "invalid": 20},
        finished_at=timezone.now(),
    )
    page.goto(f"{stillhere.url}/admin/audience/importjob/{done.pk}/progress/")
    expect(page.locator("#summary")).to_contain_text("1,180 new")
    expect(page.locator("#error")).to_be_hidden()
    assert page.locator(".errornote:visible").count() == 0

    running = _job(page.owner, status=ImportJob.Status.RUNNING, rows_done=300)
    page.goto(f"{stillhere.url}/admin/audience/importjob/{running.pk}/progress/")
    expect(page.locator("#numbers")).to_contain_text("300 of 1,200 rows")
    expect(page.locator("#error")).to_be_hidden()

    # The worker fails it: the page, polling, shows the error in the red box.
    running.status = ImportJob.Status.FAILED
    running.error = "The file ended in the middle of a quoted field (row 301)."
    running.save(update_fields=["status", "error"])
    expect(page.locator("#error")).to_be_visible()
    expect(page.locator("#error")).to_have_text(running.error)
    expect(page.locator("#status")).to_have_text("Failed")
