"""The OpenAPI schema at /api/v1/schema: valid, says how to authenticate, and the API
answers what schemathesis generates from it without a server error.

Bounded (a few examples per operation, a deadline per call) so the whole run stays
well under a minute; each run draws its cases again, seeded by the operation.
"""

from __future__ import annotations

import pytest
import schemathesis
import yaml
from django.core import signals
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from drf_spectacular.validation import validate_schema
from hypothesis import HealthCheck, settings
from rest_framework.test import APIClient
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from audience.apitokens import api_token_create
from audience.models import Contact
from campaigns.models import Campaign
from tests.factories import ContactFactory, TagFactory

SCHEMA = "/api/v1/schema"


@pytest.mark.django_db
def test_the_schema_is_valid_openapi_and_describes_the_bearer_token():
    response = APIClient().get(SCHEMA)
    assert response.status_code == 200
    schema = yaml.safe_load(response.content)
    validate_schema(schema)
    assert schema["components"]["securitySchemes"]["bearerToken"] == {
        "type": "http", "scheme": "bearer",
        "description": "An API token made in the admin (Audience > API tokens).",
    }  # fmt: skip
    operations = [op for path in schema["paths"].values() for op in path.values()]
    assert len(operations) >= 12
    for operation in operations:
        assert operation["security"] == [{"bearerToken": []}], operation["operationId"]
        assert {"401", "403", "429"} <= set(operation["responses"]), operation["operationId"]
    upsert = schema["paths"]["/api/v1/contacts/"]["post"]
    assert {"200", "201", "400", "409"} <= set(upsert["responses"])


@pytest.fixture
def app_in_test_transaction():
    """Calls of the WSGI application run in this thread, inside the test's transaction.
    As Django's own test client does, the request signals do not close the connection
    then (which, inside that transaction, would break it)."""
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    try:
        yield
    finally:
        signals.request_started.connect(close_old_connections)
        signals.request_finished.connect(close_old_connections)


# Loaded when the module is collected (the schema reads no database), from the project's
# WSGI application as a client would. (schemathesis.pytest.from_fixture, which would
# load it in a fixture, reads a node attribute pytest 9.2 no longer has.)
schema = schemathesis.openapi.from_wsgi(
    SCHEMA,
    get_wsgi_application(),
    config=SchemathesisConfig.from_dict(
        {"generation": {"max-examples": 25}, "phases": {"coverage": {"enabled": True}}}
    ),
)


@pytest.fixture
def seeded(db, settings, sender, app_in_test_transaction):
    settings.API_RATE = "100000/m"  # the run is hundreds of calls a minute on one token
    # Something to find, tag, export, erase and start, for the ids the cases draw.
    tag = TagFactory(name="vip")
    for status in Contact.Status.values:
        ContactFactory(status=status).tags.add(tag)
    Campaign.objects.create(name="Still here", subject="We're still here", body="Hello.")


@pytest.fixture
def bearer(db) -> dict[str, str]:
    _api_token, text = api_token_create(
        name="schemathesis", can_read_contacts=True, can_write_contacts=True,
        can_send_campaigns=True,
    )  # fmt: skip
    return {"Authorization": f"Bearer {text}"}


@schema.parametrize()
@settings(
    max_examples=25,
    deadline=5000,  # ms a call: generous, as CI shares its cores
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_the_api_answers_its_schema_without_a_server_error(case, bearer, seeded):
    case.call_and_validate(
        headers=bearer,
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
        ],
    )
