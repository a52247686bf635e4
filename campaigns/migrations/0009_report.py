"""Reserved for the campaign report (event aggregates, clicks per link)."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("campaigns", "0008_campaign_events"),
    ]

    operations = []
