"""The site's root, where the admin's "View site" leads: a real page, never a 404."""

import pytest

pytestmark = pytest.mark.django_db


def test_view_site_from_the_admin_leads_a_staff_user_back_to_the_admin(admin_client):
    index = admin_client.get("/admin/").content.decode()
    assert '<a href="/">View site</a>' in index
    response = admin_client.get("/")
    assert response.status_code == 302
    assert response["Location"] == "/admin/"
    assert "no-cache" in response["Cache-Control"]


def test_a_visitor_at_the_root_sees_that_stillhere_is_running(client):
    response = client.get("/")
    assert response.status_code == 200
    body = response.content.decode()
    assert '<h1 class="h3 mb-2">Stillhere is running</h1>' in body
    assert 'href="/admin/"' in body


def test_a_signed_in_user_who_is_not_staff_gets_the_page_not_the_admin(client, django_user_model):
    client.force_login(django_user_model.objects.create_user("reader", password="pw"))
    assert client.get("/").status_code == 200


def test_the_root_answers_only_get(client):
    assert client.post("/").status_code == 405
