from __future__ import annotations

import json
import time
from functools import lru_cache

from django import forms
from django.conf import settings
from django.core import signing
from django.core.exceptions import ValidationError

from audience.models import Contact, FieldMode, Segment, SignupForm, SuppressedEmail
from audience.segments import validate_rules
from audience.services import clean_text, email_hash, normalize_email, normalize_phone

_RENDER_SALT = "audience.render"


@lru_cache(maxsize=4)
def _signer(key: str, fallback_keys: tuple[str, ...]) -> signing.Signer:
    return signing.Signer(key=key, fallback_keys=fallback_keys, salt=_RENDER_SALT)


def _stamp_signer() -> signing.Signer:
    """The stamps' signer, made once per secret key instead of on every submit."""
    return _signer(settings.SECRET_KEY, tuple(settings.SECRET_KEY_FALLBACKS))


def render_stamp(signup_form: SignupForm) -> str:
    """A signed 'rendered at' stamp; a submit that comes back too fast is a bot."""
    # Truncated, not rounded, to the millisecond: a stamp from the future would make the
    # age of a quick submit negative, under any SIGNUP_MIN_SECONDS (a signup lost).
    rendered_at = int(time.time() * 1000) / 1000
    return _stamp_signer().sign(f"{signup_form.public_key}:{rendered_at:.3f}")


def stamp_age(signup_form: SignupForm, value: str) -> float | None:
    """Seconds since the stamp was made, or None if it is missing, forged or foreign."""
    try:
        key, _, rendered_at = _stamp_signer().unsign(value).rpartition(":")
        if key != signup_form.public_key:
            return None
        return time.time() - float(rendered_at)
    except (signing.BadSignature, ValueError):
        return None


class TelInput(forms.TextInput):
    input_type = "tel"


class _FieldsMixin:
    """Cleaning shared by the public signup form and the preferences page."""

    def _clean_with(self, name: str, cleaner, **kwargs):
        # The services raise {field: message}; a form field's clean raises the message.
        try:
            return cleaner(self.cleaned_data.get(name), **kwargs)
        except ValidationError as exc:
            raise ValidationError(exc.message_dict[name]) from None

    def _clean_text(self, name: str) -> str:
        return self._clean_with(name, clean_text, max_length=100, field=name)

    def clean_first_name(self) -> str:
        return self._clean_text("first_name")

    def clean_last_name(self) -> str:
        return self._clean_text("last_name")

    def clean_phone(self) -> str:
        return self._clean_with("phone", normalize_phone)


class _Shared:
    """A form field built once per form configuration and shared by every instance of
    the form, instead of deep-copied for each (Django's default, so that an instance may
    change its own fields). The public signup form's instances never change them: the
    templates only read them. Building and copying them was a fifth of a signup's
    Python (bench/signup.py)."""

    def __deepcopy__(self, memo):
        return self


class _SharedChar(_Shared, forms.CharField):
    pass


class _SharedBoolean(_Shared, forms.BooleanField):
    pass


@lru_cache(maxsize=256)
def _signup_fields(name_field: str, phone_field: str, consent_text: str) -> dict:
    """The public form's fields for one configuration of a SignupForm."""
    fields = {
        "email": _SharedChar(label="Email", max_length=320, widget=forms.EmailInput(
            attrs={"autocomplete": "email", "placeholder": "you@example.com"})),
        # Honeypot: hidden from people by CSS and aria, irresistible to form-filling bots.
        "website": _SharedChar(required=False, label="Leave this empty", max_length=200),
        "ts": _SharedChar(required=False, widget=forms.HiddenInput, max_length=200),
    }  # fmt: skip
    if name_field != FieldMode.HIDDEN:
        required = name_field == FieldMode.REQUIRED
        # max_length above the stored limit so the cleaner can say it clearly
        fields["first_name"] = _SharedChar(
            label="First name", required=required, max_length=1000,
            widget=forms.TextInput(attrs={"autocomplete": "given-name"}))  # fmt: skip
        fields["last_name"] = _SharedChar(
            label="Last name", required=required, max_length=1000,
            widget=forms.TextInput(attrs={"autocomplete": "family-name"}))  # fmt: skip
    if phone_field != FieldMode.HIDDEN:
        fields["phone"] = _SharedChar(
            label="Phone", required=phone_field == FieldMode.REQUIRED,
            max_length=100, widget=TelInput(attrs={"autocomplete": "tel"}))  # fmt: skip
    if consent_text:
        fields["consent"] = _SharedBoolean(
            label=consent_text, required=True, initial=False,
            error_messages={"required": "Please tick the box to agree."})  # fmt: skip
    for name, field in fields.items():
        field.error_messages.setdefault("required", "This field is required.")
        if name == "email":
            field.error_messages["required"] = "Please enter your email address."
    return fields


class PublicSignupForm(_FieldsMixin, forms.Form):
    """The fields a visitor fills in, shaped by a SignupForm's settings."""

    def __init__(self, *args, signup_form: SignupForm, **kwargs):
        super().__init__(*args, **kwargs)
        self.signup_form = signup_form
        self.fields = dict(
            _signup_fields(
                signup_form.name_field, signup_form.phone_field, signup_form.consent_text
            )
        )
        if not self.is_bound:
            self.initial["ts"] = render_stamp(signup_form)

    def clean_email(self) -> str:
        return self._clean_with("email", normalize_email)

    def _clean_fields(self) -> None:
        """Django's field cleaning, without a BoundField per field.

        Every submission is a signup to take or a bot to drop, thousands a second on an
        outage day, and building a bound field for each field was a third of a signup's
        validation. This is Django's loop (forms.Form._clean_fields) with the value read
        straight from the widget, which is all a bound field does for a field that is
        neither disabled nor a file; the fields' own clean() and the clean_<name>
        methods run as ever. `test_forms.py` holds the two to the same results.
        """
        if any(f.disabled or isinstance(f, forms.FileField) for f in self.fields.values()):
            super()._clean_fields()
            return
        for name, field in self.fields.items():
            value = field.widget.value_from_datadict(self.data, self.files, self.add_prefix(name))
            try:
                self.cleaned_data[name] = field.clean(value)
                cleaner = getattr(self, f"clean_{name}", None)
                if cleaner is not None:
                    self.cleaned_data[name] = cleaner()
            except ValidationError as exc:
                self.add_error(name, exc)

    def is_bot(self, *, require_stamp: bool) -> bool:
        """True for a submit to drop silently: honeypot filled, or stamp forged / too fast.

        The plain HTML snippet is static HTML pasted into a shop page, so it cannot carry
        a fresh stamp; only a stamp that is present is checked there.
        """
        if (self.data.get("website") or "").strip():
            return True
        stamp = (self.data.get("ts") or "").strip()
        if not stamp:
            return require_stamp
        age = self._stamp_age()
        return age is None or age < settings.SIGNUP_MIN_SECONDS

    def _stamp_age(self) -> float | None:
        """The stamp's age, checked once per submit (is_bot and stamp_expired both ask)."""
        if not hasattr(self, "_stamp_age_cached"):
            stamp = (self.data.get("ts") or "").strip()
            self._stamp_age_cached = stamp_age(self.signup_form, stamp) if stamp else None
        return self._stamp_age_cached

    def stamp_expired(self) -> bool:
        """A stamp older than SIGNUP_STAMP_MAX_AGE: a page left open for days, or a stamp
        a bot fetched once and replays. Refused with a message, not dropped silently."""
        age = self._stamp_age()
        return age is not None and age > settings.SIGNUP_STAMP_MAX_AGE

    def errors_json(self) -> dict[str, list[str]]:
        return {field: [str(msg) for msg in messages] for field, messages in self.errors.items()}


class PreferencesForm(_FieldsMixin, forms.ModelForm):
    # Wider than the stored E.164 value: people type spaces, dashes and brackets.
    phone = forms.CharField(required=False, max_length=40, label="Phone")

    class Meta:
        model = Contact
        fields = ["first_name", "last_name", "phone"]


class ContactAdminForm(_FieldsMixin, forms.ModelForm):
    """The admin's contact form: the same cleaning as every other way in."""

    phone = forms.CharField(required=False, max_length=40, label="Phone")

    class Meta:
        model = Contact
        fields = ["email", "first_name", "last_name", "phone", "tags", "attributes"]

    def clean_email(self) -> str:
        email = self._clean_with("email", normalize_email)
        if SuppressedEmail.objects.filter(email_hash=email_hash(email)).exists():
            # GDPR erasure: never mailed or stored again unless its owner signs up anew.
            raise ValidationError(
                "This address was erased at its owner's request; only its owner can sign up again."
            )
        return email


# --- Segments (the admin's rule builder writes the JSON this field holds) ---------------


class RulesField(forms.JSONField):
    """The segment's rules as JSON; the admin page drives it with a rule builder."""

    def __init__(self, **kwargs):
        kwargs.setdefault(
            "widget", forms.Textarea(attrs={"rows": 6, "cols": 80, "class": "vLargeTextField"})
        )
        super().__init__(**kwargs)

    def prepare_value(self, value):
        if isinstance(value, str):
            return value
        return json.dumps(value if value is not None else [], indent=1)


class SegmentAdminForm(forms.ModelForm):
    rules = RulesField(
        required=False,
        help_text=(
            'A list of rules such as {"field": "tag", "op": "has", "value": "VIP"}. '
            "Use the rule builder above; this box is what it writes."
        ),
    )

    class Meta:
        model = Segment
        fields = ["name", "match", "rules"]

    def clean_rules(self):
        rules = self.cleaned_data.get("rules")
        if rules is None:
            rules = []
        validate_rules(rules)
        return rules
