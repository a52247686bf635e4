import django.utils.timezone
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("audience", "0010_contact_optin_requested_at")]

    operations = [
        migrations.CreateModel(
            name="SignupDeferred",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("signup", models.JSONField(help_text="The signup and its evidence, as taken")),
                ("created_at", models.DateTimeField(default=django.utils.timezone.now)),
            ],
        ),
    ]
