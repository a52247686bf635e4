from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from audience.models import Contact, Segment, Tag
from audience.segments import (
    audience_contacts,
    contacts_matching,
    segment_contacts,
    segment_count,
    validate_rules,
)
from campaigns.models import Campaign, Delivery
from campaigns.selectors import campaign_recipients
from tests.factories import ContactFactory, SignupFormFactory, TagFactory

pytestmark = pytest.mark.django_db


def _emails(rules, match="all"):
    return set(contacts_matching(rules, match).values_list("email", flat=True))


def _campaign(name="Spring"):
    return Campaign.objects.create(name=name, subject=name, body="Hello")


@pytest.fixture
def people():
    """A small audience with one distinguishing trait each."""
    vip, late = TagFactory(name="VIP"), TagFactory(name="late")
    form = SignupFormFactory()
    now = timezone.now()
    ann = ContactFactory(email="ann@example.com", phone="+14155550100",
                         attributes={"city": "Paris", "plan": "Gold member"})  # fmt: skip
    bob = ContactFactory(email="bob@example.com", source=Contact.Source.FORM, signup_form=form)
    cat = ContactFactory(email="cat@example.com", status=Contact.Status.UNSUBSCRIBED,
                         source=Contact.Source.IMPORT, attributes={"city": "paris"})  # fmt: skip
    dan = ContactFactory(email="dan@example.com", status=Contact.Status.PENDING)
    ann.tags.add(vip)
    bob.tags.add(vip, late)
    # created_at is auto_now_add: move sign-up dates after the fact.
    Contact.objects.filter(pk=ann.pk).update(created_at=now - timedelta(days=400))
    Contact.objects.filter(pk=bob.pk).update(created_at=now - timedelta(days=40))
    Contact.objects.filter(pk=cat.pk).update(created_at=now - timedelta(days=5))
    Contact.objects.filter(pk=dan.pk).update(created_at=now - timedelta(hours=1))
    return {"ann": ann, "bob": bob, "cat": cat, "dan": dan, "form": form, "now": now}


def test_tag_rules_match_case_insensitively_and_lacks_excludes(people):
    assert _emails([{"field": "tag", "op": "has", "value": "vip"}]) == {
        "ann@example.com", "bob@example.com"}  # fmt: skip
    assert _emails([{"field": "tag", "op": "lacks", "value": "VIP"}]) == {
        "cat@example.com", "dan@example.com"}  # fmt: skip


def test_status_and_source_rules(people):
    assert _emails([{"field": "status", "op": "is", "value": "pending"}]) == {"dan@example.com"}
    assert _emails([{"field": "status", "op": "is_not", "value": "subscribed"}]) == {
        "cat@example.com", "dan@example.com"}  # fmt: skip
    assert _emails([{"field": "source", "op": "is", "value": "import"}]) == {"cat@example.com"}
    assert _emails([{"field": "source", "op": "is_not", "value": "admin"}]) == {
        "bob@example.com", "cat@example.com"}  # fmt: skip


def test_signup_form_rule_and_its_negation_includes_contacts_without_a_form(people):
    form_id = people["form"].pk
    assert _emails([{"field": "signup_form", "op": "is", "value": form_id}]) == {"bob@example.com"}
    assert _emails([{"field": "signup_form", "op": "is_not", "value": form_id}]) == {
        "ann@example.com", "cat@example.com", "dan@example.com"}  # fmt: skip


def test_signed_up_before_after_and_within_days(people):
    cutoff = (people["now"] - timedelta(days=100)).date().isoformat()
    assert _emails([{"field": "signed_up", "op": "before", "value": cutoff}]) == {"ann@example.com"}
    assert _emails([{"field": "signed_up", "op": "after", "value": cutoff}]) == {
        "bob@example.com", "cat@example.com", "dan@example.com"}  # fmt: skip
    assert _emails([{"field": "signed_up", "op": "within_days", "value": 7}]) == {
        "cat@example.com", "dan@example.com"}  # fmt: skip


def test_phone_rule(people):
    assert _emails([{"field": "phone", "op": "present"}]) == {"ann@example.com"}
    assert "ann@example.com" not in _emails([{"field": "phone", "op": "absent"}])


def test_attribute_equals_ignores_case_and_contains_finds_substrings(people):
    rule = {"field": "attribute", "key": "city", "op": "equals", "value": "PARIS"}
    assert _emails([rule]) == {"ann@example.com", "cat@example.com"}
    rule = {"field": "attribute", "key": "plan", "op": "contains", "value": "gold"}
    assert _emails([rule]) == {"ann@example.com"}
    rule = {"field": "attribute", "key": "plan", "op": "equals", "value": "gold"}
    assert _emails([rule]) == set()


def test_engaged_within_days_counts_opens_and_clicks(people):
    old, recent = _campaign("Old"), _campaign("Recent")
    now = people["now"]
    Delivery.objects.create(campaign=old, contact=people["ann"], status="sent",
                            opened_at=now - timedelta(days=60))  # fmt: skip
    Delivery.objects.create(campaign=recent, contact=people["bob"], status="sent",
                            clicked_at=now - timedelta(days=2))  # fmt: skip
    Delivery.objects.create(campaign=recent, contact=people["cat"], status="sent",
                            opened_at=now - timedelta(days=3))  # fmt: skip
    Delivery.objects.create(campaign=recent, contact=people["dan"], status="sent")

    assert _emails([{"field": "engaged", "op": "within_days", "value": 30}]) == {
        "bob@example.com", "cat@example.com"}  # fmt: skip
    assert _emails([{"field": "engaged", "op": "within_days", "value": 90}]) == {
        "ann@example.com", "bob@example.com", "cat@example.com"}  # fmt: skip
    assert _emails([{"field": "engaged", "op": "not_within_days", "value": 30}]) == {
        "ann@example.com", "dan@example.com"}  # fmt: skip


def test_received_campaign_counts_only_sent_deliveries(people):
    spring = _campaign()
    Delivery.objects.create(campaign=spring, contact=people["ann"], status="sent")
    Delivery.objects.create(campaign=spring, contact=people["bob"], status="failed")
    Delivery.objects.create(campaign=_campaign("Other"), contact=people["cat"], status="sent")

    assert _emails([{"field": "campaign", "op": "received", "value": spring.pk}]) == {
        "ann@example.com"}  # fmt: skip
    assert _emails([{"field": "campaign", "op": "not_received", "value": spring.pk}]) == {
        "bob@example.com", "cat@example.com", "dan@example.com"}  # fmt: skip


def test_all_means_and_any_means_or(people):
    rules = [
        {"field": "tag", "op": "has", "value": "VIP"},
        {"field": "signed_up", "op": "within_days", "value": 100},
    ]
    assert _emails(rules, "all") == {"bob@example.com"}
    assert _emails(rules, "any") == {
        "ann@example.com", "bob@example.com", "cat@example.com", "dan@example.com"}  # fmt: skip
    rules = [
        {"field": "tag", "op": "has", "value": "late"},
        {"field": "phone", "op": "present"},
    ]
    assert _emails(rules, "any") == {"ann@example.com", "bob@example.com"}
    assert _emails(rules, "all") == set()


def test_segment_with_no_rules_is_everyone(people):
    segment = Segment.objects.create(name="All", rules=[])
    assert segment_contacts(segment).count() == 4


def test_segment_count_counts_only_subscribed_recipients(people):
    segment = Segment.objects.create(
        name="Recent", rules=[{"field": "signed_up", "op": "within_days", "value": 100}]
    )
    assert set(segment_contacts(segment).values_list("email", flat=True)) == {
        "bob@example.com", "cat@example.com", "dan@example.com"}  # fmt: skip
    assert segment_count(segment) == 1


def test_every_rule_kind_together_is_one_sql_query(people):
    spring = _campaign()
    rules = [
        {"field": "tag", "op": "has", "value": "VIP"},
        {"field": "tag", "op": "lacks", "value": "late"},
        {"field": "status", "op": "is", "value": "subscribed"},
        {"field": "source", "op": "is_not", "value": "import"},
        {"field": "signup_form", "op": "is_not", "value": people["form"].pk},
        {"field": "signed_up", "op": "before", "value": "2999-01-01"},
        {"field": "phone", "op": "present"},
        {"field": "attribute", "key": "city", "op": "equals", "value": "paris"},
        {"field": "engaged", "op": "not_within_days", "value": 30},
        {"field": "campaign", "op": "not_received", "value": spring.pk},
    ]
    validate_rules(rules)
    with CaptureQueriesContext(connection) as queries:
        found = list(contacts_matching(rules, "all").values_list("email", flat=True))
    assert found == ["ann@example.com"]
    assert len(queries) == 1
    assert "EXISTS" in queries[0]["sql"].upper()


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ("tag=vip", "Rules must be a list"),
        (["tag"], "Rule 1: each rule must be an object"),
        ([{"field": "colour", "op": "is", "value": "red"}], "Rule 1: unknown field 'colour'"),
        ([{"field": "tag", "op": "is", "value": "VIP"}], "tag rules take op has, lacks"),
        ([{"field": "tag", "op": "has", "value": ""}], "enter a tag name"),
        ([{"field": "tag", "op": "has", "value": "nope"}], "there is no tag named 'nope'"),
        ([{"field": "status", "op": "is", "value": "happy"}], "status must be one of"),
        ([{"field": "source", "op": "is", "value": "fax"}], "source must be one of"),
        ([{"field": "signup_form", "op": "is", "value": 999999}], "no signup form with id"),
        ([{"field": "signed_up", "op": "before", "value": "last tuesday"}], "YYYY-MM-DD"),
        ([{"field": "signed_up", "op": "within_days", "value": "soon"}], "whole number of days"),
        ([{"field": "engaged", "op": "within_days", "value": 0}], "between 1 and"),
        ([{"field": "attribute", "op": "equals", "value": "x"}], "attribute's name"),
        ([{"field": "attribute", "key": "city", "op": "equals", "value": ""}], "enter the value"),
        ([{"field": "campaign", "op": "received", "value": 999999}], "no campaign with id"),
    ],
)
def test_validate_rules_explains_what_is_wrong(rules, message):
    TagFactory(name="VIP")
    with pytest.raises(ValidationError) as excinfo:
        validate_rules(rules)
    assert any(message in text for text in excinfo.value.messages), excinfo.value.messages


def test_validate_rules_reports_every_bad_rule_with_its_number():
    with pytest.raises(ValidationError) as excinfo:
        validate_rules([
            {"field": "phone", "op": "present"},
            {"field": "status", "op": "is", "value": "x"},
            {"field": "engaged", "op": "within_days", "value": -1},
        ])  # fmt: skip
    messages = excinfo.value.messages
    assert len(messages) == 2
    assert messages[0].startswith("Rule 2:")
    assert messages[1].startswith("Rule 3:")


def test_validate_rules_accepts_good_rules():
    TagFactory(name="VIP")
    rules = [
        {"field": "tag", "op": "has", "value": "vip"},
        {"field": "engaged", "op": "within_days", "value": "30"},
    ]
    assert validate_rules(rules) is None


def test_live_audience_count_agrees_with_the_senders_recipients(people):
    """The compose page counts unsaved choices with audience_contacts; the sender uses
    campaign_recipients on the saved campaign. They must never disagree."""
    vip, late = Tag.objects.get(name="VIP"), Tag.objects.get(name="late")
    segment = Segment.objects.create(
        name="Recent", rules=[{"field": "signed_up", "op": "within_days", "value": 100}]
    )
    everyone = _campaign("Everyone")
    by_segment = Campaign.objects.create(name="S", subject="S", body="B",
                                         audience="segment", segment=segment)  # fmt: skip
    by_tags = Campaign.objects.create(name="T", subject="T", body="B", audience="tags")
    by_tags.tags.add(vip, late)

    def emails(queryset):
        return set(queryset.values_list("email", flat=True))

    assert emails(audience_contacts(audience="everyone")) == emails(
        campaign_recipients(everyone)) == {"ann@example.com", "bob@example.com"}  # fmt: skip
    assert emails(audience_contacts(audience="segment", segment=segment)) == emails(
        campaign_recipients(by_segment)) == {"bob@example.com"}  # fmt: skip
    assert emails(audience_contacts(audience="tags", tag_ids=[vip.pk, late.pk])) == emails(
        campaign_recipients(by_tags)) == {"ann@example.com", "bob@example.com"}  # fmt: skip
    assert audience_contacts(audience="tags", tag_ids=[vip.pk, late.pk]).count() == 2
