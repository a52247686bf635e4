"""Reserved for the signup form admin work (refused origins)."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("audience", "0013_report"),
    ]

    operations = []
