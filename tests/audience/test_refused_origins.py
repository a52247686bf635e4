"""A form's refused sites: noted (bounded, rate-limited) when a signup or a frame comes
from a site not in its allowed origins, shown on its admin page, allowed in one click."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission
from django.test import Client

from audience import origins
from audience.forms import render_stamp
from audience.models import Contact, RefusedOrigin, SignupForm
from tests.factories import SignupFormFactory

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("eager_tasks", "site_url")]

STRANGER = "https://other-shop.example.org"


@pytest.fixture
def form():
    return SignupFormFactory(public_key="shop", allowed_origins="https://shop.example.com")


def _signup(client, form, origin, email="anna@example.com"):
    payload = {"email": email, "consent": "on", "ts": render_stamp(form)}
    return client.post(
        f"/f/{form.public_key}/submit", payload, HTTP_ACCEPT="application/json", HTTP_ORIGIN=origin
    )


def _open_write_window(form, origin):
    """As if WRITE_EVERY seconds had passed since the last write for (form, origin)."""
    from django.core.cache import cache

    cache.delete(origins._keys(form, origin)[1])


def test_a_signup_from_a_site_not_allowed_is_noted_with_when_and_how_often(client, form):
    assert _signup(client, form, STRANGER).status_code == 403
    refused = RefusedOrigin.objects.get()
    assert (refused.signup_form, refused.origin, refused.hits) == (form, STRANGER, 1)
    assert refused.first_seen == refused.last_seen
    assert not Contact.objects.exists()

    # Within the write window the hits are only counted; the next write adds them all.
    for _ in range(4):
        assert _signup(client, form, STRANGER).status_code == 403
    refused.refresh_from_db()
    assert refused.hits == 1
    _open_write_window(form, STRANGER)
    _signup(client, form, STRANGER)
    refused.refresh_from_db()
    assert refused.hits == 6
    assert refused.last_seen > refused.first_seen
    assert RefusedOrigin.objects.count() == 1


def test_allowed_sites_and_garbage_origins_are_not_noted(client, form):
    assert _signup(client, form, "https://shop.example.com").status_code == 200
    for junk in ["null", "file://", "javascript:alert(1)", "https://" + "a" * 400 + ".example"]:
        assert _signup(client, form, junk).status_code == 403
    assert not RefusedOrigin.objects.exists()


def test_at_most_twenty_refused_sites_are_kept_per_form_the_latest(client, form):
    other = SignupFormFactory(public_key="other")
    _signup(client, other, STRANGER)
    for i in range(origins.MAX_PER_FORM + 5):
        _signup(client, form, f"https://bot{i}.example.net")
    kept = set(RefusedOrigin.objects.filter(signup_form=form).values_list("origin", flat=True))
    assert len(kept) == origins.MAX_PER_FORM
    assert kept == {f"https://bot{i}.example.net" for i in range(5, origins.MAX_PER_FORM + 5)}
    # Another form's list is its own.
    assert RefusedOrigin.objects.get(signup_form=other).origin == STRANGER


def test_an_iframe_on_a_site_not_allowed_is_noted_from_its_request(client, form):
    frame = f"/f/{form.public_key}/frame/"
    headers = {"HTTP_SEC_FETCH_DEST": "iframe"}
    client.get(frame, HTTP_REFERER="https://shop.example.com/page", **headers)
    client.get(frame, HTTP_REFERER="http://testserver/admin/", **headers)  # the admin preview
    client.get(frame, HTTP_REFERER=f"{STRANGER}/blog/post?x=1")  # not a frame: a link
    assert not RefusedOrigin.objects.exists()
    client.get(frame, HTTP_REFERER=f"{STRANGER}/blog/post?x=1", **headers)
    assert RefusedOrigin.objects.get().origin == STRANGER


def test_the_form_page_shows_refused_sites_and_allow_adds_one(admin_client, form):
    _signup(Client(), form, STRANGER)
    page = admin_client.get(f"/admin/audience/signupform/{form.pk}/change/").content.decode()
    assert "<code>https://other-shop.example.org</code>" in page
    assert f'name="origin" value="{STRANGER}">Allow</button>' in page
    assert 'id="allow-origin-form"' in page

    response = admin_client.post(
        f"/admin/audience/signupform/{form.pk}/allow-origin/", {"origin": STRANGER}
    )
    assert response.status_code == 302
    form.refresh_from_db()
    assert form.origins == ["https://shop.example.com", STRANGER]
    assert not RefusedOrigin.objects.exists()
    page = admin_client.get(response["Location"]).content.decode()
    assert "Allowed https://other-shop.example.org to embed this form." in page
    assert "No site has been refused." in page
    # The site's visitors can sign up now.
    assert _signup(Client(), form, STRANGER, email="now@example.com").status_code == 200
    assert Contact.objects.filter(email="now@example.com").exists()

    # Allowing it again changes nothing.
    admin_client.post(f"/admin/audience/signupform/{form.pk}/allow-origin/", {"origin": STRANGER})
    form.refresh_from_db()
    assert form.origins == ["https://shop.example.com", STRANGER]


def test_allow_refuses_what_is_not_an_origin(admin_client, form):
    url = f"/admin/audience/signupform/{form.pk}/allow-origin/"
    response = admin_client.post(url, {"origin": "https://shop.example.com/path"}, follow=True)
    assert "Not an origin like https://shop.example.com" in response.content.decode()
    assert SignupForm.objects.get(pk=form.pk).allowed_origins == "https://shop.example.com"


def test_allow_needs_a_post_with_csrf_and_the_change_permission(form, django_user_model):
    url = f"/admin/audience/signupform/{form.pk}/allow-origin/"
    admin = django_user_model.objects.create_superuser("boss", "b@example.com", "pw")
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(admin)
    assert strict.get(url, {"origin": STRANGER}).status_code == 405
    assert strict.post(url, {"origin": STRANGER}).status_code == 403  # no CSRF token

    clerk = django_user_model.objects.create_user("clerk", password="pw", is_staff=True)
    clerk.user_permissions.add(Permission.objects.get(codename="view_signupform"))
    client = Client()
    client.force_login(clerk)
    assert client.post(url, {"origin": STRANGER}).status_code == 403
    assert SignupForm.objects.get(pk=form.pk).allowed_origins == "https://shop.example.com"


def test_a_new_form_says_embeds_need_their_sites_origin(admin_client):
    page = admin_client.get("/admin/audience/signupform/add/").content.decode()
    assert "work only on the sites listed above" in page
    assert "add your shop&#x27;s origin" in page
