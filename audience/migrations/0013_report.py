"""Reserved for the campaign report work (soft bounces counted per contact)."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("audience", "0012_segment"),
    ]

    operations = []
