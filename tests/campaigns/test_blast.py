"""`manage.py blast`: the emergency update from the shell."""

import io
import re

import pytest
from django.core.management import CommandError, call_command

from audience.models import Contact
from campaigns.models import Campaign, Delivery, Segment
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


def _blast(*args, answer=None):
    out = io.StringIO()
    kwargs = {"stdout": out}
    if answer is not None:
        kwargs["stdin"] = io.StringIO(answer)
    call_command("blast", *args, **kwargs)
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
