"""Several hash chains instead of one, so audited writers stop queueing behind one lock.

Every existing row becomes chain 0 at position chain_seq = seq: its hash (which covers seq, not
chain) is unchanged and still verifies, and chain 0 simply goes on from there. Filling
chain_seq is the one UPDATE this table ever gets, so the append-only trigger is switched off
around it, inside this migration's transaction. `seq` now comes from a database sequence
(append order over all chains), started after the highest seq written so far.
"""

from django.db import migrations, models

SEQUENCE = "audit_auditevent_global_seq"


def fill_positions(apps, schema_editor):
    postgres = schema_editor.connection.vendor == "postgresql"
    if postgres:
        schema_editor.execute("ALTER TABLE audit_auditevent DISABLE TRIGGER audit_event_append_only")
    schema_editor.execute("UPDATE audit_auditevent SET chain_seq = seq")
    if postgres:
        schema_editor.execute("ALTER TABLE audit_auditevent ENABLE TRIGGER audit_event_append_only")
        schema_editor.execute(f"CREATE SEQUENCE IF NOT EXISTS {SEQUENCE} AS bigint")
        schema_editor.execute(
            f"SELECT setval('{SEQUENCE}', COALESCE((SELECT max(seq) FROM audit_auditevent), 0) + 1,"
            " false)"
        )


def drop_sequence(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(f"DROP SEQUENCE IF EXISTS {SEQUENCE}")


class Migration(migrations.Migration):
    dependencies = [("audit", "0003_hash_version")]

    operations = [
        migrations.AddField(
            model_name="auditevent",
            name="chain",
            field=models.PositiveSmallIntegerField(
                default=0,
                help_text="Which hash chain (0 for rows from before chains, and anchors).",
            ),
        ),
        migrations.AddField(
            model_name="auditevent",
            name="chain_seq",
            field=models.BigIntegerField(
                null=True, help_text="Position in its chain, from 1, no gaps."
            ),
        ),
        migrations.RunPython(fill_positions, drop_sequence),
        migrations.AlterField(
            model_name="auditevent",
            name="chain_seq",
            field=models.BigIntegerField(help_text="Position in its chain, from 1, no gaps."),
        ),
        migrations.AlterField(
            model_name="auditevent",
            name="seq",
            field=models.BigIntegerField(
                unique=True,
                help_text="Order of appends over all chains (a database sequence: increasing, "
                "with gaps where a transaction rolled back). Within a chain it increases with "
                "chain_seq.",
            ),
        ),
        migrations.AlterField(
            model_name="auditevent",
            name="hash_version",
            field=models.PositiveSmallIntegerField(
                help_text="How `hash` was computed: 1 Python JSON text (before RFC 8785), "
                "2 RFC 8785, 3 RFC 8785 with chain and chain_seq."
            ),
        ),
        migrations.AddConstraint(
            model_name="auditevent",
            constraint=models.UniqueConstraint(
                fields=("chain", "chain_seq"), name="audit_chain_position"
            ),
        ),
    ]
