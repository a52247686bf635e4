"""The contacts API by hand: the consent rules an API client is held to (the same as a
store sync: it never re-subscribes an opted-out contact), field errors, tags, GDPR export
and erasure, and paging through a list without a count."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from audience.models import ConsentEvent, Contact, Store, StoreCustomer, SuppressedEmail, Tag
from audience.services import Evidence, contact_unsubscribe
from tests.factories import ContactFactory, TagFactory

pytestmark = pytest.mark.django_db

Status = Contact.Status
CONTACTS = "/api/v1/contacts/"


def _upsert(api, **body):
    return api.post(CONTACTS, body, format="json", HTTP_USER_AGENT="shop-backend/2.1")


# --- upsert ---------------------------------------------------------------------------


def test_upsert_creates_a_contact_with_the_callers_consent_evidence(api):
    opted_in = timezone.now() - timedelta(days=2)
    response = _upsert(
        api, email=" Ada@Example.COM ", first_name="Ada", last_name="Lovelace",
        phone="+1 415 555 0100", tags=["vip", "newsletter"],
        consent={"status": "subscribed", "at": opted_in.isoformat(), "text": "Email me news"},
    )  # fmt: skip
    assert response.status_code == 201, response.json()
    body = response.json()
    contact = Contact.objects.get(email="ada@example.com")
    assert body["id"] == contact.pk
    assert (body["email"], body["status"], body["source"], body["phone"]) == (
        "ada@example.com", "subscribed", "api", "+14155550100",
    )  # fmt: skip
    assert sorted(body["tags"]) == ["newsletter", "vip"]
    event = contact.consent_events.get()
    assert (event.kind, event.method, event.status_after, event.consent_text) == (
        ConsentEvent.Kind.SYNC, "api", Status.SUBSCRIBED, "Email me news",
    )  # fmt: skip
    assert (event.ip, event.user_agent) == ("127.0.0.1", "shop-backend/2.1")
    assert event.actor == f"api:{api.api_token.prefix}"


def test_upsert_updates_the_contact_with_200(api):
    contact = ContactFactory(email="ada@example.com", first_name="Ada", phone="")
    response = _upsert(api, email="ada@example.com", last_name="King", phone="+14155550100")
    assert response.status_code == 200, response.json()
    contact.refresh_from_db()
    assert (contact.first_name, contact.last_name, contact.phone) == (
        "Ada", "King", "+14155550100",
    )  # fmt: skip
    assert response.json()["id"] == contact.pk
    assert Contact.objects.count() == 1


def test_upsert_without_consent_stores_a_pending_contact_and_asks_nothing(api, mailoutbox):
    response = _upsert(api, email="new@example.com")
    assert response.status_code == 201
    contact = Contact.objects.get()
    assert (contact.status, contact.confirmation_due) == (Status.PENDING, False)


def test_upsert_pending_asks_for_a_double_opt_in(api):
    assert _upsert(api, email="new@example.com", consent={"status": "pending"}).status_code == 201
    contact = Contact.objects.get()
    assert contact.status == Status.PENDING
    assert contact.confirmation_due and contact.optin_requested_at is not None


@pytest.mark.parametrize("status", [Status.UNSUBSCRIBED, Status.BOUNCED, Status.COMPLAINED])
def test_upsert_never_resubscribes_an_opted_out_contact(api, status):
    contact = ContactFactory(status=status, unsubscribed_at=timezone.now() - timedelta(days=1))
    response = _upsert(
        api, email=contact.email, consent={"status": "subscribed", "at": timezone.now().isoformat()}
    )
    assert response.status_code == 200
    assert response.json()["status"] == status
    contact.refresh_from_db()
    assert contact.status == status
    assert not contact.consent_events.filter(status_after=Status.SUBSCRIBED).exists()


def test_upsert_of_an_unsubscribed_contact_from_a_later_api_unsubscribe_stays_out(api):
    contact = ContactFactory(status=Status.SUBSCRIBED)
    assert api.post(f"{CONTACTS}{contact.pk}/unsubscribe/").status_code == 200
    for ask in ("subscribed", "none", "pending"):
        assert _upsert(api, email=contact.email, consent={"status": ask}).status_code == 200
        contact.refresh_from_db()
        assert contact.status == Status.UNSUBSCRIBED


def test_upsert_subscribe_completes_a_pending_contact(api):
    contact = ContactFactory(status=Status.PENDING)
    response = _upsert(
        api, email=contact.email, consent={"status": "subscribed", "text": "Ticked at checkout"}
    )
    assert response.status_code == 200
    assert response.json()["status"] == "subscribed"
    contact.refresh_from_db()
    assert contact.status == Status.SUBSCRIBED
    event = contact.consent_events.get()
    assert (event.method, event.status_before, event.status_after) == (
        "api", Status.PENDING, Status.SUBSCRIBED,
    )  # fmt: skip


def test_upsert_unsubscribed_unsubscribes(api):
    contact = ContactFactory(status=Status.SUBSCRIBED)
    response = _upsert(api, email=contact.email, consent={"status": "unsubscribed"})
    assert response.json()["status"] == "unsubscribed"
    assert contact.consent_events.get().method == "api"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"email": "not-an-address"}, "email"),
        ({"email": ""}, "email"),
        ({}, "email"),
        ({"email": "a@example.com", "consent": {"status": "maybe"}}, "consent"),
        ({"email": "a@example.com", "consent": {"status": "subscribed", "at": "soon"}}, "consent"),
        ({"email": "a@example.com", "phone": "12"}, "phone"),
        ({"email": "a@example.com", "first_name": "x" * 101}, "first_name"),
        ({"email": "a@example.com", "tags": "vip"}, "tags"),
    ],
)
def test_a_bad_field_is_400_naming_it_and_stores_nothing(api, body, field):
    response = api.post(CONTACTS, body, format="json")
    assert response.status_code == 400
    errors = response.json()
    assert list(errors) == [field], errors
    if field == "consent":
        assert set(errors["consent"]) <= {"status", "at"}
    assert not Contact.objects.exists()
    assert not Tag.objects.exists()


def test_a_body_that_is_not_json_is_400_json(api):
    response = api.generic("POST", CONTACTS, "{not json", content_type="application/json")
    assert response.status_code == 400
    assert "detail" in response.json()


# --- erase, and an erased address coming back -------------------------------------------


def test_erase_removes_the_contact_and_a_later_upsert_does_not_bring_it_back(api):
    contact = ContactFactory(email="gone@example.com")
    assert api.delete(f"{CONTACTS}{contact.pk}/").status_code == 204
    assert not Contact.objects.filter(email="gone@example.com").exists()
    assert not ConsentEvent.objects.filter(contact_id=contact.pk).exists()
    assert SuppressedEmail.objects.count() == 1

    for consent in (None, {"status": "subscribed"}, {"status": "none"}):
        body = {"email": "gone@example.com", "tags": ["fresh"]}
        if consent:
            body["consent"] = consent
        response = api.post(CONTACTS, body, format="json")
        assert response.status_code == 409
        assert "erased" in response.json()["detail"]
    assert not Contact.objects.filter(email="gone@example.com").exists()
    assert not Tag.objects.filter(name="fresh").exists()  # the refused call made nothing
    assert api.get(f"{CONTACTS}{contact.pk}/").status_code == 404


def test_an_erased_address_that_opted_in_again_since_is_asked_to_confirm(api):
    contact = ContactFactory(email="back@example.com")
    api.delete(f"{CONTACTS}{contact.pk}/")
    response = _upsert(
        api, email="back@example.com",
        consent={"status": "subscribed", "at": (timezone.now() + timedelta(seconds=1)).isoformat()},
    )  # fmt: skip
    # A later opt-in is a new address, asked by double opt-in: not subscribed on our word.
    assert response.status_code == 201
    assert response.json()["status"] == "pending"


def test_erase_of_an_unknown_contact_is_404_json(api):
    response = api.delete(f"{CONTACTS}999999/")
    assert response.status_code == 404
    assert response.json()["detail"]


# --- unsubscribe, tags, export ----------------------------------------------------------


def test_unsubscribe_writes_its_consent_event(api):
    contact = ContactFactory(status=Status.SUBSCRIBED)
    response = api.post(f"{CONTACTS}{contact.pk}/unsubscribe/", HTTP_USER_AGENT="crm")
    assert response.status_code == 200
    assert response.json()["status"] == "unsubscribed"
    event = contact.consent_events.get()
    assert (event.kind, event.method, event.actor, event.user_agent) == (
        ConsentEvent.Kind.UNSUBSCRIBE, "api", f"api:{api.api_token.prefix}", "crm",
    )  # fmt: skip


def test_tags_are_added_and_removed(api):
    contact = ContactFactory()
    TagFactory(name="VIP")
    other = ContactFactory()
    response = api.post(f"{CONTACTS}{contact.pk}/tags/", {"tags": ["vip", "Spring"]}, format="json")
    assert response.status_code == 200
    assert sorted(response.json()["tags"]) == ["Spring", "VIP"]  # the existing tag, by name
    assert Tag.objects.count() == 2
    response = api.delete(
        f"{CONTACTS}{contact.pk}/tags/", {"tags": ["VIP", "never-made"]}, format="json"
    )
    assert response.status_code == 200
    assert response.json()["tags"] == ["Spring"]
    assert not Tag.objects.filter(name="never-made").exists()
    assert other.tags.count() == 0


def test_tags_need_a_list_of_names(api):
    contact = ContactFactory()
    for body in ({}, {"tags": []}, {"tags": [""]}, {"tags": "vip"}):
        response = api.post(f"{CONTACTS}{contact.pk}/tags/", body, format="json")
        assert response.status_code == 400
        assert list(response.json()) == ["tags"]


def test_export_holds_the_contact_and_its_consent_events(api):
    sms_at = timezone.now() - timedelta(days=2)
    contact = ContactFactory(
        email="ada@example.com", phone="+14155550100",
        sms_consent="subscribed", sms_consent_at=sms_at, sms_opt_in_level="single_opt_in",
    )  # fmt: skip
    contact.tags.add(TagFactory(name="vip"))
    store = Store.objects.create(kind=Store.Kind.SHOPIFY, name="Ada's shop", secret="s")
    StoreCustomer.objects.create(store=store, remote_id="706405506930370084", contact=contact)
    contact_unsubscribe(contact=contact, evidence=Evidence(method="one-click", ip="192.0.2.1"))
    response = api.get(f"{CONTACTS}{contact.pk}/export/")
    assert response.status_code == 200
    data = response.json()
    assert (data["email"], data["phone"], data["tags"], data["status"]) == (
        "ada@example.com", "+14155550100", ["vip"], "unsubscribed",
    )  # fmt: skip
    assert (data["sms_consent"], data["sms_opt_in_level"]) == ("subscribed", "single_opt_in")
    assert parse_datetime(data["sms_consent_at"]) == sms_at
    assert data["store_customers"] == [{"store": "Ada's shop", "customer_id": "706405506930370084"}]
    [event] = data["consent_events"]
    assert (event["kind"], event["method"], event["ip"]) == (
        "unsubscribe",
        "one-click",
        "192.0.2.1",
    )


def test_get_one_contact(api):
    contact = ContactFactory(email="ada@example.com")
    response = api.get(f"{CONTACTS}{contact.pk}/")
    assert response.status_code == 200
    assert response.json()["email"] == "ada@example.com"
    assert api.get(f"{CONTACTS}{contact.pk}").status_code == 200  # no trailing slash either


def test_tags_list(api):
    TagFactory(name="b")
    TagFactory(name="a")
    response = api.get("/api/v1/tags/")
    assert [t["name"] for t in response.json()["results"]] == ["a", "b"]


# --- list, filters, paging --------------------------------------------------------------


def test_cursor_pages_walk_every_contact_once_newest_first(api):
    Contact.objects.bulk_create(Contact(email=f"p{i:03d}@example.com") for i in range(230))
    expected = list(Contact.objects.order_by("-id").values_list("id", flat=True))
    seen, url, pages = [], f"{CONTACTS}?page_size=100", 0
    while url:
        with CaptureQueriesContext(connection) as queries:
            response = api.get(url)
        assert response.status_code == 200
        body = response.json()
        seen += [c["id"] for c in body["results"]]
        url, pages = body["next"], pages + 1
        # Contacts arriving meanwhile are newer than the cursor: no page shifts.
        ContactFactory(email=f"meanwhile{pages}@example.com")
        assert not [q for q in queries.captured_queries if "COUNT(" in q["sql"].upper()]
    assert pages == 3
    assert seen == expected


def test_page_size_is_capped(api):
    Contact.objects.bulk_create(Contact(email=f"p{i:03d}@example.com") for i in range(510))
    assert len(api.get(CONTACTS).json()["results"]) == 100
    assert len(api.get(CONTACTS, {"page_size": 1000}).json()["results"]) == 500


def test_list_filters_by_status_tag_source_and_creation(api):
    old = ContactFactory(email="old@example.com", created_at=timezone.now() - timedelta(days=9))
    vip = ContactFactory(email="vip@example.com", status=Status.PENDING)
    vip.tags.add(TagFactory(name="VIP"))
    from_api = ContactFactory(email="api@example.com", source=Contact.Source.API)

    def emails(**params):
        response = api.get(CONTACTS, params)
        assert response.status_code == 200, response.json()
        return {c["email"] for c in response.json()["results"]}

    assert emails(status="pending") == {"vip@example.com"}
    assert emails(tag="vip") == {"vip@example.com"}
    assert emails(tag="nobody-has-it") == set()
    assert emails(source="api") == {"api@example.com"}
    since = (timezone.now() - timedelta(days=1)).isoformat()
    assert emails(created_after=since) == {"vip@example.com", "api@example.com"}
    assert old.email not in emails(created_after=since)
    assert from_api.email in emails()


def test_list_search_finds_an_address_by_its_start_or_whole(api):
    ContactFactory(email="anna@shop.example", first_name="Anna")
    ContactFactory(email="annabel@example.com", first_name="Bel")
    ContactFactory(email="zoe@anna.example", first_name="Zoe")

    def emails(q):
        return {c["email"] for c in api.get(CONTACTS, {"q": q}).json()["results"]}

    assert emails("anna@shop.example") == {"anna@shop.example"}
    assert emails("Anna@") == {"anna@shop.example"}
    assert emails("anna") == {"anna@shop.example", "annabel@example.com"}  # never a '%anna%'


def test_a_bad_filter_is_400_naming_it(api):
    for params, field in (
        ({"status": "asleep"}, "status"),
        ({"created_after": "x"}, "created_after"),
    ):
        response = api.get(CONTACTS, params)
        assert response.status_code == 400
        assert list(response.json()) == [field]


def test_tags_are_removed_by_names_in_the_query_too(api):
    contact = ContactFactory()
    contact.tags.add(TagFactory(name="vip"), TagFactory(name="spring"))
    response = api.delete(f"{CONTACTS}{contact.pk}/tags/?tags=vip&tags=spring")
    assert response.status_code == 200
    assert response.json()["tags"] == []


def test_a_cursor_not_given_out_is_400_naming_it(api):
    response = api.get(CONTACTS, {"cursor": "forged"})
    assert response.status_code == 400
    assert list(response.json()) == ["cursor"]


def test_an_unknown_api_path_is_a_json_404(api):
    for method in ("get", "post", "delete"):
        response = getattr(api, method)("/api/v1/contacts/1.5/")
        assert response.status_code == 404
        assert response.json() == {"detail": "Not found."}


def test_a_page_costs_the_same_few_queries_however_many_tags(api):
    tags = [TagFactory(name=f"t{i}") for i in range(3)]
    contacts = Contact.objects.bulk_create(Contact(email=f"p{i}@example.com") for i in range(100))
    for contact in contacts:
        contact.tags.add(*tags)
    api.get(CONTACTS)  # the token's last use is written once a minute: not in the count
    with CaptureQueriesContext(connection) as queries:
        response = api.get(CONTACTS, {"tag": "t1", "status": "pending"})
    assert len(response.json()["results"]) == 100
    # The token, the tag, the page, the page's tags.
    assert len(queries.captured_queries) == 4, [q["sql"] for q in queries.captured_queries]
