"""Segments belong to the audience (moved from campaigns, table kept).

Only the migration state moves here: the table and its rows are campaigns' until
campaigns 0007_segment_moved (which depends on this migration) renames
campaigns_segment to audience_segment, so existing segments, and the campaigns that
point at them, are kept as they are. A fresh database gets the same table the same way.
"""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("audience", "0011_signupdeferred"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="Segment",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True,
                                primary_key=True,
                                serialize=False,
                                verbose_name="ID",
                            ),
                        ),
                        ("name", models.CharField(max_length=200, unique=True)),
                        (
                            "match",
                            models.CharField(
                                choices=[("all", "all rules (AND)"), ("any", "any rule (OR)")],
                                default="all",
                                max_length=3,
                            ),
                        ),
                        ("rules", models.JSONField(blank=True, default=list)),
                        ("created_at", models.DateTimeField(auto_now_add=True)),
                    ],
                    options={
                        "ordering": ["name"],
                    },
                ),
            ],
            # Nothing in the database: campaigns 0007 renames the existing table.
            database_operations=[],
        ),
    ]
