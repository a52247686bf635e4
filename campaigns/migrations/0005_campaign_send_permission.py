from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("campaigns", "0004_delivery_chunks"),
    ]

    operations = [
        migrations.AlterModelOptions(
            name="campaign",
            options={
                "ordering": ["-created_at", "-id"],
                "permissions": [("send_campaign", "Can send campaigns")],
            },
        ),
    ]
