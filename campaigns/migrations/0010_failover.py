"""Provider failover: which provider a campaign sends through, and its switch."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("campaigns", "0009_report"),
    ]

    operations = [
        migrations.AddField(
            model_name="campaign",
            name="provider",
            field=models.CharField(
                choices=[("primary", "Primary provider"), ("secondary", "Failover provider")],
                default="primary",
                max_length=9,
            ),
        ),
        migrations.AddField(
            model_name="campaign",
            name="provider_switch_reason",
            field=models.TextField(blank=True),
        ),
        migrations.AddField(
            model_name="campaign",
            name="provider_failed_chunks",
            field=models.PositiveIntegerField(default=0),
        ),
        migrations.AddField(
            model_name="campaign",
            name="provider_switched_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
    ]
