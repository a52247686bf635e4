"""Rendering: the sandboxed merge fields, Markdown, escaping, layout and headers."""

import pytest
from django.core.exceptions import ValidationError

from audience.models import Contact
from audience.tokens import read_token
from campaigns.models import Campaign, SenderSettings
from campaigns.rendering import check_template, render_message


def _sender(**kwargs) -> SenderSettings:
    values = {
        "from_name": "Corner Shop",
        "from_email": "news@corner.example",
        "postal_address": "Corner Shop\n2 Market Street",
        "logo_url": "https://corner.example/logo.png",
        "accent_color": "#aa3300",
    }
    values.update(kwargs)
    return SenderSettings(**values)


def _render(body: str, contact: Contact | None = None, sender=None, **campaign_fields):
    campaign = Campaign(pk=99, name="c", subject="News", body=body, **campaign_fields)
    contact = contact or Contact(pk=7, email="ann@example.com", first_name="Ann")
    return render_message(campaign=campaign, contact=contact, sender=sender or _sender())


@pytest.mark.parametrize(
    "text",
    [
        "{% load static %}{% static 'x' %}",
        "{% include 'admin/base.html' %}",
        "{% extends 'admin/base.html' %}",
        "{% debug %}",
        "{{ first_name|safe }}",
        "{{ password }}",
        "{{ first_name",
        "{% if first_name %}no end",
    ],
)
def test_check_template_refuses_what_the_sandbox_does_not_allow(text):
    with pytest.raises(ValidationError):
        check_template(text)


@pytest.mark.parametrize(
    "text",
    [
        'Hi {{ first_name|default:"friend" }}',
        "{{ email }} {{ full_name|upper }} {{ attributes.city|default:'' }}",
        "{% if phone %}Call {{ phone }}{% endif %} {{ shop_url }}",
        "Plain text, no fields.",
    ],
)
def test_check_template_accepts_contact_fields_and_safe_filters(text):
    check_template(text)


def test_merge_values_are_escaped_for_html_and_left_raw_for_text():
    contact = Contact(pk=7, email="x@example.com", first_name="<script>x</script> & Co")
    message = _render("Hello {{ first_name }}!", contact=contact)
    assert "Hello &lt;script&gt;x&lt;/script&gt; &amp; Co!" in message.html
    assert "<script>" not in message.html
    assert "Hello <script>x</script> & Co!" in message.text


def test_markdown_becomes_sanitised_html_and_readable_text():
    body = (
        "# Still here\n\nWe are **open**. [Order now](https://corner.example/shop)\n\n"
        '<p style="color:red" onclick="steal()">raw html</p>\n\n<script>alert(1)</script>\n\n'
        "- one\n- two"
    )
    message = _render(body)
    assert "<h1>Still here</h1>" in message.html
    assert "<strong>open</strong>" in message.html
    assert 'style="color:red"' in message.html
    assert "onclick" not in message.html
    assert "alert(1)" not in message.html
    assert "Order now (https://corner.example/shop)" in message.text
    assert "- one\n- two" in message.text
    assert "<" not in message.text.split("--")[0]


def test_merge_field_inside_a_link_survives_markdown():
    message = _render("[Your page](https://corner.example/u?e={{ email|urlencode }})")
    assert 'href="https://corner.example/u?e=ann%40example.com"' in message.html


def test_layout_carries_logo_colour_preheader_address_and_links():
    message = _render("Body", preheader="Sneak peek for {{ first_name }}")
    assert 'src="https://corner.example/logo.png"' in message.html
    assert "#aa3300" in message.html
    assert "Sneak peek for Ann" in message.html
    assert "Corner Shop<br>2 Market Street" in message.html
    assert "2 Market Street" in message.text
    assert ">Unsubscribe</a>" in message.html
    assert "/p/" in message.html  # preferences link
    assert "Unsubscribe: http" in message.text


def test_bad_accent_colour_cannot_inject_css():
    message = _render("Body", sender=_sender(accent_color="red;x"))
    assert "red;x" not in message.html


def test_headers_offer_one_click_unsubscribe_and_mailto_when_configured(settings, db):
    settings.UNSUBSCRIBE_MAILTO = "unsubscribe@corner.example"
    contact = Contact.objects.create(email="bo@example.com", status="subscribed")
    message = _render("Body", contact=contact)
    value = message.headers["List-Unsubscribe"]
    https, mailto = value.split(", ")
    assert https.startswith("<http://testserver/u/")
    token = https.strip("<>").rstrip("/").rsplit("/", 1)[-1]
    assert read_token("unsubscribe", token) == contact
    assert mailto == "<mailto:unsubscribe@corner.example?subject=unsubscribe>"
    assert message.headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert https.strip("<>") in message.html
    assert https.strip("<>") in message.text


def test_subject_merges_without_html_escaping():
    campaign = Campaign(pk=5, name="c", subject="Tom & Jerry: {{ first_name }}", body="x")
    contact = Contact(pk=3, email="a@example.com", first_name="<Ann>")
    message = render_message(campaign=campaign, contact=contact, sender=_sender())
    assert message.subject == "Tom & Jerry: <Ann>"
    assert message.from_email == "Corner Shop <news@corner.example>"


def test_fast_links_are_exactly_the_audience_tokens(db, monkeypatch):
    import time

    from audience.tokens import contact_url
    from campaigns.rendering import _links_for_settings, contact_links

    assert _links_for_settings().fast
    monkeypatch.setattr(time, "time", lambda: 1_800_000_000.5)
    saved = Contact.objects.create(email="short@example.com")
    for contact in (saved, Contact(pk=123456789, email="Ünï@Example.com")):
        assert contact_links(contact) == (
            contact_url("unsubscribe", contact),
            contact_url("preferences", contact),
        )
    token = contact_links(saved)[0].rstrip("/").rsplit("/", 1)[-1]
    assert read_token("unsubscribe", token) == saved


def test_blocks_with_the_same_condition_keep_their_own_bodies_and_values_per_contact():
    body = "{% if first_name %}A {{ first_name }}{% endif %} / {% if first_name %}B{% endif %}"
    campaign = Campaign(pk=98, name="c", subject="S", body=body)
    sender = _sender()
    first = render_message(
        campaign=campaign,
        contact=Contact(pk=1, email="a@example.com", first_name="Ann"),
        sender=sender,
    )
    second = render_message(
        campaign=campaign,
        contact=Contact(pk=2, email="b@example.com", first_name="Bo"),
        sender=sender,
    )
    nobody = render_message(
        campaign=campaign,
        contact=Contact(pk=3, email="c@example.com", first_name=""),
        sender=sender,
    )
    assert "A Ann / B" in first.text
    assert "A Bo / B" in second.text
    assert "A " not in nobody.text.split("--")[0]
    assert " / " in nobody.text
