"""Segments belong to the audience (moved from campaigns, table kept).

In the database the table is renamed, campaigns_segment → audience_segment, rows and
ids untouched; Campaign.segment's column and its foreign key stay as they are (the
constraint follows the renamed table on PostgreSQL and SQLite alike). In the state,
Campaign.segment points at audience.Segment and campaigns' Segment is gone.

The content type moves too, so the staff permissions granted on segments
(add/change/delete/view_segment) and the admin's history of them carry over instead of
being orphaned under a "campaigns | segment" type nobody uses any more.
"""

import django.db.models.deletion
from django.db import migrations, models


def _move_content_type(apps, schema_editor, old: str = "campaigns", new: str = "audience"):
    ContentType = apps.get_model("contenttypes", "ContentType")
    db = schema_editor.connection.alias
    types = ContentType.objects.using(db)
    # Where post_migrate already made the new type (a database migrated in two runs),
    # the old type's permissions would clash with its own: keep the new one as it is.
    if not types.filter(app_label=new, model="segment").exists():
        types.filter(app_label=old, model="segment").update(app_label=new)


def _move_content_type_back(apps, schema_editor):
    _move_content_type(apps, schema_editor, old="audience", new="campaigns")


class Migration(migrations.Migration):
    dependencies = [
        ("campaigns", "0006_campaign_auto_resume"),
        ("audience", "0012_segment"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[
                migrations.AlterModelTable(name="segment", table="audience_segment"),
            ],
            state_operations=[
                migrations.AlterField(
                    model_name="campaign",
                    name="segment",
                    field=models.ForeignKey(
                        blank=True,
                        null=True,
                        on_delete=django.db.models.deletion.PROTECT,
                        to="audience.segment",
                    ),
                ),
                migrations.DeleteModel(name="Segment"),
            ],
        ),
        migrations.RunPython(_move_content_type, _move_content_type_back),
    ]
