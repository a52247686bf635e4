"""Upgrading an install whose segments lived in campaigns keeps every segment.

Migrates the test database back to before the move (audience 0011, campaigns 0006),
writes a segment, a campaign that sends to it and a staff member allowed to edit
segments, as an old install had them, then migrates forward the way `migrate` does
(django.db.migrations.executor.MigrationExecutor, as Django's own migration tests do).
"""

from __future__ import annotations

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

BEFORE = [("audience", "0011_signupdeferred"), ("campaigns", "0006_campaign_auto_resume")]
AFTER_MOVE = [("audience", "0012_segment"), ("campaigns", "0007_segment_moved")]

pytestmark = pytest.mark.django_db(transaction=True)


def _migrate(targets):
    """Migrate audience and campaigns to ``targets``, every other app to its latest;
    return the models as they are at that point."""
    executor = MigrationExecutor(connection)
    ours = {app for app, _ in targets}
    targets = [n for n in executor.loader.graph.leaf_nodes() if n[0] not in ours] + targets
    executor.migrate(targets)
    executor.loader.build_graph()
    return executor.loader.project_state(targets).apps


def _latest():
    return MigrationExecutor(connection).loader.graph.leaf_nodes()


@pytest.fixture
def old_install():
    """The database as it was before segments moved; back to the latest afterwards."""
    apps = _migrate(BEFORE)
    try:
        yield apps
    finally:
        _migrate(_latest())


def _seed(apps):
    Segment = apps.get_model("campaigns", "Segment")
    Campaign = apps.get_model("campaigns", "Campaign")
    Contact = apps.get_model("audience", "Contact")
    Tag = apps.get_model("audience", "Tag")
    ContentType = apps.get_model("contenttypes", "ContentType")
    Permission = apps.get_model("auth", "Permission")
    User = apps.get_model("auth", "User")

    vip = Tag.objects.create(name="VIP")
    ann = Contact.objects.create(email="ann@example.com", status="subscribed")
    Contact.objects.create(email="bob@example.com", status="subscribed")
    ann.tags.add(vip)
    Segment.objects.create(name="Filler", rules=[])  # so the moved ids are not all 1
    segment = Segment.objects.create(
        name="VIPs", match="all", rules=[{"field": "tag", "op": "has", "value": "VIP"}]
    )
    campaign = Campaign.objects.create(
        name="Outage", subject="We're still here", body="Hi", audience="segment",
        segment=segment,
    )  # fmt: skip

    # An old install's permissions hang on the "campaigns | segment" content type
    # (this test database was made by today's code, so it is made old here).
    ContentType.objects.filter(app_label="campaigns", model="segment").delete()
    segment_type, _ = ContentType.objects.update_or_create(
        app_label="audience", model="segment", defaults={"app_label": "campaigns"}
    )
    change, _ = Permission.objects.get_or_create(
        content_type=segment_type, codename="change_segment",
        defaults={"name": "Can change segment"},
    )  # fmt: skip
    editor = User.objects.create(username="editor", is_staff=True)
    editor.user_permissions.add(change)
    return segment.pk, campaign.pk, editor.pk


def test_upgrade_keeps_segments_and_the_campaigns_that_send_to_them(old_install):
    segment_id, campaign_id, editor_id = _seed(old_install)

    _migrate(_latest())

    from django.contrib.auth.models import User

    from audience.models import Segment
    from campaigns.models import Campaign
    from campaigns.selectors import campaign_recipients

    segment = Segment.objects.get(pk=segment_id)
    assert (segment.name, segment.match) == ("VIPs", "all")
    assert segment.rules == [{"field": "tag", "op": "has", "value": "VIP"}]
    assert sorted(Segment.objects.values_list("name", flat=True)) == ["Filler", "VIPs"]
    campaign = Campaign.objects.get(pk=campaign_id)
    assert campaign.segment == segment
    # The campaign still reaches exactly its segment's people.
    assert list(campaign_recipients(campaign).values_list("email", flat=True)) == [
        "ann@example.com"
    ]
    # The table really moved, and no copy of it stayed behind.
    tables = connection.introspection.table_names()
    assert "audience_segment" in tables
    assert "campaigns_segment" not in tables
    # The staff member who could edit segments still can, under the new name.
    assert User.objects.get(pk=editor_id).has_perm("audience.change_segment")
    # A segment still in use cannot be deleted from under its campaign.
    from django.db.models import ProtectedError

    with pytest.raises(ProtectedError):
        segment.delete()
    # New segments take fresh ids after the moved ones (the id sequence came along).
    assert Segment.objects.create(name="New").pk > segment_id


def test_rolling_the_move_back_keeps_the_segments_in_campaigns(old_install):
    segment_id, campaign_id, _ = _seed(old_install)
    _migrate(AFTER_MOVE)

    apps = _migrate(BEFORE)

    Campaign = apps.get_model("campaigns", "Campaign")
    assert Campaign.objects.get(pk=campaign_id).segment.name == "VIPs"
    assert apps.get_model("campaigns", "Segment").objects.get(pk=segment_id).rules == [
        {"field": "tag", "op": "has", "value": "VIP"}
    ]
    assert "campaigns_segment" in connection.introspection.table_names()
