"""The copy-paste snippets for each way of embedding a signup form."""

from __future__ import annotations

from functools import lru_cache
from urllib.parse import urlsplit

from django.conf import settings
from django.template.loader import render_to_string
from django.urls import reverse

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


def iframe_snippet(signup_form: SignupForm) -> str:
    src = _absolute("audience:signup-frame", signup_form)
    return (
        f'<iframe src="{src}" title="{signup_form.title or "Sign up"}" loading="lazy" '
        'style="width:100%;max-width:480px;height:520px;border:0"></iframe>'
    )


def all_snippets(signup_form: SignupForm) -> dict[str, str]:
    return {
        "html": html_snippet(signup_form),
        "script": script_snippet(signup_form),
        "iframe": iframe_snippet(signup_form),
        "hosted": hosted_url(signup_form),
    }
