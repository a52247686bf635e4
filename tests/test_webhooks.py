"""Provider tracking webhooks: only the configured provider's endpoint exists, it refuses
posts that aren't the provider's, and a body it can't read is a 400, not a 500."""

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.factories import ContactFactory
from tests.webhooks import mount_tracking

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parent.parent
SECRET = "stillhere:correct-horse-battery"


def _basic(credentials: str) -> dict:
    return {"HTTP_AUTHORIZATION": "Basic " + base64.b64encode(credentials.encode()).decode()}


def _postmark_complaint(client, email: str, **headers):
    body = {"RecordType": "SpamComplaint", "Type": "SpamComplaint", "TypeCode": 512,
            "Email": email, "MessageID": "forged-1", "BouncedAt": "2026-12-07T08:00:00Z",
            "Description": "forged", "Details": "", "Tag": "", "Metadata": {}}  # fmt: skip
    return client.post(
        "/anymail/postmark/tracking/", json.dumps(body), content_type="application/json",
        **headers,
    )  # fmt: skip


def _sendgrid_bounce(client, email: str, **headers):
    body = [{"email": email, "event": "bounce", "type": "bounce", "timestamp": 1765094400,
             "sg_event_id": "forged-2", "sg_message_id": "m1", "reason": "550 forged",
             "status": "5.1.1"}]  # fmt: skip
    return client.post(
        "/anymail/sendgrid/tracking/", json.dumps(body), content_type="application/json",
        **headers,
    )  # fmt: skip


def test_other_providers_endpoints_are_not_mounted_even_with_no_secret(client, settings):
    # Sending through Mailgun with only its signing key set: before, the Postmark and
    # SendGrid endpoints took these anonymous posts and suppressed the contact for good.
    settings.ANYMAIL = {"MAILGUN_WEBHOOK_SIGNING_KEY": "mailgun-key"}
    mount_tracking(settings, "mailgun")
    contact = ContactFactory(email="loyal@example.com")
    assert _postmark_complaint(client, "loyal@example.com").status_code == 404
    assert _sendgrid_bounce(client, "loyal@example.com").status_code == 404
    contact.refresh_from_db()
    assert contact.status == "subscribed"
    assert not contact.consent_events.exists()


def test_nothing_is_mounted_for_providers_without_webhooks(client, settings):
    mount_tracking(settings, "outbox")
    assert client.post("/anymail/mailgun/tracking/", "{}", content_type="x").status_code == 404


@pytest.mark.parametrize(
    ("provider", "post"), [("postmark", _postmark_complaint), ("sendgrid", _sendgrid_bounce)]
)
def test_a_post_without_the_right_basic_auth_is_refused(client, settings, provider, post):
    settings.ANYMAIL = {"WEBHOOK_SECRET": SECRET}
    mount_tracking(settings, provider)
    contact = ContactFactory(email="loyal@example.com")

    missing = post(client, "loyal@example.com")
    assert missing.status_code == 401
    assert missing["WWW-Authenticate"].startswith("Basic")
    assert post(client, "loyal@example.com", **_basic("stillhere:guess")).status_code == 403

    contact.refresh_from_db()
    assert contact.status == "subscribed"
    assert not contact.consent_events.exists()


@pytest.mark.parametrize(
    ("provider", "post", "status"),
    [("postmark", _postmark_complaint, "complained"), ("sendgrid", _sendgrid_bounce, "bounced")],
)
def test_the_providers_authenticated_post_suppresses(client, settings, provider, post, status):
    settings.ANYMAIL = {"WEBHOOK_SECRET": SECRET}
    mount_tracking(settings, provider)
    contact = ContactFactory(email="gone@example.com")
    assert post(client, "gone@example.com", **_basic(SECRET)).status_code == 200
    contact.refresh_from_db()
    assert contact.status == status
    assert contact.consent_events.get().method == f"provider-{provider}"


@pytest.mark.parametrize(
    "provider", ["postmark", "sendgrid", "brevo", "mailjet", "sparkpost", "resend"]
)
@pytest.mark.parametrize("body", ["not json", "", "[1]", "null", '"a string"'])
def test_a_malformed_body_is_a_400_never_a_500(settings, provider, body):
    from django.test import Client

    settings.ANYMAIL = {"WEBHOOK_SECRET": SECRET}
    mount_tracking(settings, provider)
    client = Client(raise_request_exception=False)
    response = client.post(
        f"/anymail/{provider}/tracking/", body, content_type="application/json", **_basic(SECRET)
    )
    assert response.status_code == 400, response.content


def test_a_malformed_mailgun_post_is_refused_not_a_500(settings):
    from django.test import Client

    settings.ANYMAIL = {"MAILGUN_WEBHOOK_SIGNING_KEY": "mailgun-key"}
    mount_tracking(settings, "mailgun")
    client = Client(raise_request_exception=False)
    for body, content_type in [("not json", "application/json"), ("", "text/plain")]:
        response = client.post("/anymail/mailgun/tracking/", body, content_type=content_type)
        assert response.status_code == 403


def _run(args: list[str], env: dict, tmp_path) -> subprocess.CompletedProcess:
    drop = {"DATABASE_URL", "DEBUG", "ANYMAIL_WEBHOOK_SECRET", "MAILGUN_WEBHOOK_SIGNING_KEY"}
    full = {k: v for k, v in os.environ.items() if k not in drop} | {
        "SECRET_KEY": "x" * 20 + "production-secret-key-value-0123456789abcdef",
        "EMAIL_API_KEY": "provider-api-key",
        "STILLHERE_VAR_DIR": str(tmp_path),
        "DJANGO_SETTINGS_MODULE": "config.settings",
        **env,
    }
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=full, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    ("provider", "variable"),
    [("postmark", "ANYMAIL_WEBHOOK_SECRET"), ("sendgrid", "ANYMAIL_WEBHOOK_SECRET"),
     ("amazon_ses", "ANYMAIL_WEBHOOK_SECRET"), ("mailgun", "MAILGUN_WEBHOOK_SIGNING_KEY")],
)  # fmt: skip
def test_production_refuses_to_start_with_an_open_webhook(tmp_path, provider, variable):
    # The signing key Mailgun checks is not ANYMAIL_WEBHOOK_SECRET, and the reverse.
    other = {"MAILGUN_WEBHOOK_SIGNING_KEY": "k"} if variable != "MAILGUN_WEBHOOK_SIGNING_KEY" else {
        "ANYMAIL_WEBHOOK_SECRET": SECRET
    }  # fmt: skip
    env = {"DEBUG": "0", "EMAIL_PROVIDER": provider, **other}
    result = _run(["-c", "import django; django.setup()"], env, tmp_path)
    assert result.returncode != 0
    assert f"ImproperlyConfigured: {variable} is not set" in result.stderr
    assert f"/anymail/{provider}/tracking/" in result.stderr

    ok = _run(["-c", "import django; django.setup()"], {**env, variable: SECRET}, tmp_path)
    assert ok.returncode == 0, ok.stderr


def test_check_deploy_reports_an_open_webhook(tmp_path):
    env = {"DEBUG": "1", "EMAIL_PROVIDER": "postmark"}
    result = _run(["manage.py", "check", "--deploy"], env, tmp_path)
    assert "stillhere.W001" in result.stderr + result.stdout
    assert "ANYMAIL_WEBHOOK_SECRET is not set" in result.stderr + result.stdout
    quiet = _run(["manage.py", "check", "--deploy"], {**env, "ANYMAIL_WEBHOOK_SECRET": SECRET},
                 tmp_path)  # fmt: skip
    assert "stillhere.W001" not in quiet.stderr + quiet.stdout
