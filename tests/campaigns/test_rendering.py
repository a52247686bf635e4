"""Rendering: the sandboxed merge fields, Markdown, escaping, layout and headers."""

import html
import re

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


# --- what a subject, a preheader or a merge field can put into the HTML -------------------


def test_subject_and_preheader_are_text_in_the_html_whatever_they_hold():
    campaign = Campaign(
        pk=97,
        name="c",
        subject="Sale</title><script>alert(1)</script> {{ first_name }}",
        preheader='Hi {% if first_name %}<img src=x onerror="alert(2)">{% endif %} & more',
        body="Body",
    )
    contact = Contact(pk=7, email="ann@example.com", first_name="<b>Ann</b>")
    message = render_message(campaign=campaign, contact=contact, sender=_sender())
    assert "<script>" not in message.html
    assert "<img src=x" not in message.html
    assert "<b>Ann" not in message.html
    title = message.html.split("<title>")[1].split("</title>")[0]
    assert title == (
        "Sale&lt;/title&gt;&lt;script&gt;alert(1)&lt;/script&gt; &lt;b&gt;Ann&lt;/b&gt;"
    )
    assert "Hi &lt;img src=x onerror=&quot;alert(2)&quot;&gt; &amp; more" in message.html
    # The mail's own subject is plain text, as typed.
    assert message.subject == "Sale</title><script>alert(1)</script> <b>Ann</b>"


UNSAFE_LINKS = [
    "javascript:alert(1)",
    " JaVaScRiPt:alert(1)",
    "\x01java\tscript:alert(1)",
    "data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==",
    "&#106;avascript:alert(1)",
    "&#x6A;avascript&colon;alert(1)",
    "vbscript:msgbox(1)",
    "//evil.example/x",
]


def _link_contact(link: str) -> Contact:
    return Contact(pk=7, email="ann@example.com", first_name="Ann", attributes={"link": link})


@pytest.mark.parametrize("link", UNSAFE_LINKS)
def test_a_merge_field_cannot_make_an_unsafe_link(link):
    body = (
        "[Markdown]({{ attributes.link }}) "
        '<a href="{{ attributes.link }}">raw</a> '
        '<a href="java{{ attributes.rest }}">glued</a> '
        '<img src="{{ attributes.link }}" alt="pic">'
    )
    contact = _link_contact(link)
    contact.attributes["rest"] = "script:alert(3)"
    message = _render(body, contact=contact)
    html = message.html.split("<td style=", 2)[2]  # the body onwards, past the logo
    text = message.text.split("--")[0]
    assert "script:" not in html.lower()
    assert "data:" not in html
    assert "evil.example" not in html
    assert "Markdown</a>" in html and "raw</a>" in html and "glued</a>" in html
    for anchor in re.findall(r"<a\b[^>]*>(?:Markdown|raw|glued)</a>", html):
        assert "href" not in anchor
    assert '<img alt="pic">' in html
    assert "script:" not in text.lower()
    assert "Markdown raw glued" in text


@pytest.mark.parametrize(
    "link",
    [
        "https://corner.example/a?b=1&c=<2>",
        "http://corner.example/",
        "mailto:owner@corner.example?subject=Hi",
        "tel:+14155550100",
        "  HTTPS://corner.example/upper  ",
    ],
)
def test_http_https_mailto_and_tel_merge_links_keep_working(link):
    message = _render("[Go]({{ attributes.link }})", contact=_link_contact(link))
    kept = link.strip()
    assert f'href="{html.escape(kept)}"' in message.html
    assert f"Go ({kept})" in message.text


def test_literal_links_keep_only_safe_schemes():
    body = "[a](ftp://corner.example/f) [b](https://corner.example/ok) [c](sms:+1415)"
    message = _render(body)
    assert 'href="https://corner.example/ok"' in message.html
    assert "ftp:" not in message.html
    assert "sms:" not in message.html


@pytest.fixture
def shop(transactional_db):
    from campaigns import ratelimit

    ratelimit.reset()
    SenderSettings.objects.update_or_create(
        pk=1,
        defaults={
            "from_name": "Corner Shop",
            "from_email": "news@corner.example",
            "postal_address": "2 Market Street",
        },
    )
    yield SenderSettings.load()
    ratelimit.reset()


@pytest.mark.parametrize("mode", [Campaign.SendMode.PER_MESSAGE, Campaign.SendMode.BATCH])
def test_what_the_provider_receives_is_escaped_and_safe_in_both_sending_modes(esp, shop, mode):
    from campaigns import sending, services

    bad = Contact.objects.create(
        email="bad@example.com",
        status=Contact.Status.SUBSCRIBED,
        first_name="<b>Bad</b>",
        attributes={"link": " JaVaScRiPt:alert(1)"},
    )
    good = Contact.objects.create(
        email="good@example.com",
        status=Contact.Status.SUBSCRIBED,
        first_name="Good",
        attributes={"link": "https://corner.example/good"},
    )
    campaign = services.campaign_start(
        campaign=Campaign.objects.create(
            name="c",
            subject="Deals <script>x</script> for {{ first_name }}",
            preheader="<i>today</i>",
            body="Hi {{ first_name }}, [your page]({{ attributes.link }})",
            send_mode=mode,
        )
    )
    sending.chunk_send(campaign_id=campaign.pk, chunk=0)

    messages = {m["to"]: m for m in esp.state.messages()}
    assert sorted(messages) == [bad.email, good.email]
    if mode == Campaign.SendMode.BATCH:
        assert "%recipient." in esp.state.raw[0][1]["html"][0]
    for message in messages.values():
        assert "<script>" not in message["html"]
        assert "<i>today" not in message["html"]
        assert "&lt;i&gt;today&lt;/i&gt;" in message["html"]
    assert "<b>Bad" not in messages[bad.email]["html"]
    assert (
        "<title>Deals &lt;script&gt;x&lt;/script&gt; for &lt;b&gt;Bad&lt;/b&gt;</title>"
        in (messages[bad.email]["html"])
    )
    assert "javascript" not in messages[bad.email]["html"].lower()
    assert "your page</a>" in messages[bad.email]["html"]
    assert 'href="https://corner.example/good"' in messages[good.email]["html"]
    assert messages[bad.email]["subject"] == "Deals <script>x</script> for <b>Bad</b>"
