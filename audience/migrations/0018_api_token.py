from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("audience", "0017_store_sync")]

    operations = []
