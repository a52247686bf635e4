"""Segments belong to the audience (moved from campaigns, table kept)."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("campaigns", "0006_campaign_auto_resume"),
        ("audience", "0012_segment"),
    ]

    operations = []
