"""Who may call the API: a token made in the admin (shown once, stored hashed), its
permissions, its rate, and JSON refusals."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from audience.apitokens import LAST_USED_RESOLUTION, api_token_create, token_hash
from audience.models import ApiToken
from tests.factories import ContactFactory

pytestmark = pytest.mark.django_db

CONTACTS = "/api/v1/contacts/"


def _is_json_refusal(response, code: int) -> None:
    assert response.status_code == code, response.content
    assert response["Content-Type"].startswith("application/json")
    assert response.json()["detail"]


def test_no_token_is_401_json_with_the_scheme_to_use():
    response = APIClient().get(CONTACTS)
    _is_json_refusal(response, 401)
    assert response["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    "header", ["Bearer not-a-token", "Bearer", "Bearer two words", "Basic dXNlcjpwYXNz"]
)
def test_a_bad_token_is_401(header):
    response = APIClient().get(CONTACTS, HTTP_AUTHORIZATION=header)
    _is_json_refusal(response, 401)


def test_a_revoked_token_is_401(api):
    assert api.get(CONTACTS).status_code == 200
    ApiToken.objects.filter(pk=api.api_token.pk).update(revoked_at=timezone.now())
    response = api.get(CONTACTS)
    _is_json_refusal(response, 401)
    assert "revoked" in response.json()["detail"]


def test_only_the_hash_of_a_token_is_stored():
    api_token, text = api_token_create(name="n")
    assert api_token.key_hash == token_hash(text) != text
    assert api_token.prefix == text[:8]
    assert not ApiToken.objects.filter(key_hash=text).exists()
    assert len(text) >= 40


@pytest.mark.parametrize(
    ("flag", "method", "path", "body"),
    [
        ("can_read_contacts", "get", "/api/v1/contacts/", None),
        ("can_read_contacts", "get", "/api/v1/contacts/{id}/", None),
        ("can_read_contacts", "get", "/api/v1/contacts/{id}/export/", None),
        ("can_read_contacts", "get", "/api/v1/tags/", None),
        ("can_read_contacts", "get", "/api/v1/signups/", None),
        ("can_write_contacts", "post", "/api/v1/contacts/", {"email": "a@example.com"}),
        ("can_write_contacts", "post", "/api/v1/contacts/{id}/unsubscribe/", None),
        ("can_write_contacts", "post", "/api/v1/contacts/{id}/tags/", {"tags": ["x"]}),
        ("can_write_contacts", "delete", "/api/v1/contacts/{id}/tags/", {"tags": ["x"]}),
        ("can_write_contacts", "delete", "/api/v1/contacts/{id}/", None),
        ("can_write_contacts", "post", "/api/v1/signups/", {"form": "f", "email": "a@b.co"}),
        ("can_send_campaigns", "get", "/api/v1/campaigns/", None),
        ("can_send_campaigns", "post", "/api/v1/campaigns/1/start/", None),
        ("can_send_campaigns", "post", "/api/v1/campaigns/blast/", {"starter": "still-here"}),
    ],
)
def test_a_token_without_the_permission_is_403_and_changes_nothing(
    make_client, flag, method, path, body
):
    contact = ContactFactory()
    client = make_client(**{flag: False})
    response = getattr(client, method)(path.format(id=contact.pk), body, format="json")
    _is_json_refusal(response, 403)
    assert flag.removeprefix("can_").replace("_", " ") in response.json()["detail"]
    contact.refresh_from_db()
    assert contact.status == "subscribed"
    assert contact.tags.count() == 0


def test_the_permissions_are_the_tokens_own(make_client):
    reader = make_client(can_write_contacts=False, can_send_campaigns=False)
    assert reader.get(CONTACTS).status_code == 200
    assert reader.get("/api/v1/campaigns/").status_code == 403
    sender = make_client(can_read_contacts=False, can_write_contacts=False)
    assert sender.get("/api/v1/campaigns/").status_code == 200
    assert sender.get(CONTACTS).status_code == 403


def test_too_many_calls_are_429_with_retry_after(settings, make_client):
    settings.API_RATE = "3/h"  # an hour's window: the test does not straddle two
    first, second = make_client(), make_client()
    for _ in range(3):
        assert first.get(CONTACTS).status_code == 200
    response = first.get(CONTACTS)
    _is_json_refusal(response, 429)
    assert 1 <= int(response["Retry-After"]) <= 3600
    # Counted per token: another client is not held back by this one.
    assert second.get(CONTACTS).status_code == 200


def test_last_used_is_written_at_most_once_a_minute(api):
    api.get(CONTACTS)
    first = ApiToken.objects.get(pk=api.api_token.pk).last_used_at
    assert first is not None
    api.get(CONTACTS)
    assert ApiToken.objects.get(pk=api.api_token.pk).last_used_at == first
    ApiToken.objects.filter(pk=api.api_token.pk).update(
        last_used_at=timezone.now() - LAST_USED_RESOLUTION - timedelta(seconds=1)
    )
    api.get(CONTACTS)
    assert ApiToken.objects.get(pk=api.api_token.pk).last_used_at > first


def test_the_admin_shows_a_new_token_once_and_it_works(admin_client):
    response = admin_client.post(
        "/admin/audience/apitoken/add/",
        {"name": "Shopify app", "can_read_contacts": "on", "can_write_contacts": "on"},
        follow=True,
    )
    assert response.status_code == 200
    shown = re.search(r'<code id="new-api-token">([^<]+)</code>', response.content.decode())
    assert shown, response.content.decode()
    text = shown.group(1)
    api_token = ApiToken.objects.get()
    assert (api_token.name, api_token.key_hash) == ("Shopify app", token_hash(text))
    assert (api_token.can_write_contacts, api_token.can_send_campaigns) == (True, False)
    assert api_token.created_by.username == "admin"
    # Never again: not on the token's page, not in the list.
    for page in ("/admin/audience/apitoken/", f"/admin/audience/apitoken/{api_token.pk}/change/"):
        body = admin_client.get(page).content.decode()
        assert text not in body
        assert api_token.prefix in body
    assert APIClient().get(CONTACTS, HTTP_AUTHORIZATION=f"Bearer {text}").status_code == 200


def test_the_admin_revokes_a_token(admin_client, api):
    response = admin_client.post(
        "/admin/audience/apitoken/",
        {"action": "revoke_selected", "_selected_action": [api.api_token.pk]},
        follow=True,
    )
    assert response.status_code == 200
    assert ApiToken.objects.get(pk=api.api_token.pk).revoked_at is not None
    assert api.get(CONTACTS).status_code == 401
