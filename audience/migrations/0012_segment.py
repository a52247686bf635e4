"""Segments belong to the audience (moved from campaigns, table kept)."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("audience", "0011_signupdeferred"),
    ]

    operations = []
