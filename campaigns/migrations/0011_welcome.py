from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("campaigns", "0010_failover"),
        ("audience", "0019_welcome"),
    ]

    operations = []
