"""The origins a signup form refused, shown on its admin page (audience.origins)."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("audience", "0013_report"),
    ]

    operations = [
        migrations.CreateModel(
            name="RefusedOrigin",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("origin", models.CharField(max_length=300)),
                ("first_seen", models.DateTimeField()),
                ("last_seen", models.DateTimeField()),
                ("hits", models.PositiveIntegerField(default=0)),
                (
                    "signup_form",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="refused_origins",
                        to="audience.signupform",
                    ),
                ),
            ],
            options={
                "ordering": ["-last_seen", "-id"],
                "constraints": [
                    models.UniqueConstraint(
                        fields=("signup_form", "origin"), name="refused_origin_form_origin_unique"
                    )
                ],
            },
        ),
    ]
