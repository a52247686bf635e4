"""Reserved for CampaignEvent (every status change, with actor and reason)."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("campaigns", "0007_segment_moved"),
    ]

    operations = []
