from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("audience", "0016_sync_foundation")]

    operations = []
