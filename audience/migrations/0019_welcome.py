from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("audience", "0018_api_token")]

    operations = []
