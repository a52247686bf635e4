"""Prefix search on names (the admin's search box) served by an index on PostgreSQL.

The admin searches names with ``istartswith``, which PostgreSQL runs as
``UPPER(col) LIKE UPPER('ann%')``; only an expression index with the pattern opclass
serves that under any collation. SQLite has nothing comparable and needs none.
"""

from django.db import migrations

INDEXES = {
    "contact_upper_first_name": "first_name",
    "contact_upper_last_name": "last_name",
}


def create(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    for name, column in INDEXES.items():
        schema_editor.execute(
            f"CREATE INDEX IF NOT EXISTS {name} "
            f"ON audience_contact (UPPER({column}) varchar_pattern_ops)"
        )


def drop(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    for name in INDEXES:
        schema_editor.execute(f"DROP INDEX IF EXISTS {name}")


class Migration(migrations.Migration):
    dependencies = [("audience", "0002_import_job_export_permission")]

    operations = [migrations.RunPython(create, drop)]
