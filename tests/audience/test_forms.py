"""The public signup form cleans without bound fields: always as Django's own pass does."""

from __future__ import annotations

from urllib.parse import urlencode

import pytest
from django import forms
from django.http import QueryDict
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from audience.forms import PublicSignupForm
from audience.models import FieldMode, SignupForm


class DjangoCleaned(PublicSignupForm):
    """The same form, cleaned by Django's pass alone."""

    _clean_fields = forms.Form._clean_fields


def signup_form(name_field=FieldMode.OPTIONAL, phone_field=FieldMode.OPTIONAL, consent=""):
    return SignupForm(
        public_key="quick", name_field=name_field, phone_field=phone_field, consent_text=consent
    )


def posted(pairs: list[tuple[str, str]]) -> QueryDict:
    """What request.POST would hold for this urlencoded body (a repeated field included)."""
    return QueryDict(urlencode(pairs))


def outcome(form: PublicSignupForm) -> tuple[bool, dict, dict]:
    valid = form.is_valid()
    return valid, form.cleaned_data, form.errors_json()


good_text = st.sampled_from(["", "Ada", "  Zoë  ", "李", "O'Brien", "a" * 100])
bad_text = st.one_of(
    st.sampled_from([" ", "a\x00b", "x\r\ny", "\t", "a" * 101]),
    st.text(max_size=30),
    st.text(alphabet="ab ", min_size=95, max_size=105),
    st.text(alphabet="ab", min_size=995, max_size=1005),
)
good_email = st.sampled_from(["ada@example.com", " Ada@Example.COM ", "zoë@exämple.de"])
bad_email = st.one_of(
    st.sampled_from(["not-an-email", "", "a@b", "a\x00@x.com", "a" * 250 + "@example.com"]),
    st.emails().map(str),
    st.text(max_size=40),
)
good_phone = st.sampled_from(["", "+44 20 7946 0958", "(415) 555-2671", "+1 (415) 555-2671"])
bad_phone = st.one_of(
    st.sampled_from(["12", "abc", "020 7946 0958"]),
    st.text(alphabet="+0123456789 -()", max_size=45),
)
checkbox = st.sampled_from(["on", "true", "TRUE", "false", "False", "0", "1", "", "yes"])


def mostly(good, bad):
    """Good values four times in five: a valid signup must come up often, not by luck."""
    return st.one_of(good, good, good, good, bad)


def around(limit: int):
    """Values at a field's max_length and one past it."""
    return st.sampled_from([limit - 1, limit, limit + 1]).map(lambda n: "a" * n)


fields = {
    "email": mostly(good_email, st.one_of(bad_email, around(320))),
    "first_name": mostly(good_text, st.one_of(bad_text, around(1000))),
    "last_name": mostly(good_text, st.one_of(bad_text, around(1000))),
    "phone": mostly(good_phone, st.one_of(bad_phone, around(100))),
    "consent": mostly(st.just("on"), checkbox),
    "website": mostly(st.just(""), st.one_of(bad_text, around(200))),
    "ts": st.one_of(st.just("stamp"), bad_text, around(200)),
}
repeated = st.sampled_from(sorted(fields)).flatmap(
    lambda name: st.tuples(st.just(name), fields[name])
)
submission = st.builds(
    lambda present, again: [*present.items(), *again],
    st.fixed_dictionaries(
        {"email": fields["email"]}, optional={k: v for k, v in fields.items() if k != "email"}
    ),
    st.lists(repeated, max_size=2),
)
configurations = st.builds(
    signup_form,
    name_field=st.sampled_from(list(FieldMode)),
    phone_field=st.sampled_from(list(FieldMode)),
    consent=st.sampled_from(["", "Yes, email me."]),
)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configuration=configurations, pairs=submission)
@example(signup_form(), [("email", "ada@example.com"), ("website", "a\x00b")])
@example(signup_form(), [("email", "ada@example.com"), ("ts", "\x00")])
@example(signup_form(name_field=FieldMode.REQUIRED), [("email", "a@x.com"), ("first_name", " ")])
@example(signup_form(), [("email", "ada@example.com"), ("first_name", "a" * 1001)])
@example(signup_form(consent="Agree?"), [("email", "ada@example.com"), ("consent", "false")])
@example(signup_form(consent="Agree?"), [("email", "ada@example.com"), ("consent", "on")])
def test_the_form_accepts_cleans_and_words_errors_exactly_as_django_does(configuration, pairs):
    data = posted(pairs)
    quick = outcome(PublicSignupForm(data, signup_form=configuration))
    django = outcome(DjangoCleaned(data, signup_form=configuration))
    assert quick == django
    event("valid" if quick[0] else "invalid")


@pytest.mark.parametrize(
    "pairs",
    [
        [("email", "ada@example.com")],
        [("email", " Ada@Example.com "), ("first_name", " Ada "), ("phone", "(415) 555-2671")],
        [("email", "x@example.com"), ("consent", "on"), ("email", "ada@example.com")],
    ],
)
def test_a_signup_is_cleaned_without_django_s_bound_fields(monkeypatch, pairs):
    def django_pass(form):
        raise AssertionError("the signup went through Django's slower pass")

    monkeypatch.setattr(forms.Form, "_clean_fields", django_pass)
    form = PublicSignupForm(posted(pairs), signup_form=signup_form(consent=""))
    assert form.is_valid()
    assert form.cleaned_data["email"] == "ada@example.com"


def test_an_invalid_signup_gets_one_clear_error_per_field():
    data = posted([("email", "nope"), ("first_name", "a" * 101)])
    form = PublicSignupForm(data, signup_form=signup_form(name_field=FieldMode.REQUIRED))
    assert not form.is_valid()
    assert form.errors_json() == {
        "email": ["Please enter a valid email address."],
        "first_name": ["Please use at most 100 characters."],
        "last_name": ["This field is required."],
    }
