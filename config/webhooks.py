"""Which provider tracking webhooks are mounted, what each needs to refuse forgeries, and
the guard that turns a refused or malformed post into a 4xx instead of a 500.

A tracking webhook suppresses contacts for good (campaigns.feedback), so only the
endpoints of the providers we send through are mounted, and each must be able to tell a
provider's post from anyone's: anymail only warns when it has no secret and then accepts
everything. settings.py refuses to start (DEBUG=0) and config/checks.py reports (DEBUG=1)
a mounted endpoint without its credentials; both read ``missing_credentials``.

This module is imported by settings.py: nothing here may read Django settings or import
anymail's views at import time.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Tracking:
    view: str  # anymail's tracking view class
    paths: tuple[str, ...]  # under /anymail/, as anymail.urls mounts them
    url_name: str  # anymail.urls' name, reversed as "anymail:<url_name>"
    # (environment variable, key in settings.ANYMAIL) that makes the endpoint refuse a
    # post that isn't the provider's.
    credential: tuple[str, str]


_BASIC_AUTH = ("ANYMAIL_WEBHOOK_SECRET", "WEBHOOK_SECRET")

# EMAIL_PROVIDER (or EMAIL_FAILOVER_PROVIDER) -> its tracking endpoint. Both providers'
# endpoints are mounted when a failover is set, and their events land on the same
# Delivery rows (campaigns.feedback finds them by metadata and recipient, which every
# message carries whichever provider sent it). Mailgun signs every post (HMAC with the
# webhook signing key, which anymail would otherwise take from the API key); every other
# one here is checked by basic auth only: anymail 15 does not verify SES's SNS signatures,
# and SendGrid's and Resend's own signatures need keys (and, for Resend, svix) we don't use.
TRACKING: dict[str, Tracking] = {
    "mailgun": Tracking(
        "anymail.webhooks.mailgun.MailgunTrackingWebhookView",
        ("mailgun/tracking/",),
        "mailgun_tracking_webhook",
        ("MAILGUN_WEBHOOK_SIGNING_KEY", "MAILGUN_WEBHOOK_SIGNING_KEY"),
    ),
    "postmark": Tracking(
        "anymail.webhooks.postmark.PostmarkTrackingWebhookView",
        ("postmark/tracking/",),
        "postmark_tracking_webhook",
        _BASIC_AUTH,
    ),
    "amazon_ses": Tracking(
        "anymail.webhooks.amazon_ses.AmazonSESTrackingWebhookView",
        ("amazon_ses/tracking/",),
        "amazon_ses_tracking_webhook",
        _BASIC_AUTH,
    ),
    "brevo": Tracking(
        "anymail.webhooks.brevo.BrevoTrackingWebhookView",
        # A Brevo webhook set up when it was SendinBlue may still post to the old path.
        ("brevo/tracking/", "sendinblue/tracking/"),
        "brevo_tracking_webhook",
        _BASIC_AUTH,
    ),
    "sparkpost": Tracking(
        "anymail.webhooks.sparkpost.SparkPostTrackingWebhookView",
        ("sparkpost/tracking/",),
        "sparkpost_tracking_webhook",
        _BASIC_AUTH,
    ),
    "mailjet": Tracking(
        "anymail.webhooks.mailjet.MailjetTrackingWebhookView",
        ("mailjet/tracking/",),
        "mailjet_tracking_webhook",
        _BASIC_AUTH,
    ),
    "resend": Tracking(
        "anymail.webhooks.resend.ResendTrackingWebhookView",
        ("resend/tracking/",),
        "resend_tracking_webhook",
        _BASIC_AUTH,
    ),
    "sendgrid": Tracking(
        "anymail.webhooks.sendgrid.SendGridTrackingWebhookView",
        ("sendgrid/tracking/",),
        "sendgrid_tracking_webhook",
        _BASIC_AUTH,
    ),
}


def tracking_providers(*providers: str) -> list[str]:
    """The providers among ``providers`` (the primary, then any failover) whose tracking
    endpoint is mounted; outbox, console and smtp have none."""
    mounted: list[str] = []
    for provider in providers:
        if provider in TRACKING and provider not in mounted:
            mounted.append(provider)
    return mounted


def missing_credentials(providers: Iterable[str], anymail: Mapping) -> list[tuple[str, str]]:
    """(provider, environment variable) for each mounted endpoint that would accept a
    forged post, because the setting that lets it refuse one is empty."""
    return [
        (provider, TRACKING[provider].credential[0])
        for provider in providers
        if not anymail.get(TRACKING[provider].credential[1])
    ]


def credentials_message(provider: str, variable: str) -> str:
    return (
        f"{variable} is not set, and the {provider} tracking webhook "
        f"(/anymail/{TRACKING[provider].paths[0]}) is mounted because EMAIL_PROVIDER "
        f"or EMAIL_FAILOVER_PROVIDER sends through {provider}: without it anyone can post "
        f"forged bounces and complaints that suppress contacts for good."
    )


def credentials_hint(variable: str) -> str:
    if variable == "ANYMAIL_WEBHOOK_SECRET":
        return (
            "Set ANYMAIL_WEBHOOK_SECRET=<user>:<password> (random) and put the same "
            "credentials in the webhook URL at the provider: "
            "https://<user>:<password>@your-site/anymail/<provider>/tracking/."
        )
    return f"Set {variable} to the webhook signing key shown in the provider's dashboard."


# --- the views -------------------------------------------------------------------------


class _Refused(Exception):
    pass


class _Malformed(Exception):
    pass


class _GuardedTrackingView:
    """Mixed in before an anymail tracking view: a post that can't be shown to come from
    the provider is 401 (no credentials) or 403 (wrong ones), a body the view can't read
    is 400. Anymail answers the first with a 400 and many of the second with a 500 (a
    KeyError or JSONDecodeError), which providers retry and logs report as our bug. An
    error after parsing (the database, in campaigns.feedback) stays a 500 so the
    provider tries again later."""

    def run_validators(self, request):
        from anymail.exceptions import AnymailWebhookValidationFailure
        from anymail.webhooks.base import AnymailBasicAuthMixin

        try:
            # Basic auth first: an unauthenticated post gets 401/403 whatever its body.
            if isinstance(self, AnymailBasicAuthMixin):
                AnymailBasicAuthMixin.validate_request(self, request)
            super().run_validators(request)
        except AnymailWebhookValidationFailure as exc:
            raise _Refused(str(exc)) from exc
        except Exception as exc:
            # SES parses the SNS envelope while validating.
            raise _Malformed(f"{type(exc).__name__}: {exc}") from exc

    def parse_events(self, request):
        try:
            # Some views parse lazily; reading all of it here keeps a bad event at the
            # end of a batch from failing halfway through the signals.
            return list(super().parse_events(request))
        except Exception as exc:
            raise _Malformed(f"{type(exc).__name__}: {exc}") from exc

    def post(self, request, *args, **kwargs):
        from django.http import HttpResponse

        try:
            return super().post(request, *args, **kwargs)
        except _Refused as exc:
            logger.warning("webhook %s refused: %s", request.path, exc)
            if getattr(self, "basic_auth", None) and not request.headers.get("Authorization"):
                response = HttpResponse("Credentials required.", status=401)
                response["WWW-Authenticate"] = 'Basic realm="webhook"'
                return response
            return HttpResponse("Forbidden.", status=403)
        except _Malformed as exc:
            logger.warning("webhook %s: malformed body: %s", request.path, str(exc)[:200])
            return HttpResponse("Malformed webhook body.", status=400)


def tracking_urlpatterns(providers: Iterable[str]) -> list:
    """URL patterns (to include under anymail/ with namespace "anymail") for the tracking
    endpoints of ``providers``, at the paths anymail.urls uses, so a webhook URL set up at
    the provider keeps working."""
    from django.urls import path
    from django.utils.module_loading import import_string

    patterns = []
    for provider in providers:
        tracking = TRACKING[provider]
        base = import_string(tracking.view)
        view = type(base.__name__, (_GuardedTrackingView, base), {"__module__": __name__})
        for index, route in enumerate(tracking.paths):
            name = tracking.url_name if index == 0 else f"{tracking.url_name}_{index}"
            patterns.append(path(route, view.as_view(), name=name))
    return patterns
