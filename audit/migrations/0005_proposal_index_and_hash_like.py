"""Two indexes fewer to maintain on every appended event, neither of them needed.

- The proposal foreign key's own index: audit_proposal_seq_idx (proposal, seq) starts with the
  same column and serves every lookup by proposal (a proposal's events, PROTECT's check).
- The `varchar_pattern_ops` copy PostgreSQL gets of every unique CharField, for LIKE queries:
  nothing searches hashes by prefix; the unique index on `hash` stays.

Both are dropped by name, nothing else touched: Django's AlterField would also drop and re-add
(and so re-validate) the foreign key constraint over the whole table.
"""

import django.db.models.deletion
from django.db import migrations, models

TABLE = "audit_auditevent"


def _names(schema_editor):
    proposal = schema_editor._create_index_name(TABLE, ["proposal_id"], suffix="")
    if schema_editor.connection.vendor != "postgresql":
        return {proposal: '"proposal_id"'}
    like = schema_editor._create_index_name(TABLE, ["hash"], suffix="_like")
    return {proposal: '"proposal_id"', like: '"hash" varchar_pattern_ops'}


def drop_indexes(apps, schema_editor):
    for name in _names(schema_editor):
        schema_editor.execute(f"DROP INDEX IF EXISTS {schema_editor.quote_name(name)}")


def create_indexes(apps, schema_editor):
    for name, columns in _names(schema_editor).items():
        schema_editor.execute(
            f"CREATE INDEX IF NOT EXISTS {schema_editor.quote_name(name)} ON {TABLE} ({columns})"
        )


class Migration(migrations.Migration):
    dependencies = [
        ("audit", "0004_chains"),
        ("proposals", "0006_vote_checkpoint_review_seconds"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[migrations.RunPython(drop_indexes, create_indexes)],
            state_operations=[
                migrations.AlterField(
                    model_name="auditevent",
                    name="proposal",
                    field=models.ForeignKey(
                        blank=True,
                        db_index=False,
                        null=True,
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="audit_events",
                        to="proposals.proposal",
                    ),
                ),
            ],
        ),
    ]
