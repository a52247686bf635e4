import json

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from audience.models import Contact, SignupForm, SuppressedEmail
from audience.services import email_hash
from tests.factories import ContactFactory, SignupFormFactory, TagFactory

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("site_url")]

CHANGELIST = "/admin/audience/contact/"


def test_contact_list_never_counts_the_whole_table(admin_client):
    ContactFactory.create_batch(3)
    with CaptureQueriesContext(connection) as queries:
        response = admin_client.get(CHANGELIST, {"status__exact": "subscribed"})
    assert response.status_code == 200
    counts = [q["sql"] for q in queries.captured_queries if "COUNT(" in q["sql"].upper()]
    assert counts, "the paginator should count (a bounded subquery)"
    contact_counts = [sql for sql in counts if "audience_contact" in sql]
    assert all("LIMIT" in sql.upper() for sql in contact_counts), contact_counts


@pytest.mark.parametrize(
    ("term", "expected"),
    [("anna@", ["anna@example.com"]), ("Lee", ["bo@example.com"]), ("+1415", ["anna@example.com"]),
     ("Anna Smith", ["anna@example.com"])],
)  # fmt: skip
def test_search_by_email_name_and_phone(admin_client, term, expected):
    ContactFactory(email="anna@example.com", first_name="Anna", last_name="Smith",
                   phone="+14155550100")  # fmt: skip
    ContactFactory(email="bo@example.com", first_name="Bo", last_name="Lee")
    response = admin_client.get(CHANGELIST, {"q": term})
    assert [c.email for c in response.context["cl"].result_list] == expected


def test_filters_by_tag_source_and_form(admin_client):
    tag = TagFactory(name="vip")
    form = SignupFormFactory()
    vip = ContactFactory(source="form", signup_form=form)
    vip.tags.add(tag)
    ContactFactory(source="import")
    for params in ({"tag": tag.pk}, {"source__exact": "form"}, {"signup_form__id__exact": form.pk}):
        response = admin_client.get(CHANGELIST, params)
        assert list(response.context["cl"].result_list) == [vip], params


def test_bulk_tag_untag_and_unsubscribe(admin_client):
    contacts = ContactFactory.create_batch(2)
    ids = [str(c.pk) for c in contacts]
    admin_client.post(
        CHANGELIST, {"action": "tag_selected", "_selected_action": ids, "tag": "Outage"}
    )
    assert Contact.objects.filter(tags__name="Outage").count() == 2
    admin_client.post(
        CHANGELIST, {"action": "untag_selected", "_selected_action": ids[:1], "tag": "outage"}
    )
    assert Contact.objects.filter(tags__name="Outage").count() == 1
    admin_client.post(CHANGELIST, {"action": "unsubscribe_selected", "_selected_action": ids})
    assert set(Contact.objects.values_list("status", flat=True)) == {"unsubscribed"}
    event = contacts[0].consent_events.get()
    assert (event.method, event.actor) == ("admin", "admin")


def test_change_page_shows_the_consent_timeline(admin_client, eager_tasks):
    from audience import services

    contact = ContactFactory(status="pending")
    services.contact_confirm(
        contact=contact,
        requested_at=contact.optin_requested_at,
        evidence=services.Evidence(method="confirm-link"),
    )
    response = admin_client.get(f"{CHANGELIST}{contact.pk}/change/")
    assert response.status_code == 200
    assert b"Consent timeline" in response.content
    assert b"confirm-link" in response.content


def test_gdpr_export_and_erase(admin_client):
    contact = ContactFactory(email="me@example.com", first_name="Mia")
    contact.tags.add(TagFactory(name="vip"))
    response = admin_client.get(f"{CHANGELIST}{contact.pk}/export-data/")
    data = json.loads(response.content)
    assert (data["email"], data["first_name"], data["tags"]) == ("me@example.com", "Mia", ["vip"])

    assert admin_client.get(f"{CHANGELIST}{contact.pk}/erase/").status_code == 200
    assert Contact.objects.filter(pk=contact.pk).exists()  # GET only asks
    admin_client.post(f"{CHANGELIST}{contact.pk}/erase/")
    assert not Contact.objects.filter(pk=contact.pk).exists()
    assert SuppressedEmail.objects.filter(email_hash=email_hash("me@example.com")).exists()


def test_staff_without_delete_permission_cannot_erase(client, django_user_model):
    from django.contrib.auth.models import Permission

    staff = django_user_model.objects.create_user("clerk", password="pw", is_staff=True)
    staff.user_permissions.add(*Permission.objects.filter(codename__in=["view_contact"]))
    client.force_login(staff)
    contact = ContactFactory()
    assert client.post(f"{CHANGELIST}{contact.pk}/erase/").status_code == 403
    assert Contact.objects.filter(pk=contact.pk).exists()


def test_signup_form_page_has_all_four_snippets_and_a_live_preview(admin_client):
    form = SignupFormFactory(public_key="footer")
    response = admin_client.get(f"/admin/audience/signupform/{form.pk}/change/")
    body = response.content.decode()
    assert "http://testserver/f/footer/embed.js" in body
    assert "&lt;form class=&quot;sh-form&quot; method=&quot;post&quot;" in body
    assert "http://testserver/f/footer/frame/" in body
    assert "http://testserver/f/footer/" in body
    assert '<iframe src="/f/footer/frame/"' in body


def test_signup_form_refuses_an_allowed_origin_with_a_path(admin_client):
    form = SignupFormFactory()
    response = admin_client.post(
        f"/admin/audience/signupform/{form.pk}/change/",
        {"name": form.name, "title": "t", "button_label": "Go", "name_field": "optional",
         "phone_field": "hidden", "success_message": "ok", "enabled": "on",
         "double_opt_in": "on", "allowed_origins": "https://shop.example.com/page"},
    )  # fmt: skip
    assert response.status_code == 200
    assert "Each line must be an origin" in response.content.decode()


def test_admin_added_contact_is_normalised(admin_client):
    response = admin_client.post(
        "/admin/audience/contact/add/",
        {"email": " Kim@Example.COM ", "first_name": "Kim", "last_name": "",
         "phone": "(415) 555-0100", "attributes": "{}",
         "consent_events-TOTAL_FORMS": "0", "consent_events-INITIAL_FORMS": "0"},
    )  # fmt: skip
    assert response.status_code == 302, response.content
    contact = Contact.objects.get()
    assert (contact.email, contact.phone, contact.source) == (
        "kim@example.com", "+14155550100", "admin")  # fmt: skip


def test_admin_adding_a_known_address_in_another_case_is_refused_clearly(admin_client):
    ContactFactory(email="kim@example.com")
    response = admin_client.post(
        "/admin/audience/contact/add/",
        {"email": "KIM@example.com", "first_name": "Kim", "last_name": "", "phone": "",
         "attributes": "{}",
         "consent_events-TOTAL_FORMS": "0", "consent_events-INITIAL_FORMS": "0"},
    )  # fmt: skip
    assert response.status_code == 200
    assert "already exists" in response.content.decode()
    assert Contact.objects.count() == 1


# --- admin writes leave evidence ------------------------------------------------------


def _add_form(**values):
    return {"email": "", "first_name": "", "last_name": "", "phone": "", "attributes": "{}",
            "consent_events-TOTAL_FORMS": "0", "consent_events-INITIAL_FORMS": "0",
            **values}  # fmt: skip


@pytest.mark.usefixtures("eager_tasks")
def test_a_contact_added_in_the_admin_is_recorded_and_asked_to_confirm(
    admin_client, admin_user, settings, django_capture_on_commit_callbacks, mailoutbox
):
    settings.CLIENT_IP_HEADER = "HTTP_X_REAL_IP"
    tag = TagFactory(name="market-stall")
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            f"{CHANGELIST}add/",
            _add_form(email="Stall@Example.com", first_name="Sol", tags=[tag.pk]),
            HTTP_X_REAL_IP="198.51.100.23",
            REMOTE_ADDR="10.0.0.1",  # the proxy's own address
        )
    assert response.status_code == 302, response.content
    contact = Contact.objects.get(email="stall@example.com")
    assert (contact.status, contact.source) == ("pending", "admin")
    assert list(contact.tags.all()) == [tag]
    event = contact.consent_events.get()
    assert (event.kind, event.status_before, event.status_after) == ("admin", "", "pending")
    assert (event.actor, event.ip) == (admin_user.get_username(), "198.51.100.23")
    assert [m.to for m in mailoutbox] == [["stall@example.com"]]
    assert "/confirm/" in mailoutbox[0].body


@pytest.mark.usefixtures("eager_tasks")
def test_an_admin_edit_is_recorded_and_a_new_address_must_confirm_again(
    admin_client, admin_user, django_capture_on_commit_callbacks, mailoutbox
):
    contact = ContactFactory(email="old@example.com", first_name="Al", status="subscribed")
    url = f"{CHANGELIST}{contact.pk}/change/"
    data = {"email": "old@example.com", "first_name": "Alma", "last_name": contact.last_name,
            "phone": "", "attributes": "{}", "consent_events-TOTAL_FORMS": "0",
            "consent_events-INITIAL_FORMS": "0"}  # fmt: skip
    assert admin_client.post(url, data).status_code == 302
    contact.refresh_from_db()
    assert (contact.first_name, contact.status) == ("Alma", "subscribed")
    event = contact.consent_events.get()
    assert (event.kind, event.actor, event.detail) == (
        "admin", admin_user.get_username(), {"changed": ["first_name"]})  # fmt: skip

    with django_capture_on_commit_callbacks(execute=True):
        assert admin_client.post(url, {**data, "email": "new@example.com"}).status_code == 302
    contact.refresh_from_db()
    # The new address never consented: it is asked, and is not mailed campaigns meanwhile.
    assert (contact.email, contact.status) == ("new@example.com", "pending")
    assert [m.to for m in mailoutbox] == [["new@example.com"]]


def test_the_admin_cannot_add_an_erased_address(admin_client):
    SuppressedEmail.objects.create(email_hash=email_hash("gone@example.com"))
    response = admin_client.post(f"{CHANGELIST}add/", _add_form(email="gone@example.com"))
    assert response.status_code == 200
    assert b"erased at its owner" in response.content
    assert not Contact.objects.filter(email="gone@example.com").exists()


def test_changing_a_suppressed_contacts_address_ends_its_open_request(admin_client):
    contact = ContactFactory(email="was@example.com", status="unsubscribed")
    Contact.objects.filter(pk=contact.pk).update(optin_requested_at=contact.created_at)
    data = {"email": "now@example.com", "first_name": contact.first_name,
            "last_name": contact.last_name, "phone": "", "attributes": "{}",
            "consent_events-TOTAL_FORMS": "0", "consent_events-INITIAL_FORMS": "0"}  # fmt: skip
    assert admin_client.post(f"{CHANGELIST}{contact.pk}/change/", data).status_code == 302
    contact.refresh_from_db()
    # The request was opened for the old address: nobody may confirm it from the new one.
    assert (contact.status, contact.optin_requested_at, contact.confirmation_due) == (
        "unsubscribed", None, False)  # fmt: skip


def test_signup_form_add_page_shows_no_key_and_the_saved_form_shows_its_own(
    admin_client, monkeypatch
):
    # Each new form instance draws a fresh key: the add page's instance, then the saved one.
    keys = iter(["addpagekey1", "savedkey22", "spare333"])
    field = SignupForm._meta.get_field("public_key")
    monkeypatch.setattr(field, "default", lambda: next(keys))
    page = admin_client.get("/admin/audience/signupform/add/").content.decode()
    assert "Given when you save the form." in page
    assert "addpagekey1" not in page

    response = admin_client.post(
        "/admin/audience/signupform/add/",
        {"name": "Footer", "title": "t", "button_label": "Go", "name_field": "optional",
         "phone_field": "hidden", "success_message": "ok", "enabled": "on",
         "double_opt_in": "on", "allowed_origins": "https://shop.example.com"},
    )  # fmt: skip
    assert response.status_code == 302
    saved = SignupForm.objects.get(name="Footer")
    page = admin_client.get(f"/admin/audience/signupform/{saved.pk}/change/").content.decode()
    assert f'<div class="readonly">{saved.public_key}</div>' in page
    assert f"/f/{saved.public_key}/embed.js" in page


# --- the contact page's consent actions, the form's confirmation email -----------------


def _pending_contact():
    from datetime import timedelta

    from django.utils import timezone

    return ContactFactory(
        status="pending", confirmation_sent_at=timezone.now() - timedelta(hours=1)
    )


def test_a_pending_contacts_page_offers_resend_and_mark_subscribed(admin_client):
    pending = _pending_contact()
    body = admin_client.get(f"{CHANGELIST}{pending.pk}/change/").content.decode()
    assert f'formaction="{CHANGELIST}{pending.pk}/resend-confirmation/"' in body
    assert f'href="{CHANGELIST}{pending.pk}/mark-subscribed/"' in body
    gone = ContactFactory(status="unsubscribed")
    body = admin_client.get(f"{CHANGELIST}{gone.pk}/change/").content.decode()
    assert "resend-confirmation" not in body and "mark-subscribed" not in body
    assert "comes back only by their own act" in body


def test_resend_confirmation_posts_once_per_window_and_a_get_sends_nothing(
    admin_client, mailoutbox, eager_tasks, django_capture_on_commit_callbacks
):
    contact = _pending_contact()
    url = f"{CHANGELIST}{contact.pk}/resend-confirmation/"
    with django_capture_on_commit_callbacks(execute=True):
        assert admin_client.get(url).status_code == 302
    assert not mailoutbox
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(url, follow=True)
    assert "A new confirmation email is on its way" in response.content.decode()
    assert [m.to for m in mailoutbox] == [[contact.email]]
    assert contact.consent_events.get().actor == "admin"
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(url, follow=True)
    assert "another can be sent in about 10 minutes" in response.content.decode()
    assert len(mailoutbox) == 1


def test_staff_who_may_only_view_cannot_resend_or_mark_subscribed(
    client, django_user_model, mailoutbox
):
    from django.contrib.auth.models import Permission

    staff = django_user_model.objects.create_user("viewer", password="pw", is_staff=True)
    staff.user_permissions.add(*Permission.objects.filter(codename="view_contact"))
    client.force_login(staff)
    contact = _pending_contact()
    assert client.post(f"{CHANGELIST}{contact.pk}/resend-confirmation/").status_code == 403
    response = client.post(f"{CHANGELIST}{contact.pk}/mark-subscribed/", {"statement": "x"})
    assert response.status_code == 403
    contact.refresh_from_db()
    assert (contact.status, contact.confirmation_due) == ("pending", False)
    assert not contact.consent_events.exists()


def test_mark_subscribed_with_evidence_from_the_contact_page(admin_client):
    contact = _pending_contact()
    url = f"{CHANGELIST}{contact.pk}/mark-subscribed/"
    assert "How did this person give their consent?" in admin_client.get(url).content.decode()
    response = admin_client.post(url, {"statement": ""})
    assert response.status_code == 200
    assert "This field is required" in response.content.decode()
    assert Contact.objects.get(pk=contact.pk).status == "pending"
    response = admin_client.post(url, {"statement": "Ticked the box on the paper order form"})
    assert response.status_code == 302
    contact.refresh_from_db()
    assert contact.status == "subscribed"
    event = contact.consent_events.get()
    assert (event.actor, event.consent_text) == ("admin", "Ticked the box on the paper order form")
    timeline = admin_client.get(f"{CHANGELIST}{contact.pk}/change/").content.decode()
    assert "Ticked the box on the paper order form" in timeline


@pytest.mark.parametrize("status", ["unsubscribed", "bounced", "complained"])
def test_mark_subscribed_refuses_a_suppressed_contact_clearly(admin_client, status):
    contact = ContactFactory(status=status)
    url = f"{CHANGELIST}{contact.pk}/mark-subscribed/"
    page = admin_client.get(url).content.decode()
    assert f"{contact.email} is {status}. Only their own act" in page
    assert 'type="submit"' not in page.split('id="content"')[-1]
    response = admin_client.post(url, {"statement": "They told me on the phone"})
    assert "Only their own act" in response.content.decode()
    contact.refresh_from_db()
    assert contact.status == status
    assert not contact.consent_events.exists()


def _form_post(form, **changes):
    data = {"name": form.name, "title": form.title, "button_label": "Go",
            "name_field": "optional", "phone_field": "hidden", "success_message": "ok",
            "enabled": "on", "double_opt_in": "on", "allowed_origins": "https://shop.example.com",
            "confirmation_subject": form.confirmation_subject,
            "confirmation_body": form.confirmation_body}  # fmt: skip
    return {**data, **changes}


def test_the_signup_form_page_edits_and_previews_its_confirmation_email(admin_client, sender):
    sender.logo_url = "https://corner.example/logo.png"
    sender.save()
    form = SignupFormFactory(title="Footer")
    url = f"/admin/audience/signupform/{form.pk}/change/"
    body = admin_client.get(url).content.decode()
    assert "Confirmation email (double opt-in)" in body
    assert 'name="confirmation_body"' in body
    # The preview is the mail as sent: the shop's logo, the subject, a confirm button.
    assert "<strong>Subject:</strong> Please confirm your subscription: Footer" in body
    assert "srcdoc=" in body and "https://corner.example/logo.png" in body
    assert "Yes, subscribe me" in body

    response = admin_client.post(url, _form_post(form, confirmation_body="Welcome! No link."))
    assert response.status_code == 200
    assert "The email must link to {{ confirm_url }}" in response.content.decode()
    form.refresh_from_db()
    assert "{{ confirm_url }}" in form.confirmation_body

    new_body = "Welcome to the **market** list. [Confirm]({{ confirm_url }})"
    response = admin_client.post(url, _form_post(form, confirmation_body=new_body))
    assert response.status_code == 302
    form.refresh_from_db()
    assert form.confirmation_body == new_body
    assert "Welcome to the &lt;strong&gt;market&lt;/strong&gt; list." in (
        admin_client.get(url).content.decode()
    )  # in the preview's srcdoc, escaped once
