from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from audience.apitokens import api_token_create

ALL = {"can_read_contacts": True, "can_write_contacts": True, "can_send_campaigns": True}


@pytest.fixture
def make_client(db):
    """An API client holding a new token with the given permissions (all by default)."""

    def make(**permissions) -> APIClient:
        api_token, text = api_token_create(name="shop backend", **{**ALL, **permissions})
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {text}")
        client.api_token = api_token
        client.token_text = text
        return client

    return make


@pytest.fixture
def api(make_client) -> APIClient:
    return make_client()
