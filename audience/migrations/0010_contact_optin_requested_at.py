from django.db import migrations, models


def open_requests(apps, schema_editor):
    # Pending contacts that were mailed a link have an open request; their links from
    # before this migration carry no request and stop working (a new signup mails anew).
    Contact = apps.get_model("audience", "Contact")
    Contact.objects.filter(status="pending", confirmation_sent_at__isnull=False).update(
        optin_requested_at=models.F("confirmation_sent_at")
    )


class Migration(migrations.Migration):
    dependencies = [("audience", "0009_signup_buffer")]

    operations = [
        migrations.AddField(
            model_name="contact",
            name="optin_requested_at",
            field=models.DateTimeField(blank=True, editable=False, null=True),
        ),
        migrations.RunPython(open_requests, migrations.RunPython.noop, elidable=True),
    ]
