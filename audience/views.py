"""Public endpoints: signup (four embeddings), confirm, unsubscribe, preferences.

Every one assumes a bot is on the other side: origins are checked, sizes capped,
rates limited in the cache, and answers never reveal whether an address is known.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import lru_cache
from urllib.parse import parse_qsl

from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_http_methods

from audience import evidence, intake, origins, selectors, services, snippets, throttle
from audience.forms import PreferencesForm, PublicSignupForm
from audience.models import SignupForm
from audience.tokens import contact_url, read_token

_client_ip = evidence.client_ip


def _evidence(request: HttpRequest, method: str, ip: str | None = None) -> services.Evidence:
    return evidence.from_request(request, method, ip=ip)


def _site_origin() -> str:
    return snippets.origin_of(settings.SITE_URL)


def _active_form(key: str) -> SignupForm:
    signup_form = selectors.signup_form_active(key)
    if signup_form is None:
        raise Http404("No such form")
    return signup_form


def _cors(response: HttpResponse, origin: str | None, *, preflight: bool = False) -> HttpResponse:
    """Let the shop's page read this answer. What it may send is only said in answer to
    the preflight; the answer to the POST itself needs only the origin."""
    if origin:
        response["Access-Control-Allow-Origin"] = origin
        if preflight:
            response["Access-Control-Allow-Methods"] = "POST, OPTIONS"
            response["Access-Control-Allow-Headers"] = "Accept, Content-Type"
            response["Access-Control-Max-Age"] = "600"
    response["Vary"] = "Origin"
    return response


def _wants_json(request: HttpRequest) -> bool:
    return "application/json" in request.META.get("HTTP_ACCEPT", "")


def _posted(request: HttpRequest) -> Mapping[str, str]:
    """The submitted fields. The embeds post urlencoded UTF-8: parsed here into a plain
    dict (the last value of a repeated field wins, as with QueryDict.get), at a third of
    what building request.POST costs (see bench/signup_instructions.py). Anything else,
    and anything odd, goes through request.POST, which also says what is wrong with it."""
    urlencoded = request.content_type == "application/x-www-form-urlencoded"
    if not urlencoded or (request.encoding or "utf-8").lower() != "utf-8":
        return request.POST
    try:
        text = request.body.decode()
        limit = settings.DATA_UPLOAD_MAX_NUMBER_FIELDS
        return dict(parse_qsl(text, keep_blank_values=True, max_num_fields=limit))
    except ValueError:  # not UTF-8 (UnicodeDecodeError), or too many fields
        return request.POST


def _signup_limits(ip: str | None, key: str) -> list[tuple[str, str]]:
    """The IP's bucket first: a request over it is charged to no other (audience.throttle)."""
    return [
        (f"signup-ip:{ip or 'unknown'}", settings.SIGNUP_RATE_PER_IP),
        (f"signup-form:{key}", settings.SIGNUP_RATE_PER_FORM),
    ]


def _frameable(response: HttpResponse, signup_form: SignupForm) -> HttpResponse:
    """Let the form's allowed origins (and nobody else) frame this page: the iframe embed
    navigates inside its frame to the re-rendered form and to the thank-you page."""
    response.xframe_options_exempt = True
    ancestors = " ".join(["'self'", *signup_form.origins])
    response["Content-Security-Policy"] = f"frame-ancestors {ancestors}"
    return response


def _error(request, signup_form, origin, status, message, form=None):
    if _wants_json(request):
        errors = form.errors_json() if form is not None else {"__all__": [message]}
        return _cors(JsonResponse({"ok": False, "errors": errors}, status=status), origin)
    if form is None:
        return HttpResponse(message, status=status, content_type="text/plain; charset=utf-8")
    context = _form_context(signup_form, form)
    return _frameable(
        render(request, "audience/hosted_form.html", context, status=status), signup_form
    )


@lru_cache(maxsize=256)
def _success_json(message: str) -> bytes:
    return json.dumps({"ok": True, "message": message}).encode()


def _success(request, signup_form, origin):
    if _wants_json(request):
        body = _success_json(signup_form.success_message)
        return _cors(HttpResponse(body, content_type="application/json"), origin)
    target = signup_form.redirect_url or reverse(
        "audience:signup-thanks", args=[signup_form.public_key]
    )
    return redirect(target, permanent=False)


@csrf_exempt  # posted from other sites by design; protected by origin, stamp, honeypot, rates
@require_http_methods(["POST", "OPTIONS"])
def signup_submit(request: HttpRequest, key: str) -> HttpResponse:
    signup_form = _active_form(key)
    origin = request.META.get("HTTP_ORIGIN")
    if origin and origin not in {_site_origin(), *signup_form.origins}:
        # Shown to the owner on the form's admin page, with a button to allow it.
        origins.refusal_record(signup_form=signup_form, origin=origin)
        return _error(
            request, signup_form, None, 403, "This form does not accept signups from this site."
        )
    cors_origin = origin if origin and origin != _site_origin() else None
    if request.method == "OPTIONS":
        return _cors(HttpResponse(status=204), cors_origin, preflight=True)
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = settings.SIGNUP_MAX_BYTES + 1
    if length > settings.SIGNUP_MAX_BYTES:
        return _error(request, signup_form, cors_origin, 413, "The submission is too large.")
    form = PublicSignupForm(_posted(request), signup_form=signup_form)
    ip = _client_ip(request)
    limits = _signup_limits(ip, key)
    too_many = "Too many signups right now; try again soon."
    # Bots and bad input count against their IP's limit only: one bot must not use up
    # the form's limit and lock every other visitor out. A good signup is counted (IP
    # first, then form) by intake.signup in the same round trip that takes it.
    if form.is_bot(require_stamp=_wants_json(request)):
        if throttle.over_limit(limits[:1]):
            return _error(request, signup_form, cors_origin, 429, too_many)
        # Answer as if it worked: a bot learns nothing, and stores nothing.
        return _success(request, signup_form, cors_origin)
    if form.stamp_expired():
        form.add_error(None, "This form has expired. Please reload the page and try again.")
    if not form.is_valid():
        if throttle.over_limit(limits[:1]):
            return _error(request, signup_form, cors_origin, 429, too_many)
        return _error(request, signup_form, cors_origin, 422, "", form=form)
    data = form.cleaned_data
    method = "form-script" if _wants_json(request) else "form-html"
    taken = intake.signup(
        form=signup_form,
        email=data["email"],
        first_name=data.get("first_name", ""),
        last_name=data.get("last_name", ""),
        phone=data.get("phone", ""),
        evidence=_evidence(request, method, ip),
        limits=limits,
    )
    if not taken:
        return _error(request, signup_form, cors_origin, 429, too_many)
    return _success(request, signup_form, cors_origin)


def _form_context(signup_form: SignupForm, form: PublicSignupForm | None = None, **extra):
    """What every rendering of a signup form needs: a fresh form (or the bound one with
    its errors) and where it posts."""
    return {
        "signup_form": signup_form,
        "form": form or PublicSignupForm(signup_form=signup_form),
        "action": snippets.submit_url(signup_form),
        **extra,
    }


@require_GET
def signup_page(request: HttpRequest, key: str) -> HttpResponse:
    """The hosted signup page: a URL to put in a social bio."""
    context = _form_context(_active_form(key))
    return render(request, "audience/hosted_form.html", context)


def _note_refused_framing(request: HttpRequest, signup_form: SignupForm) -> None:
    """The browser, not us, refuses a frame on a site missing from frame-ancestors; the
    frame's request still says where it is (Sec-Fetch-Dest, and the Referer's origin under
    the default referrer policy), so the owner can be shown that site too."""
    referer = request.META.get("HTTP_REFERER", "")
    if request.META.get("HTTP_SEC_FETCH_DEST") != "iframe" or not referer:
        return
    origin = snippets.origin_of(referer[:400])
    if origin not in {_site_origin(), *signup_form.origins}:
        origins.refusal_record(signup_form=signup_form, origin=origin)


@require_GET
def signup_frame(request: HttpRequest, key: str) -> HttpResponse:
    """The iframe embed; frame-ancestors limits who may frame it."""
    signup_form = _active_form(key)
    _note_refused_framing(request, signup_form)
    context = _form_context(signup_form, framed=True)
    return _frameable(render(request, "audience/hosted_form.html", context), signup_form)


@require_GET
def signup_thanks(request: HttpRequest, key: str) -> HttpResponse:
    signup_form = _active_form(key)
    return _frameable(
        render(request, "audience/thanks.html", {"signup_form": signup_form}), signup_form
    )


@require_GET
def signup_script(request: HttpRequest, key: str) -> HttpResponse:
    """The <script> embed: renders the form into a Shadow DOM where the tag stands."""
    context = _form_context(_active_form(key))
    response = render(
        request, "audience/embed.js", context, content_type="text/javascript; charset=utf-8"
    )
    # Short: the render stamp inside must not be reused for long, and edits show soon.
    response["Cache-Control"] = "public, max-age=60"
    response["Access-Control-Allow-Origin"] = "*"
    return response


@csrf_exempt  # the token is the credential; the link is opened from a mail, cookie-less
@never_cache
@require_http_methods(["GET", "POST"])
def confirm(request: HttpRequest, token: str) -> HttpResponse:
    """GET shows one Confirm button; only the POST it sends confirms. Mail scanners and
    link previews fetch every link in a message, so a GET must change nothing."""
    contact = read_token("confirm", token)
    if contact is None:
        return render(request, "audience/link_invalid.html", status=400)
    if request.method == "GET":
        return render(request, "audience/confirm.html", {"contact": contact})
    confirmed = services.contact_confirm(
        contact=contact,
        requested_at=contact.optin_requested_at,
        evidence=_evidence(request, "confirm-link"),
    )
    if confirmed is None:  # the request closed between the link's check and the click
        return render(request, "audience/link_invalid.html", status=400)
    return render(
        request,
        "audience/confirmed.html",
        {"contact": confirmed, "preferences_url": contact_url("preferences", confirmed)},
    )


@csrf_exempt  # RFC 8058: mail providers POST here with no cookie and no token
@never_cache
@require_http_methods(["GET", "POST"])
def unsubscribe(request: HttpRequest, token: str) -> HttpResponse:
    contact = read_token("unsubscribe", token)
    if contact is None:
        return render(request, "audience/link_invalid.html", status=400)
    if request.method == "GET":
        # A GET never unsubscribes by itself: mail scanners prefetch every link.
        return render(request, "audience/unsubscribe.html", {"contact": contact, "done": False})
    one_click = request.POST.get("List-Unsubscribe") == "One-Click"
    services.contact_unsubscribe(
        contact=contact,
        evidence=_evidence(request, "one-click" if one_click else "unsubscribe-page"),
    )
    if one_click:
        return HttpResponse("Unsubscribed.", content_type="text/plain; charset=utf-8")
    return render(request, "audience/unsubscribe.html", {"contact": contact, "done": True})


@never_cache
@require_http_methods(["GET", "POST"])
def preferences(request: HttpRequest, token: str) -> HttpResponse:
    contact = read_token("preferences", token)
    if contact is None:
        return render(request, "audience/link_invalid.html", status=400)
    if request.method == "POST" and "leave" in request.POST:
        services.contact_unsubscribe(contact=contact, evidence=_evidence(request, "preferences"))
        return render(request, "audience/unsubscribe.html", {"contact": contact, "done": True})
    form = PreferencesForm(request.POST or None, instance=contact)
    saved = False
    if request.method == "POST" and form.is_valid():
        contact = services.contact_update_preferences(
            contact=contact,
            first_name=form.cleaned_data["first_name"],
            last_name=form.cleaned_data["last_name"],
            phone=form.cleaned_data["phone"],
            evidence=_evidence(request, "preferences"),
        )
        saved = True
    status = 422 if request.method == "POST" and not saved else 200
    return render(
        request,
        "audience/preferences.html",
        {"contact": contact, "form": form, "saved": saved},
        status=status,
    )


@require_GET
def demo_shop(request: HttpRequest) -> HttpResponse:
    if not settings.STILLHERE_DEMO:
        raise Http404
    signup_form = services.demo_form_ensure()
    return render(
        request,
        "audience/demo_shop.html",
        {"signup_form": signup_form, "snippets": snippets.all_snippets(signup_form)},
    )
