import django.db.models.deletion
from django.db import migrations, models

# Set-based: one UPDATE per table, from each vote's proposal.
BACKFILL = {
    "postgresql": (
        "UPDATE {table} AS v SET checkpoint_id = p.checkpoint_id, "
        "review_seconds = date_part('epoch', v.created_at - p.created_at) "
        "FROM proposals_proposal AS p WHERE p.id = v.proposal_id"
    ),
    "sqlite": (
        "UPDATE {table} SET (checkpoint_id, review_seconds) = ("
        "SELECT p.checkpoint_id, (julianday({table}.created_at) - julianday(p.created_at)) "
        "* 86400.0 FROM proposals_proposal AS p WHERE p.id = {table}.proposal_id)"
    ),
}


def backfill(apps, schema_editor):
    sql = BACKFILL[schema_editor.connection.vendor]
    for table in ("proposals_vote", "proposals_historicalvote"):
        schema_editor.execute(sql.format(table=table))


class Migration(migrations.Migration):
    """Votes carry their proposal's checkpoint and the seconds from its submission to the
    vote (hitl.dashboard's reviewer figures read them from the votes' index, without a join
    to proposals); the existing votes are filled from their proposals."""

    dependencies = [("proposals", "0005_dashboard_indexes")]

    operations = [
        migrations.RemoveIndex(model_name="vote", name="vote_cast_idx"),
        migrations.AddField(
            model_name="vote",
            name="checkpoint",
            field=models.ForeignKey(
                null=True,
                db_index=False,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="+",
                to="proposals.checkpoint",
            ),
        ),
        migrations.AddField(
            model_name="vote", name="review_seconds", field=models.FloatField(null=True)
        ),
        migrations.AddField(
            model_name="historicalvote",
            name="checkpoint",
            field=models.ForeignKey(
                blank=True,
                db_constraint=False,
                null=True,
                on_delete=django.db.models.deletion.DO_NOTHING,
                related_name="+",
                to="proposals.checkpoint",
            ),
        ),
        migrations.AddField(
            model_name="historicalvote", name="review_seconds", field=models.FloatField(null=True)
        ),
        migrations.RunPython(backfill, migrations.RunPython.noop, elidable=True),
        migrations.AlterField(
            model_name="vote",
            name="checkpoint",
            field=models.ForeignKey(
                db_index=False,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="+",
                to="proposals.checkpoint",
            ),
        ),
        migrations.AlterField(model_name="vote", name="review_seconds", field=models.FloatField()),
        migrations.AlterField(
            model_name="historicalvote", name="review_seconds", field=models.FloatField()
        ),
        migrations.AddIndex(
            model_name="vote",
            index=models.Index(
                fields=["created_at", "checkpoint", "reviewer", "decision", "review_seconds"],
                name="vote_cast_idx",
            ),
        ),
    ]
