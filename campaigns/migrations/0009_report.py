"""The campaign report: per-delivery event times, counters, timeline buckets, clicks per link."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("campaigns", "0008_campaign_events"),
    ]

    operations = [
        migrations.CreateModel(
            name="CampaignReport",
            fields=[
                (
                    "campaign",
                    models.OneToOneField(
                        on_delete=django.db.models.deletion.CASCADE,
                        primary_key=True,
                        related_name="report",
                        serialize=False,
                        to="campaigns.campaign",
                    ),
                ),
                ("delivered", models.PositiveIntegerField(default=0)),
                ("deferred", models.PositiveIntegerField(default=0)),
                ("soft_bounced", models.PositiveIntegerField(default=0)),
                ("hard_bounced", models.PositiveIntegerField(default=0)),
                ("complained", models.PositiveIntegerField(default=0)),
                ("unsubscribed", models.PositiveIntegerField(default=0)),
                ("opened", models.PositiveIntegerField(default=0)),
                ("clicked", models.PositiveIntegerField(default=0)),
                (
                    "rejected",
                    models.PositiveIntegerField(
                        default=0,
                        help_text="Refused or dropped by the provider after it accepted the message.",
                    ),
                ),
            ],
        ),
        migrations.AddField(
            model_name="delivery",
            name="complained_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="delivery",
            name="deferred_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="delivery",
            name="delivered_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="delivery",
            name="hard_bounced_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="delivery",
            name="rejected_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="delivery",
            name="soft_bounced_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="delivery",
            name="unsubscribed_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.CreateModel(
            name="CampaignLink",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("url", models.CharField(max_length=2000)),
                ("clickers", models.PositiveIntegerField(default=0)),
                (
                    "campaign",
                    models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="links",
                        to="campaigns.campaign",
                    ),
                ),
            ],
        ),
        migrations.CreateModel(
            name="CampaignTimeline",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                (
                    "kind",
                    models.CharField(
                        choices=[
                            ("sent", "Sent"),
                            ("delivered", "Delivered"),
                            ("opened", "Opened"),
                            ("clicked", "Clicked"),
                        ],
                        max_length=10,
                    ),
                ),
                ("start", models.DateTimeField()),
                ("count", models.PositiveIntegerField(default=0)),
                (
                    "campaign",
                    models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="timeline",
                        to="campaigns.campaign",
                    ),
                ),
            ],
        ),
        migrations.CreateModel(
            name="LinkClick",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("clicked_at", models.DateTimeField()),
                (
                    "delivery",
                    models.ForeignKey(
                        db_constraint=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="+",
                        to="campaigns.delivery",
                    ),
                ),
                (
                    "link",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="clicks",
                        to="campaigns.campaignlink",
                    ),
                ),
            ],
        ),
        migrations.AddConstraint(
            model_name="campaignlink",
            constraint=models.UniqueConstraint(
                fields=("campaign", "url"), name="campaign_link_once"
            ),
        ),
        migrations.AddConstraint(
            model_name="campaigntimeline",
            constraint=models.UniqueConstraint(
                fields=("campaign", "kind", "start"), name="campaign_timeline_once"
            ),
        ),
        migrations.AddConstraint(
            model_name="linkclick",
            constraint=models.UniqueConstraint(fields=("link", "delivery"), name="link_click_once"),
        ),
    ]
