"""Soft bounces in a row, counted per contact (the campaign report work)."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("audience", "0012_segment"),
    ]

    operations = [
        migrations.AddField(
            model_name="contact",
            name="soft_bounce_count",
            field=models.PositiveSmallIntegerField(db_default=0, default=0, editable=False),
        ),
    ]
