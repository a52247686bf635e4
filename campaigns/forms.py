"""Forms of the campaign admin: composing, test sends, scheduling, the blast."""

from __future__ import annotations

from django import forms
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.utils import timezone

from audience.models import Contact, Segment
from campaigns.models import Campaign
from campaigns.starters import STARTERS

MAX_TEST_ADDRESSES = 10


def _check_template(text: str) -> None:
    # Imported here so the admin still loads while the sending engine is being built.
    from campaigns.rendering import check_template

    check_template(text)


class CampaignAdminForm(forms.ModelForm):
    class Meta:
        model = Campaign
        fields = ["name", "subject", "preheader", "body", "audience", "segment", "tags",
                  "send_mode"]  # fmt: skip
        widgets = {
            "subject": forms.TextInput(attrs={"class": "vLargeTextField", "size": 80}),
            "preheader": forms.TextInput(attrs={"class": "vLargeTextField", "size": 80}),
            "body": forms.Textarea(attrs={"rows": 18, "cols": 90, "class": "vLargeTextField"}),
            "audience": forms.RadioSelect,
        }

    def _clean_template(self, name: str) -> str:
        value = self.cleaned_data.get(name, "")
        if value:
            _check_template(value)
        return value

    def clean_subject(self) -> str:
        return self._clean_template("subject")

    def clean_preheader(self) -> str:
        return self._clean_template("preheader")

    def clean_body(self) -> str:
        return self._clean_template("body")

    def clean(self):
        data = super().clean()
        audience = data.get("audience")
        if audience == Campaign.Audience.SEGMENT and not data.get("segment"):
            self.add_error("segment", "Choose the segment to send to.")
        if audience == Campaign.Audience.TAGS and not data.get("tags"):
            self.add_error("tags", "Choose at least one tag.")
        return data


def parse_addresses(text: str) -> list[str]:
    """Addresses separated by commas, semicolons, spaces or new lines; each validated."""
    addresses = []
    for raw in text.replace(",", " ").replace(";", " ").split():
        address = raw.strip().lower()
        try:
            validate_email(address)
        except ValidationError:
            raise ValidationError(f"{raw!r} is not an email address.") from None
        if address not in addresses:
            addresses.append(address)
    return addresses


class TestSendForm(forms.Form):
    emails = forms.CharField(
        label="Send a test to",
        widget=forms.TextInput(attrs={"size": 50, "placeholder": "you@example.com, colleague@…"}),
    )
    as_contact = forms.CharField(
        label="as contact",
        required=False,
        widget=forms.TextInput(attrs={"size": 30, "placeholder": "contact's email (optional)"}),
        help_text="Fill the merge fields with this contact's details.",
    )

    def __init__(self, *args, real_contacts: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        # Whether "as contact" may be looked up: without the right to view contacts
        # the answer must not say whether the address is known (the admin then uses
        # a sample contact).
        self.real_contacts = real_contacts

    def clean_emails(self) -> list[str]:
        addresses = parse_addresses(self.cleaned_data["emails"])
        if not addresses:
            raise ValidationError("Enter at least one address.")
        if len(addresses) > MAX_TEST_ADDRESSES:
            raise ValidationError(f"Send a test to at most {MAX_TEST_ADDRESSES} addresses.")
        return addresses

    def clean_as_contact(self):
        email = self.cleaned_data["as_contact"].strip().lower()
        if not email or not self.real_contacts:
            return None
        contact = Contact.objects.filter(email=email).first()
        if contact is None:
            raise ValidationError(f"There is no contact {email}.")
        return contact


class ScheduleForm(forms.Form):
    when = forms.DateTimeField(
        label="Send at",
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
        input_formats=["%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M:%S"],
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Read when the form is made, not at import: settings are config's business.
        self.fields["when"].help_text = f"Time zone: {timezone.get_current_timezone_name()}."

    def clean_when(self):
        when = self.cleaned_data["when"]
        if when <= timezone.now():
            raise ValidationError("Choose a time in the future, or use Send now.")
        return when


class EmergencyForm(forms.Form):
    starter = forms.ChoiceField(choices=[(key, s.title) for key, s in STARTERS.items()])
    segment = forms.ModelChoiceField(
        queryset=Segment.objects.all(),
        required=False,
        empty_label="Everyone subscribed",
        label="Send to",
    )
