import django.db.models.deletion
import django.utils.timezone
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("audience", "0017_store_sync"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name="ApiToken",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("name", models.CharField(help_text="For you: which client uses it.", max_length=200)),
                ("key_hash", models.CharField(editable=False, max_length=64, unique=True)),
                ("prefix", models.CharField(editable=False, help_text="The token's first characters, to tell it apart.", max_length=8)),
                ("can_read_contacts", models.BooleanField(default=True, help_text="List, search, get and export contacts; tags.", verbose_name="read contacts")),
                ("can_write_contacts", models.BooleanField(default=False, help_text="Create and update contacts, tag, unsubscribe and erase them.", verbose_name="write contacts")),
                ("can_send_campaigns", models.BooleanField(default=False, help_text="List and start campaigns, send a blast.", verbose_name="send campaigns")),
                ("created_at", models.DateTimeField(default=django.utils.timezone.now, editable=False)),
                ("last_used_at", models.DateTimeField(blank=True, editable=False, null=True)),
                ("revoked_at", models.DateTimeField(blank=True, editable=False, null=True)),
                ("created_by", models.ForeignKey(blank=True, editable=False, null=True, on_delete=django.db.models.deletion.SET_NULL, to=settings.AUTH_USER_MODEL)),
            ],
            options={
                "verbose_name": "API token",
                "ordering": ["-created_at", "-id"],
            },
        ),
    ]
