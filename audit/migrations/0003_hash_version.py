"""Rows written before RFC 8785 hashing keep their hash and are verified by the old rule
(hash_version 1); new rows are written with 2. No row is rewritten: the table is append-only,
and re-hashing old rows would bless any edit made to them before. Adding the column is DDL,
which the append-only row trigger does not see."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("audit", "0002_append_only_trigger")]

    operations = [
        migrations.AddField(
            model_name="auditevent",
            name="hash_version",
            field=models.PositiveSmallIntegerField(
                default=1,
                help_text="How `hash` was computed: 1 Python JSON text (before RFC 8785), 2 RFC 8785.",
            ),
            preserve_default=False,
        ),
    ]
