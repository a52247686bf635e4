"""The contact list's count stops at a bound (no COUNT(*) over a million rows), says so
("10,000+"), and still lets the owner page on past it."""

from __future__ import annotations

import re

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from audience.admin import BoundedCountPaginator
from audience.models import Contact

pytestmark = pytest.mark.django_db

LIST = "/admin/audience/contact/"


@pytest.fixture
def contacts(monkeypatch):
    """260 contacts and a bound of 100: two counted pages of 50, then three more and a bit."""
    monkeypatch.setattr(BoundedCountPaginator, "LIMIT", 100)
    Contact.objects.bulk_create(
        Contact(email=f"p{i:03d}@example.com", status=Contact.Status.SUBSCRIBED) for i in range(260)
    )
    return list(Contact.objects.order_by("-id").values_list("email", flat=True))


def _page(client, **params):
    with CaptureQueriesContext(connection) as queries:
        response = client.get(LIST, params)
    assert response.status_code == 200
    body = response.content.decode()
    shown = [c.email for c in response.context["cl"].result_list]
    return body, shown, [q["sql"] for q in queries.captured_queries]


def _links(body):
    prev = re.search(r'<a href="\?([^"]*)" class="prev"', body)
    nxt = re.search(r'<a href="\?([^"]*)" class="next"', body)
    return (prev and prev.group(1)), (nxt and nxt.group(1))


def test_the_count_says_more_than_the_bound_and_never_counts_everything(admin_client, contacts):
    body, shown, sql = _page(admin_client)
    assert '<span id="contact-count">100+</span> contacts' in body
    assert shown == contacts[:50]
    assert _links(body) == (None, "p=2")
    counts = [q for q in sql if "COUNT(" in q.upper()]
    assert counts, "the list counted nothing"
    assert all("LIMIT 101" in q.upper() for q in counts), counts


def test_pages_go_on_past_the_bound_until_the_rows_run_out(admin_client, contacts):
    body, shown, _ = _page(admin_client, p="2")  # the last counted page
    assert shown == contacts[50:100]
    assert _links(body) == ("p=1", "p=3")

    body, shown, sql = _page(admin_client, p="4")
    assert shown == contacts[150:200]
    assert _links(body) == ("p=3", "p=5")
    assert '<span class="this-page">4</span>' in body
    assert '<span id="contact-count">100+</span>' in body
    assert all("LIMIT 101" in q.upper() for q in sql if "COUNT(" in q.upper())

    body, shown, _ = _page(admin_client, p="6")
    assert shown == contacts[250:]
    assert _links(body) == ("p=5", None)

    body, shown, _ = _page(admin_client, p="7")
    assert shown == []
    assert _links(body) == ("p=6", None)


def test_a_search_says_more_than_the_bound_too(admin_client, contacts):
    body, shown, _ = _page(admin_client, q="p")
    assert "100+ results" in body
    assert len(shown) == 50


def test_under_the_bound_the_count_is_exact_and_pages_end(admin_client, monkeypatch):
    monkeypatch.setattr(BoundedCountPaginator, "LIMIT", 100)
    Contact.objects.bulk_create(Contact(email=f"q{i}@example.com") for i in range(72))
    body, shown, _ = _page(admin_client)
    assert '<span id="contact-count">72</span> contacts' in body
    assert _links(body) == (None, "p=2")
    body, shown, _ = _page(admin_client, p="2")
    assert len(shown) == 22
    assert _links(body) == ("p=1", None)
    # A page past the end of an exactly counted list is the admin's usual error.
    assert admin_client.get(LIST, {"p": "3"}).status_code == 302
