"""The audience's own transactional mail: the double opt-in confirmation.

Each signup form has its own confirmation mail, written like a campaign body (a subject
and Markdown with merge fields, audience.mailmerge's sandbox) and sent in the shop's
branded layout (templates/email/confirm.html and .txt: logo, accent colour, shop name),
from the sender the owner set (audience.branding). A form's mail is compiled once per
process and content version, not per contact: a batch of confirmations costs one
Markdown pass and one layout render, then a template render per contact.
"""

from __future__ import annotations

import html as htmllib
import re
import smtplib
from dataclasses import dataclass, field

from anymail.exceptions import (
    AnymailAPIError,
    AnymailError,
    AnymailInvalidAddress,
    AnymailRecipientsRefused,
)
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured, ValidationError
from django.core.mail import EmailMultiAlternatives
from django.template import Context, Template
from django.template.loader import render_to_string

from audience import mailmerge
from audience.branding import Brand, brand_current
from audience.models import (
    DEFAULT_CONFIRMATION_BODY,
    DEFAULT_CONFIRMATION_SUBJECT,
    Contact,
    SignupForm,
)
from audience.tokens import contact_url
from config.providers import send_failing_over

# What a confirmation mail may use: a campaign's merge fields and its own few.
CONFIRMATION_FIELDS = (
    *mailmerge.MERGE_FIELDS,
    "confirm_url",
    "confirm_days",
    "form_title",
    "accent_color",
)
_MARKER = "\x00part:{}\x00"
_MARKER_RE = re.compile("\x00part:(\\w+)\x00")
_SAMPLE_URL = "https://stillhere.invalid/confirm/sample-token/"


@dataclass
class ConfirmationMail:
    """One form's confirmation, compiled: the merge-field templates of its subject and
    body (HTML and text) and the layout around them as literals and part names."""

    subject: Template
    body_html: Template
    body_text: Template
    html: list[str] = field(default_factory=list)  # literals, and ("part", name) tuples
    text: list[str] = field(default_factory=list)
    from_email: str = ""
    reply_to: list[str] = field(default_factory=list)
    form_title: str = ""
    accent: str = mailmerge.DEFAULT_ACCENT

    def context(self, contact, brand: Brand, *, confirm_url: str) -> dict:
        """The merge fields' values for one contact: plain values only (the sandbox)."""
        data = mailmerge._contact_context(contact, brand)
        data.update(
            confirm_url=confirm_url,
            # A string: a number would go through localisation at every render.
            confirm_days=str(settings.CONFIRMATION_MAX_AGE_DAYS),
            form_title=self.form_title,
            accent_color=self.accent,
        )
        return data

    def render(self, contact, brand: Brand, *, confirm_url: str) -> tuple[str, str, str]:
        """(subject, html, text) for one contact."""
        data = self.context(contact, brand, confirm_url=confirm_url)
        subject = " ".join(self.subject.render(Context(data, autoescape=False)).split())
        parts_html = {
            "subject": htmllib.escape(subject),
            "body": self.body_html.render(Context(data, autoescape=True)),
            "confirm_url": htmllib.escape(confirm_url),
        }
        parts_text = {
            "subject": subject,
            "body": self.body_text.render(Context(data, autoescape=False)),
            "confirm_url": confirm_url,
        }
        return subject, _fill(self.html, parts_html), _fill(self.text, parts_text)


def _fill(layout: list, parts: dict[str, str]) -> str:
    return "".join(parts[p[1]] if type(p) is tuple else p for p in layout)


def _split(rendered: str) -> list:
    """A layout rendered with markers, as literals and ("part", name) tuples."""
    out: list = []
    pos = 0
    for match in _MARKER_RE.finditer(rendered):
        out += [rendered[pos : match.start()], ("part", match.group(1))]
        pos = match.end()
    out.append(rendered[pos:])
    return [p for p in out if p != ""]


def _contents(form: SignupForm | None) -> tuple[str, str, str]:
    """(subject, body, title) of a form's mail; a contact with no form (imported, added
    by hand), and a form whose subject or body was left empty, get the default one."""
    if form is None:
        return DEFAULT_CONFIRMATION_SUBJECT, DEFAULT_CONFIRMATION_BODY, ""
    subject = form.confirmation_subject.strip() or DEFAULT_CONFIRMATION_SUBJECT
    body = form.confirmation_body.strip() or DEFAULT_CONFIRMATION_BODY
    return subject, body, form.title


_cache: dict[tuple, ConfirmationMail] = {}


def confirmation_compile(*, form: SignupForm | None, brand: Brand) -> ConfirmationMail:
    """The form's confirmation mail, compiled once per process per content version (the
    key holds everything it is built from, so an edit is seen at the next mail)."""
    subject, body, title = _contents(form)
    # The contents themselves are the key (a dict hashes them at C speed, and keeps no
    # two versions apart that differ): an edit is a new key, and so is a new sender.
    key = (subject, body, title, brand, brand.from_header, settings.SITE_URL)
    mail = _cache.get(key)
    if mail is None:
        if len(_cache) > 32:
            _cache.clear()
        mail = _cache[key] = _build(subject=subject, body=body, title=title, brand=brand)
    return mail


def _build(*, subject: str, body: str, title: str, brand: Brand) -> ConfirmationMail:
    for text in (subject, body):
        mailmerge.check_template(text, fields=CONFIRMATION_FIELDS)
    protected, tags = mailmerge._protect(body or "")
    urls: list[str] = []
    clean = mailmerge.markdown_to_html(protected, urls)
    body_html, body_text = mailmerge._mark_urls(clean, mailmerge.html_to_text(clean), urls)
    body_html, body_text = mailmerge._restore(body_html, tags), mailmerge._restore(body_text, tags)
    engine = mailmerge._source_engine
    accent = mailmerge.accent_color(brand.accent_color)
    context = {
        "sender": brand,
        "accent_color": accent,
        **{name: _MARKER.format(name) for name in ("subject", "body", "confirm_url")},
    }
    return ConfirmationMail(
        subject=engine.from_string(" ".join((subject or "").split())),
        body_html=engine.from_string(body_html),
        body_text=engine.from_string(body_text),
        html=_split(render_to_string("email/confirm.html", context)),
        text=_split(render_to_string("email/confirm.txt", context)),
        from_email=brand.from_header,
        reply_to=brand.reply_to_list,
        form_title=title,
        accent=accent,
    )


@dataclass
class _SampleContact:
    email: str = "sample@example.com"
    first_name: str = ""
    last_name: str = ""
    phone: str = ""
    attributes: dict = field(default_factory=dict)


def confirmation_check(*, subject: str, body: str) -> None:
    """Raise ValidationError({field: …}) unless the subject and body are good merge-field
    templates (as a campaign's are) and the mail links to its confirm link, for a contact
    with a name and one without (an {% if %} must not hide the one link that matters)."""
    subject = subject.strip() or DEFAULT_CONFIRMATION_SUBJECT
    body = body.strip() or DEFAULT_CONFIRMATION_BODY
    errors = {}
    for name, text in (("confirmation_subject", subject), ("confirmation_body", body)):
        try:
            mailmerge.check_template(text, fields=CONFIRMATION_FIELDS)
        except ValidationError as exc:
            errors[name] = exc.messages
    if errors:
        raise ValidationError(errors)
    mail = _build(subject=subject, body=body, title="Sample", brand=Brand())
    href = f'href="{htmllib.escape(_SAMPLE_URL)}"'
    for sample in (_SampleContact(), _SampleContact(first_name="Ada", last_name="L")):
        data = mail.context(sample, Brand(), confirm_url=_SAMPLE_URL)
        if href not in mail.body_html.render(Context(data, autoescape=True)):
            raise ValidationError(
                {
                    "confirmation_body": (
                        "The email must link to {{ confirm_url }}, e.g. "
                        "[Yes, subscribe me]({{ confirm_url }}): it is the only way to confirm."
                    )
                }
            )


def confirmation_message(
    *, contact: Contact, brand: Brand | None = None, form: SignupForm | None = None
) -> EmailMultiAlternatives:
    """The confirmation mail for `contact`, ready to send (also the admin's preview,
    with `form` standing in for the contact's own)."""
    brand = brand if brand is not None else brand_current()
    form = form if form is not None else contact.signup_form
    mail = confirmation_compile(form=form, brand=brand)
    subject, html, text = mail.render(contact, brand, confirm_url=contact_url("confirm", contact))
    message = EmailMultiAlternatives(
        subject=subject, body=text, from_email=mail.from_email, to=[contact.email],
        reply_to=mail.reply_to,
    )  # fmt: skip
    message.attach_alternative(html, "text/html")
    return message


def confirmation_preview(*, form: SignupForm | None) -> tuple[str, str, str]:
    """(subject, html, text) of `form`'s mail for a sample contact, as sent now: the
    form's admin page shows it. Raises ValidationError for a body that would be refused."""
    brand = brand_current()
    mail = confirmation_compile(form=form, brand=brand)
    sample = _SampleContact(first_name="Ada", last_name="Lovelace", email="ada@example.com")
    return mail.render(sample, brand, confirm_url=f"{settings.SITE_URL}/confirm/preview/")


def send_confirmation_email(*, contact: Contact, brand: Brand | None = None) -> None:
    """Send the double opt-in mail. Pass the `brand` when sending many (read it once)."""
    # Through the primary, or the failover provider when the primary fails for a
    # passing reason (the same providers and connections as the campaigns').
    send_failing_over([confirmation_message(contact=contact, brand=brand)], transient=is_transient)


def is_transient(exc: BaseException) -> bool:
    """Would sending again later help? Provider 429 / 5xx, timeouts, unreachable: yes.
    A refused recipient, a bad request or a setup problem: no."""
    if isinstance(exc, AnymailAPIError):
        code = getattr(exc, "status_code", None)
        # No status: the request never got an answer (timeout, connection refused).
        return code is None or code == 429 or code >= 500
    if isinstance(exc, AnymailError):  # refused recipients, invalid address, unsupported…
        return False
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return _refused_for_now(exc)
    if isinstance(exc, smtplib.SMTPResponseException):
        return 400 <= exc.smtp_code < 500
    return isinstance(exc, OSError | smtplib.SMTPException)


def is_setup_problem(exc: BaseException) -> bool:
    """Nothing will go out until someone fixes the settings (credentials, sender domain)."""
    if isinstance(exc, AnymailAPIError):
        return getattr(exc, "status_code", None) in {401, 403, 404}
    return isinstance(
        exc, ImproperlyConfigured | smtplib.SMTPAuthenticationError | smtplib.SMTPSenderRefused
    )


def is_refusal(exc: BaseException) -> bool:
    """The provider will never take mail for this recipient (sending again cannot help,
    and it says nothing about the other recipients)."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return not _refused_for_now(exc)
    return isinstance(exc, AnymailRecipientsRefused | AnymailInvalidAddress)


def _refused_for_now(exc: smtplib.SMTPRecipientsRefused) -> bool:
    """Every refusal a 4xx to RCPT TO (greylisting, "452 too many recipients", a relay's
    rate limit): RFC 5321 §4.2.1's transient negative, so try again later."""
    codes = [code for code, _message in exc.recipients.values()]
    return bool(codes) and all(400 <= code < 500 for code in codes)


def is_too_many(exc: BaseException) -> bool:
    """The provider takes fewer requests at once than it was sent: an HTTP 429, or an
    SMTP 421 (a relay closing the connection it cannot serve, often at connect)."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return any(code == 421 for code, _message in exc.recipients.values())
    if isinstance(exc, smtplib.SMTPResponseException):
        return exc.smtp_code == 421
    return getattr(exc, "status_code", None) == 429
