"""The copy-paste snippets for each way of embedding a signup form."""

from __future__ import annotations

import json
from functools import lru_cache
from urllib.parse import urlsplit

from django.conf import settings
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils.html import format_html

from audience.forms import PublicSignupForm
from audience.models import SignupForm


@lru_cache(maxsize=64)
def origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _absolute(name: str, signup_form: SignupForm) -> str:
    return settings.SITE_URL + reverse(name, args=[signup_form.public_key])


def submit_url(signup_form: SignupForm) -> str:
    return _absolute("audience:signup-submit", signup_form)


def hosted_url(signup_form: SignupForm) -> str:
    return _absolute("audience:signup-page", signup_form)


def html_snippet(signup_form: SignupForm) -> str:
    """A plain <form> that works with JavaScript off. It carries no render stamp (it is
    static HTML), so it relies on the honeypot, origin check and rate limits."""
    form = PublicSignupForm(signup_form=signup_form)
    del form.fields["ts"]
    return render_to_string(
        "audience/snippet_form.html",
        {"form": form, "action": submit_url(signup_form), "signup_form": signup_form},
    ).strip()


def script_snippet(signup_form: SignupForm) -> str:
    src = _absolute("audience:signup-script", signup_form)
    return f'<script src="{src}" async></script>'


# Tall enough for a form with name, phone and a two-line consent text at 480 px wide
# (about 600 px), so the button shows even where the shop's page blocks inline scripts
# and the frame cannot be fitted to its content.
IFRAME_DEFAULT_HEIGHT = 660
# A height the frame may ask for: anything else in a message is ignored (any page can
# post to the shop's window; only Stillhere's frame is listened to, and within reason).
IFRAME_HEIGHT_RANGE = (120, 4000)


def frame_id(signup_form: SignupForm) -> str:
    return f"stillhere-frame-{signup_form.public_key}"


def frame_fit_script(element_id: str, origin: str | None) -> str:
    """A listener that sets the iframe `element_id` to the height its page reports
    (templates/audience/_frame_height.html), from `origin` (None: this page's own, as
    for the admin's preview) and from that frame only."""
    low, high = IFRAME_HEIGHT_RANGE
    expected = json.dumps(origin) if origin else "window.location.origin"
    return (
        "<script>(function(){"
        f"var f=document.getElementById({json.dumps(element_id)});if(!f){{return;}}"
        'window.addEventListener("message",function(e){var d=e.data;'
        f"if(e.origin!=={expected}||e.source!==f.contentWindow||!d||"
        'd.stillhere!=="frame-height"){return;}'
        f'var h=Math.ceil(Number(d.height));if(h>={low}&&h<={high}){{f.style.height=h+"px";}}'
        "});})();</script>"
    )


def iframe_tag(signup_form: SignupForm) -> str:
    src = _absolute("audience:signup-frame", signup_form)
    return format_html(
        '<iframe id="{}" src="{}" title="{}" loading="lazy" '
        'style="width:100%;max-width:480px;height:{}px;border:0"></iframe>',
        frame_id(signup_form),
        src,
        signup_form.title or "Sign up",
        IFRAME_DEFAULT_HEIGHT,
    )


def iframe_snippet(signup_form: SignupForm) -> str:
    """The iframe, and the few lines that fit it to the form's height."""
    origin = origin_of(settings.SITE_URL)
    return iframe_tag(signup_form) + "\n" + frame_fit_script(frame_id(signup_form), origin)


def all_snippets(signup_form: SignupForm) -> dict[str, str]:
    return {
        "html": html_snippet(signup_form),
        "script": script_snippet(signup_form),
        "iframe": iframe_snippet(signup_form),
        "hosted": hosted_url(signup_form),
    }
