"""What a double opt-in mail costs the worker that sends the batch, now that each form's
mail is Markdown with merge fields in the branded layout.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/bench_confirm \\
    .venv/bin/python bench/confirmations.py

Prints, per mail, in one process and the same run:
- render (CPU): the form's compiled mail filled in for one contact (audience.emails, compiled
  once per form version), the confirm link signed;
- render, compiled per contact: the same if nothing were kept between contacts (a
  Markdown pass, a sanitiser pass and a layout render per mail), which is what compiling
  once per batch saves;
- render, fixed templates: the mail before it could be edited (three template renders
  from the template loader, the old templates/email/confirm*), for comparison;
- send_due: the whole batch path (lock, render, the provider's HTTP API on loopback
  through anymail, clear the debt), against a fake Mailgun (bench/fake_esp.py), and the
  provider call alone for the same messages (the floor: a mail cannot cost less).

The database is created if missing; this run's contacts are deleted afterwards.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# The confirmation mail as it was before forms could edit it (for the comparison only).
OLD_SUBJECT = (
    "{% autoescape off %}Please confirm your subscription{% if form.title %}: "
    "{{ form.title }}{% endif %}{% endautoescape %}"
)
OLD_TEXT = """{% autoescape off %}Hello{% if contact.first_name %} {{ contact.first_name }}\
{% endif %},

Please confirm that you want to hear from us by opening this link:

{{ confirm_url }}

The link works for {{ days }} days. If you did not sign up, ignore this email.
{% endautoescape %}"""
OLD_HTML = """<!doctype html>
<html><body style="font-family: system-ui, sans-serif; line-height: 1.5; color: #222;">
<p>Hello{% if contact.first_name %} {{ contact.first_name }}{% endif %},</p>
<p>Please confirm that you want to hear from us:</p>
<p><a href="{{ confirm_url }}" style="display:inline-block;padding:10px 18px;">Yes</a></p>
<p style="font-size: 13px; color: #555;">Or open this link: {{ confirm_url }}<br>
It works for {{ days }} days.</p>
</body></html>"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--contacts", type=int, default=2000)
    parser.add_argument(
        "--send-due-only", action="store_true",
        help="only the whole batch path (runs on a checkout from before issue 14 too)",
    )  # fmt: skip
    args = parser.parse_args()
    if not os.environ.get("DATABASE_URL", "").startswith("postgres"):
        raise SystemExit("Set DATABASE_URL to a PostgreSQL database (it is created if missing)")
    os.environ.update(
        DJANGO_SETTINGS_MODULE="config.settings", DEBUG="0",
        SECRET_KEY=secrets.token_urlsafe(50), ALLOWED_HOSTS="127.0.0.1",
        SITE_URL="https://stillhere.bench.example", LOG_LEVEL="WARNING",
    )  # fmt: skip
    os.environ.pop("REDIS_URL", None)
    from bench.signup_known import _ensure_database

    _ensure_database(os.environ["DATABASE_URL"])

    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command
    from django.utils import timezone

    from audience import confirmations
    from audience.models import Contact, SignupForm
    from bench.fake_esp import FakeESP
    from campaigns.models import SenderSettings

    call_command("migrate", verbosity=0)
    esp = FakeESP(record="count").start()
    settings.EMAIL_BACKEND = "anymail.backends.mailgun.EmailBackend"
    settings.ANYMAIL = {
        "MAILGUN_API_KEY": "key-bench", "MAILGUN_API_URL": f"{esp.url}/v3",
        "MAILGUN_SENDER_DOMAIN": "mg.bench.example",
    }  # fmt: skip
    sender = SenderSettings.load()
    sender.from_name, sender.from_email = "Bench Shop", "hello@shop.bench.example"
    sender.logo_url, sender.accent_color = "https://shop.bench.example/logo.png", "#aa3300"
    sender.save()
    run = secrets.token_hex(4)
    form = SignupForm.objects.create(name=f"bench {run}", public_key=f"bench-{run}", title="News")
    now = timezone.now()
    domain = f"c-{run}.bench.example"
    names = ("Ann", "Bo", "", "Chidi")
    Contact.objects.bulk_create(
        [
            Contact(email=f"p{i}@{domain}", first_name=names[i % 4],
                    status=Contact.Status.PENDING, signup_form=form, optin_requested_at=now,
                    confirmation_sent_at=now, confirmation_due=True)
            for i in range(args.contacts)
        ]
    )  # fmt: skip
    contacts = list(Contact.objects.filter(email__endswith=domain).select_related("signup_form"))
    print(f"{len(contacts)} confirmation mails, PostgreSQL, fake Mailgun on loopback")
    try:
        if not args.send_due_only:
            _renders(contacts, esp)
        before = esp.state.stats()["requests"]
        started, cpu = time.perf_counter(), time.process_time()
        sent = 0
        while True:
            done, more = confirmations.send_due(limit=500)
            sent += done
            if not more:
                break
        batch = (time.perf_counter() - started) / max(sent, 1) * 1e6
        # CPU of this process (worker and fake provider alike): steadier than the wall
        # clock on a shared machine.
        batch_cpu = (time.process_time() - cpu) / max(sent, 1) * 1e6
        requests = esp.state.stats()["requests"] - before
    finally:
        Contact.objects.filter(email__endswith=domain).delete()
        form.delete()
        esp.shutdown()
    print(f"  send_due, whole path:                   {batch:8.1f} µs/mail, "
          f"{batch_cpu:.1f} µs CPU ({sent} sent, {requests} API calls)")  # fmt: skip


def _renders(contacts: list, esp) -> None:
    """The per-mail figures of the render, and the provider call alone."""
    from django.core.mail import EmailMultiAlternatives, get_connection
    from django.template import engines

    from audience import emails
    from audience.branding import brand_current
    from audience.tokens import contact_url

    brand = brand_current()
    n = len(contacts)

    def per_mail(fn) -> float:
        """CPU per mail: the render is all CPU, and a shared machine's load skews walls."""
        fn(contacts[0])  # warm
        started = time.process_time()
        for contact in contacts:
            fn(contact)
        return (time.process_time() - started) / n * 1e6

    def compiled_once(contact):
        return emails.confirmation_message(contact=contact, brand=brand)

    def compiled_each(contact):
        emails._cache.clear()
        return emails.confirmation_message(contact=contact, brand=brand)

    old = [engines["django"].from_string(t) for t in (OLD_SUBJECT, OLD_TEXT, OLD_HTML)]

    def fixed_templates(contact):
        context = {
            "contact": contact, "form": contact.signup_form, "days": 7,
            "confirm_url": contact_url("confirm", contact),
        }  # fmt: skip
        subject, text, html = (template.render(context) for template in old)
        message = EmailMultiAlternatives(subject=subject, body=text, to=[contact.email])
        message.attach_alternative(html, "text/html")
        return message

    render_once = per_mail(compiled_once)
    render_each = per_mail(compiled_each)
    render_old = per_mail(fixed_templates)
    messages = [emails.confirmation_message(contact=c, brand=brand) for c in contacts]
    connection = get_connection()
    started = time.perf_counter()
    for message in messages:
        connection.send_messages([message])
    floor = (time.perf_counter() - started) / n * 1e6
    print(f"  render, compiled once per form version: {render_once:8.1f} µs/mail")
    print(f"  render, compiled per contact:           {render_each:8.1f} µs/mail")
    print(f"  render, fixed templates (before):       {render_old:8.1f} µs/mail")
    print(f"  provider call alone (floor):            {floor:8.1f} µs/mail")


if __name__ == "__main__":
    main()
