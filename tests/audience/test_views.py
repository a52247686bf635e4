import time
from urllib.parse import urlencode

import hypothesis
import pytest
from django.test import Client, RequestFactory, override_settings
from django.urls import reverse
from hypothesis import strategies as st

from audience import services, views
from audience.forms import render_stamp
from audience.models import ConsentEvent, Contact
from audience.tokens import contact_url, make_token
from tests.factories import ContactFactory, SignupFormFactory

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("eager_tasks", "site_url")]

SHOP = "https://shop.example.com"
JSON = {"HTTP_ACCEPT": "application/json", "HTTP_ORIGIN": SHOP}


@pytest.fixture
def form():
    return SignupFormFactory(public_key="shop", phone_field="optional")


def _post(client, form, data, **headers):
    payload = {"consent": "on", "ts": render_stamp(form), **data}
    return client.post(f"/f/{form.public_key}/submit", payload, **headers)


def test_script_embed_signup_answers_json_with_cors_for_the_shop(
    client, form, mailoutbox, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        response = _post(client, form, {"email": "anna@example.com"}, **JSON)
    assert response.status_code == 200
    assert response.json() == {"ok": True, "message": form.success_message}
    assert response["Access-Control-Allow-Origin"] == SHOP
    contact = Contact.objects.get(email="anna@example.com")
    assert contact.status == "pending"
    assert contact.consent_events.get().method == "form-script"
    assert len(mailoutbox) == 1


@pytest.mark.parametrize(
    "content_type",
    ["application/x-www-form-urlencoded", "application/x-www-form-urlencoded;charset=UTF-8"],
)
def test_an_urlencoded_signup_is_read_as_the_browser_sent_it(client, form, content_type):
    # What both embeds send; a repeated field counts by its last value, as in request.POST.
    fields = [("email", "first@example.com"), ("first_name", "Zoë Ann+Lee"), ("consent", "on")]
    fields += [("ts", render_stamp(form)), ("email", " Anna+1@Example.com ")]
    url = f"/f/{form.public_key}/submit"
    response = client.post(url, urlencode(fields), content_type=content_type, **JSON)
    assert response.status_code == 200, response.content
    contact = Contact.objects.get()
    assert (contact.email, contact.first_name) == ("anna+1@example.com", "Zoë Ann+Lee")


def test_a_body_that_is_not_utf8_gets_a_field_error_and_stores_nothing(client, form):
    body = b"email=\xff\xfe@example.com&consent=on&ts=" + render_stamp(form).encode()
    response = client.post(
        f"/f/{form.public_key}/submit", body, content_type="application/x-www-form-urlencoded",
        **JSON,
    )  # fmt: skip
    assert response.status_code == 422
    assert "email" in response.json()["errors"]
    assert not Contact.objects.exists()


def test_plain_html_signup_redirects_to_the_thank_you_page(client, form):
    response = _post(client, form, {"email": "anna@example.com"}, HTTP_ORIGIN=SHOP)
    assert response.status_code == 302
    assert response["Location"] == "/f/shop/thanks/"
    assert client.get(response["Location"]).status_code == 200
    assert Contact.objects.get().consent_events.get().method == "form-html"


def test_plain_html_signup_goes_to_the_forms_redirect_url(client, form):
    form.redirect_url = "https://shop.example.com/welcome"
    form.save()
    response = _post(client, form, {"email": "anna@example.com"}, HTTP_ORIGIN=SHOP)
    assert response["Location"] == "https://shop.example.com/welcome"


@pytest.mark.parametrize(
    ("data", "field", "message"),
    [
        ({"email": "not-an-email"}, "email", "valid email"),
        ({"email": ""}, "email", "enter your email"),
        ({"email": "a@example.com", "phone": "12345"}, "phone", "valid phone"),
        ({"email": "a@example.com", "first_name": "x" * 101}, "first_name", "at most 100"),
        ({"email": "a@example.com", "consent": ""}, "consent", "tick the box"),
    ],
)
def test_bad_input_gets_a_field_error_and_stores_nothing(client, form, data, field, message):
    response = _post(client, form, data, **JSON)
    assert response.status_code == 422
    errors = response.json()["errors"]
    assert message in " ".join(errors[field]).lower()
    assert not Contact.objects.exists()
    assert not ConsentEvent.objects.exists()


def test_required_name_is_enforced(client):
    form = SignupFormFactory(name_field="required")
    response = _post(client, form, {"email": "a@example.com"}, **JSON)
    assert response.status_code == 422
    assert "first_name" in response.json()["errors"]


def test_plain_html_errors_rerender_the_form_with_the_message(client, form):
    response = _post(client, form, {"email": "nope"}, HTTP_ORIGIN=SHOP)
    assert response.status_code == 422
    assert b"Please enter a valid email address." in response.content
    assert b'value="nope"' in response.content


def test_unicode_names_are_kept_and_line_breaks_stripped(client, form):
    data = {"email": "zoe@example.com", "first_name": "Zoë\r\nBcc: evil@x.com", "last_name": "北川"}
    assert _post(client, form, data, **JSON).status_code == 200
    contact = Contact.objects.get()
    assert contact.first_name == "Zoë Bcc: evil@x.com"
    assert contact.last_name == "北川"


def test_answer_is_the_same_for_new_pending_and_subscribed_addresses(client, form):
    first = _post(client, form, {"email": "new@example.com"}, **JSON)
    again = _post(client, form, {"email": "new@example.com"}, **JSON)
    ContactFactory(email="known@example.com", status="subscribed")
    known = _post(client, form, {"email": "known@example.com"}, **JSON)
    assert first.status_code == again.status_code == known.status_code == 200
    assert first.content == again.content == known.content


def test_honeypot_is_answered_like_success_and_stores_nothing(client, form):
    response = _post(client, form, {"email": "bot@example.com", "website": "http://spam"}, **JSON)
    assert response.status_code == 200
    assert response.json()["ok"] is True
    assert not Contact.objects.exists()


def test_too_fast_or_forged_stamp_is_dropped_silently(client, form, settings):
    settings.SIGNUP_MIN_SECONDS = 5
    fast = _post(client, form, {"email": "fast@example.com"}, **JSON)
    forged = _post(client, form, {"email": "forged@example.com", "ts": "shop:1.0:bad"}, **JSON)
    missing = _post(client, form, {"email": "missing@example.com", "ts": ""}, **JSON)
    assert fast.status_code == forged.status_code == missing.status_code == 200
    assert not Contact.objects.exists()


def test_a_signup_in_the_millisecond_its_form_was_shown_is_kept(client, form, monkeypatch):
    # Without a speed bump (SIGNUP_MIN_SECONDS=0, as in the tests), a stamp rounded up to
    # the next millisecond made such a signup look like it came before its form: a bot.
    monkeypatch.setattr(time, "time", lambda: 1_800_000_000.0006)
    assert _post(client, form, {"email": "quick@example.com"}, **JSON).status_code == 200
    assert Contact.objects.filter(email="quick@example.com").exists()


def test_signup_from_an_origin_not_allowed_is_refused(client, form):
    response = _post(
        client, form, {"email": "a@example.com"},
        HTTP_ACCEPT="application/json", HTTP_ORIGIN="https://evil.example.net",
    )  # fmt: skip
    assert response.status_code == 403
    assert "Access-Control-Allow-Origin" not in response
    assert not Contact.objects.exists()


def test_preflight_allows_only_the_forms_origins(client, form):
    ok = client.options("/f/shop/submit", HTTP_ORIGIN=SHOP)
    assert ok.status_code == 204
    assert ok["Access-Control-Allow-Origin"] == SHOP
    assert "POST" in ok["Access-Control-Allow-Methods"]
    assert "Content-Type" in ok["Access-Control-Allow-Headers"]
    refused = client.options("/f/shop/submit", HTTP_ORIGIN="https://evil.example.net")
    assert refused.status_code == 403


def test_rate_limit_per_ip(client, form, settings):
    settings.SIGNUP_RATE_PER_IP = "3/m"
    codes = [
        _post(client, form, {"email": f"p{i}@example.com"}, **JSON).status_code for i in range(5)
    ]
    assert codes == [200, 200, 200, 429, 429]
    assert Contact.objects.count() == 3


def test_rate_limit_per_form_holds_across_ips(client, form, settings):
    settings.SIGNUP_RATE_PER_FORM = "2/m"
    codes = [
        _post(client, form, {"email": f"p{i}@example.com"}, REMOTE_ADDR=f"198.51.100.{i}",
              **JSON).status_code
        for i in range(3)
    ]  # fmt: skip
    assert codes == [200, 200, 429]


def test_oversized_request_is_refused(client, form, settings):
    settings.SIGNUP_MAX_BYTES = 2048
    response = _post(client, form, {"email": "a@example.com", "last_name": "x" * 4000}, **JSON)
    assert response.status_code == 413
    assert not Contact.objects.exists()


def test_disabled_form_is_gone(client, form):
    form.enabled = False
    form.save()
    assert client.get("/f/shop/").status_code == 404
    assert _post(client, form, {"email": "a@example.com"}, **JSON).status_code == 404


def test_hosted_page_escapes_what_the_admin_typed_and_cannot_be_framed(client):
    form = SignupFormFactory(public_key="bio", title="<script>alert(1)</script>")
    response = client.get("/f/bio/")
    assert response.status_code == 200
    assert b"<script>alert(1)</script>" not in response.content
    assert b"&lt;script&gt;alert(1)&lt;/script&gt;" in response.content
    assert response["X-Frame-Options"] == "DENY"
    assert form.consent_text.encode() in response.content


def test_iframe_view_may_be_framed_only_by_allowed_origins(client, form):
    response = client.get("/f/shop/frame/")
    assert response.status_code == 200
    assert "X-Frame-Options" not in response
    assert response["Content-Security-Policy"] == f"frame-ancestors 'self' {SHOP}"


def test_script_embed_renders_into_a_shadow_root(client, form):
    response = client.get("/f/shop/embed.js")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/javascript")
    body = response.content.decode()
    assert "attachShadow" in body
    assert "http://testserver/f/shop/submit" in body


def test_confirm_link_asks_on_get_and_subscribes_only_on_post(client):
    contact = ContactFactory(status="pending")
    path = contact_url("confirm", contact).removeprefix("http://testserver")
    for _ in range(3):  # a mail scanner prefetching the link, a preview, the person
        response = client.get(path)
        assert response.status_code == 200
        assert b'<form method="post">' in response.content
    contact.refresh_from_db()
    assert contact.status == "pending"
    assert not contact.consent_events.exists()

    # No session, no CSRF cookie: the token is the credential.
    response = Client(enforce_csrf_checks=True).post(path)
    assert response.status_code == 200
    assert b"subscribed" in response.content
    contact.refresh_from_db()
    assert contact.status == "subscribed"
    assert contact.consent_events.get().method == "confirm-link"


def test_an_old_confirm_link_cannot_undo_an_unsubscribe(client):
    contact = ContactFactory(status="pending")
    path = contact_url("confirm", contact).removeprefix("http://testserver")
    services.contact_unsubscribe(contact=contact, evidence=services.Evidence(method="one-click"))
    assert client.get(path).status_code == 400
    assert client.post(path).status_code == 400
    contact.refresh_from_db()
    assert contact.status == "unsubscribed"


def test_a_confirm_link_works_only_for_the_request_it_was_issued_for(client):
    contact = ContactFactory(status="pending")
    first = contact_url("confirm", contact).removeprefix("http://testserver")
    assert client.post(first).status_code == 200  # confirmed: that request is closed
    services.contact_unsubscribe(contact=contact, evidence=services.Evidence(method="one-click"))
    form = SignupFormFactory()
    services.contact_subscribe(
        form=form, email=contact.email, evidence=services.Evidence(method="form-html")
    )  # anyone may type the address: it opens a new request, mailed to its owner
    contact.refresh_from_db()
    assert contact.status == "unsubscribed"
    assert client.post(first).status_code == 400  # the old link is not the new request's
    contact.refresh_from_db()
    assert contact.status == "unsubscribed"
    second = contact_url("confirm", contact).removeprefix("http://testserver")
    assert client.post(second).status_code == 200
    contact.refresh_from_db()
    assert contact.status == "subscribed"


def test_expired_or_tampered_confirm_link_is_refused(client, settings):
    contact = ContactFactory(status="pending")
    token = make_token("confirm", contact)
    assert client.get(f"/confirm/{token}x/").status_code == 400
    settings.CONFIRMATION_MAX_AGE_DAYS = -1  # every link is now past its age
    assert client.get(f"/confirm/{token}/").status_code == 400
    contact.refresh_from_db()
    assert contact.status == "pending"


def test_unsubscribe_token_cannot_confirm():
    contact = ContactFactory(status="pending")
    from audience.tokens import read_token

    assert read_token("confirm", make_token("unsubscribe", contact)) is None


def test_get_of_the_unsubscribe_link_never_unsubscribes(client):
    contact = ContactFactory()
    response = client.get(f"/u/{make_token('unsubscribe', contact)}/")
    assert response.status_code == 200
    assert b"Unsubscribe" in response.content
    contact.refresh_from_db()
    assert contact.status == "subscribed"


def test_one_click_unsubscribe_needs_no_cookie_or_csrf_and_does_not_redirect():
    from django.test import Client

    contact = ContactFactory()
    client = Client(enforce_csrf_checks=True)
    response = client.post(
        f"/u/{make_token('unsubscribe', contact)}/",
        "List-Unsubscribe=One-Click",
        content_type="application/x-www-form-urlencoded",
    )
    assert response.status_code == 200
    contact.refresh_from_db()
    assert contact.status == "unsubscribed"
    assert contact.consent_events.get().method == "one-click"


def test_unsubscribe_page_button_unsubscribes(client):
    contact = ContactFactory()
    response = client.post(f"/u/{make_token('unsubscribe', contact)}/")
    assert response.status_code == 200
    assert b"unsubscribed" in response.content
    contact.refresh_from_db()
    assert contact.status == "unsubscribed"
    assert contact.consent_events.get().method == "unsubscribe-page"


def test_preferences_page_updates_details_and_can_leave(client):
    contact = ContactFactory(first_name="Ann")
    url = f"/p/{make_token('preferences', contact)}/"
    response = client.post(url, {"first_name": "Anna", "last_name": "Lee", "phone": "415 555 0100"})
    assert response.status_code == 200
    contact.refresh_from_db()
    assert (contact.first_name, contact.last_name, contact.phone) == ("Anna", "Lee", "+14155550100")
    bad = client.post(url, {"first_name": "Anna", "last_name": "Lee", "phone": "123"})
    assert bad.status_code == 422
    client.post(url, {"leave": "1"})
    contact.refresh_from_db()
    assert contact.status == "unsubscribed"


def test_demo_shop_page_embeds_the_demo_form(client, settings):
    settings.STILLHERE_DEMO = True
    response = client.get(reverse("audience:demo-shop"))
    assert response.status_code == 200
    assert b"/f/demo/embed.js" in response.content
    settings.STILLHERE_DEMO = False
    assert client.get(reverse("audience:demo-shop")).status_code == 404


def test_a_stale_stamp_is_asked_to_reload_and_stores_nothing(client, form, settings, monkeypatch):
    settings.SIGNUP_STAMP_MAX_AGE = 60
    stamp = render_stamp(form)
    an_hour_later = time.time() + 3600
    monkeypatch.setattr("audience.forms.time.time", lambda: an_hour_later)
    response = _post(client, form, {"email": "late@example.com", "ts": stamp}, **JSON)
    assert response.status_code == 422
    assert "reload the page" in response.json()["errors"]["__all__"][0]
    assert not Contact.objects.exists()


def test_thank_you_and_error_pages_can_be_framed_by_the_shop(client, form):
    thanks = client.get("/f/shop/thanks/")
    error = _post(client, form, {"email": "nope"}, HTTP_ORIGIN=SHOP)
    for response in (thanks, error):
        assert "X-Frame-Options" not in response
        assert response["Content-Security-Policy"] == f"frame-ancestors 'self' {SHOP}"


@pytest.mark.parametrize(
    ("header", "ip"),
    [
        ("203.0.113.9", "203.0.113.9"),
        ("203.0.113.9, 10.0.0.1", "203.0.113.9"),
        (" 2001:DB8::1 ,10.0.0.1", "2001:db8::1"),
        ("not-an-address", None),
        ("1" * 46, None),
        ("", None),
    ],
)
def test_the_client_ip_is_the_first_address_in_the_header_normalised(header, ip):
    request = RequestFactory().post("/", REMOTE_ADDR=header)
    assert views._client_ip(request) == ip


def test_stamps_shown_before_a_secret_key_rotation_are_still_accepted(client, form, settings):
    settings.SIGNUP_MIN_SECONDS = 0
    stamp = render_stamp(form)
    settings.SECRET_KEY_FALLBACKS = [settings.SECRET_KEY]
    settings.SECRET_KEY = "a-new-secret-key-for-the-rotation-" + "x" * 30
    response = _post(client, form, {"email": "rotated@example.com", "ts": stamp}, **JSON)
    assert response.status_code == 200
    assert Contact.objects.filter(email="rotated@example.com").exists()
    settings.SECRET_KEY_FALLBACKS = []  # the old key retired: its stamps are forgeries now
    response = _post(client, form, {"email": "retired@example.com", "ts": stamp}, **JSON)
    assert response.status_code == 200  # a bot learns nothing...
    assert not Contact.objects.filter(email="retired@example.com").exists()  # ...stores nothing


def test_a_latin1_body_is_read_as_django_reads_it(client, form):
    # Not UTF-8: Django falls back to Latin-1, and so do signups.
    body = b"email=zoe%40example.com&first_name=Zo\xeb&consent=on&ts=" + render_stamp(form).encode()
    url = f"/f/{form.public_key}/submit"
    response = client.post(url, body, content_type="application/x-www-form-urlencoded", **JSON)
    assert response.status_code == 200, response.content
    assert Contact.objects.get().first_name == "Zoë"


pieces = st.one_of(
    st.sampled_from(["email", "=", "&", ";", "+", "%", "%2", "%00", "%FF", "%C3%A9", "a", " "]),
    st.text(max_size=5),
).map(str.encode) | st.binary(max_size=4)
content_types = st.sampled_from(
    [
        "application/x-www-form-urlencoded",
        "application/x-www-form-urlencoded;charset=UTF-8",
        "application/x-www-form-urlencoded; charset=utf8",
        "application/x-www-form-urlencoded; charset=latin-1",
        "Application/X-WWW-Form-Urlencoded",
        "text/plain",
    ]
)


@hypothesis.settings(max_examples=300, deadline=None)
@hypothesis.given(body=st.lists(pieces, max_size=30).map(b"".join), content_type=content_types)
@hypothesis.example(b"a=1&b=2&c=3&d=4&e=5&f=6", "application/x-www-form-urlencoded")
def test_a_posted_body_reads_as_request_post_would_read_it(body, content_type):
    def read(reader):
        request = RequestFactory().generic("POST", "/", body, content_type=content_type)
        try:
            fields = reader(request)
            return {key: fields.get(key) for key in fields}
        except Exception as exc:  # the same failure is what is compared
            return type(exc)

    with override_settings(DATA_UPLOAD_MAX_NUMBER_FIELDS=5):
        assert read(views._posted) == read(lambda request: request.POST)


def test_the_embeds_bodies_skip_building_a_querydict():
    # What every embed posts is read without request.POST's QueryDict: a third the cost.
    request = RequestFactory().generic(
        "POST", "/", b"email=a%40b.com", content_type="application/x-www-form-urlencoded"
    )
    assert type(views._posted(request)) is dict
