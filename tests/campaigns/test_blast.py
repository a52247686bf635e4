"""`manage.py blast`: the emergency update from the shell."""

import io
import logging
import re

import pytest
from django.contrib.auth.models import Permission
from django.core.management import CommandError, call_command

from audience.models import Contact, Segment
from campaigns.models import Campaign, Delivery
from tests.factories import ContactFactory, TagFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def audience():
    vip = TagFactory(name="VIP")
    ann = ContactFactory(email="ann@example.com")
    ann.tags.add(vip)
    ContactFactory(email="bob@example.com")
    ContactFactory(email="gone@example.com", status=Contact.Status.UNSUBSCRIBED)
    Segment.objects.create(name="VIPs", rules=[{"field": "tag", "op": "has", "value": "VIP"}])


@pytest.fixture(autouse=True)
def owner(django_user_model):
    return django_user_model.objects.create_superuser("owner", "owner@corner.example", "pw")


def _blast(*args, answer=None, user="owner"):
    out = io.StringIO()
    kwargs = {"stdout": out}
    if answer is not None:
        kwargs["stdin"] = io.StringIO(answer)
    as_user = ["--as", user] if user is not None else []
    call_command("blast", *as_user, *args, **kwargs)
    return out.getvalue()


def test_blast_with_yes_starts_the_campaign_to_everyone_subscribed(
    sender, audience, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=False):
        output = _blast("--template", "still-here", "--yes")
    campaign = Campaign.objects.get()
    assert "to 2 subscribed contact(s) (everyone subscribed)" in output
    assert f"Sending campaign #{campaign.pk}" in output
    assert campaign.is_emergency
    assert campaign.status == Campaign.Status.SENDING
    assert campaign.created_by == "owner"
    assert campaign.subject == "We're still here"
    assert "https://corner.example" in campaign.body
    assert set(Delivery.objects.values_list("contact__email", flat=True)) == {
        "ann@example.com", "bob@example.com"}  # fmt: skip


def test_blast_to_a_segment(sender, audience, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False):
        output = _blast("--template", "were-back", "--segment", "vips", "--yes")
    campaign = Campaign.objects.get()
    assert "to 1 subscribed contact(s) (segment 'VIPs')" in output
    assert campaign.segment.name == "VIPs"
    assert campaign.subject == "We're back!"
    assert list(Delivery.objects.values_list("contact__email", flat=True)) == ["ann@example.com"]


def test_blast_without_yes_asks_and_sends_nothing_unless_told(sender, audience):
    output = _blast("--template", "still-here", answer="n\n")
    assert "Send it now? [y/N]" in output
    assert "Nothing sent." in output
    assert not Campaign.objects.exists()


def test_blast_without_yes_sends_on_y(sender, audience, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False):
        output = _blast("--template", "order-during-outage", answer="y\n")
    assert "Sending campaign #" in output
    assert Campaign.objects.get().status == Campaign.Status.SENDING


def test_blast_names_the_segments_when_one_is_missing(sender, audience):
    with pytest.raises(CommandError, match=re.escape("no segment named 'nope'. Segments: VIPs")):
        _blast("--template", "still-here", "--segment", "nope", "--yes")
    assert not Campaign.objects.exists()


def test_blast_is_refused_without_a_postal_address(sender, audience):
    sender.postal_address = ""
    sender.save()
    with pytest.raises(CommandError, match="postal address"):
        _blast("--template", "still-here", "--yes")
    assert not Campaign.objects.exists()


def test_blast_rejects_an_unknown_template(sender, audience):
    with pytest.raises(CommandError, match="invalid choice"):
        _blast("--template", "hello", "--yes")


# --- who sends ----------------------------------------------------------------------------


def _staff(django_user_model, username, *codenames):
    user = django_user_model.objects.create_user(username, password="pw-123456", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    return user


@pytest.mark.parametrize(
    ("user", "message"),
    [
        (None, "Say who is sending with --as USERNAME"),
        ("nobody", "There is no active user 'nobody'"),
        ("clerk", "'clerk' may not send campaigns"),
        ("retired", "There is no active user 'retired'"),
    ],
)
def test_blast_is_refused_unless_it_names_a_user_who_may_send(
    sender, audience, django_user_model, user, message
):
    _staff(django_user_model, "clerk", "add_campaign", "change_campaign", "view_campaign")
    retired = _staff(django_user_model, "retired", "send_campaign")
    retired.is_active = False
    retired.save()
    with pytest.raises(CommandError, match=re.escape(message)):
        _blast("--template", "still-here", "--yes", user=user)
    assert not Campaign.objects.exists()
    assert not Delivery.objects.exists()


def test_blast_as_a_user_with_the_send_permission_is_recorded_as_theirs(
    sender, audience, django_user_model, django_capture_on_commit_callbacks, caplog
):
    _staff(django_user_model, "sender-on-call", "send_campaign")
    caplog.set_level(logging.INFO, logger="campaigns.services")
    with django_capture_on_commit_callbacks(execute=False):
        _blast("--template", "still-here", "--yes", user="sender-on-call")
    campaign = Campaign.objects.get()
    assert campaign.status == Campaign.Status.SENDING
    assert campaign.created_by == "sender-on-call"
    assert "started by sender-on-call (manage.py blast)" in caplog.text


def test_send_campaign_command_needs_a_user_who_may_send(
    sender, audience, django_user_model, django_capture_on_commit_callbacks, caplog
):
    campaign = Campaign.objects.create(name="News", subject="News", body="Hello")
    _staff(django_user_model, "clerk", "change_campaign", "view_campaign")
    for args, message in [
        ([], "Say who is sending with --as USERNAME"),
        (["--as", "clerk"], "'clerk' may not send campaigns"),
    ]:
        with pytest.raises(CommandError, match=re.escape(message)):
            call_command("send_campaign", str(campaign.pk), *args, stdout=io.StringIO())
        campaign.refresh_from_db()
        assert campaign.status == Campaign.Status.DRAFT
        assert not Delivery.objects.exists()

    caplog.set_level(logging.INFO, logger="campaigns.services")
    with django_capture_on_commit_callbacks(execute=False):
        call_command("send_campaign", str(campaign.pk), "--as", "owner", stdout=io.StringIO())
    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.SENDING
    assert Delivery.objects.count() == 2
    assert "started by owner (manage.py send_campaign)" in caplog.text
