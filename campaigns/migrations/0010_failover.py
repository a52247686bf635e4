"""Reserved for provider failover."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("campaigns", "0009_report"),
    ]

    operations = []
