"""Reserved for the per-form confirmation email."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("audience", "0014_forms_ui"),
    ]

    operations = []
