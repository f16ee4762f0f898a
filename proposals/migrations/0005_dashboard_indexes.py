from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):
    """The dashboard's indexes (hitl.dashboard): a period's proposals read from one covering
    index, votes by the time they were cast, and the few proposals with options, edits or
    change requests."""

    dependencies = [
        ("proposals", "0004_list_arm_indexes"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AddIndex(
            model_name="proposal",
            index=models.Index(
                fields=[
                    "checkpoint",
                    "created_at",
                    "id",
                    "status",
                    "resolution",
                    "priority",
                    "confidence",
                    "decided_at",
                    "sla_due_at",
                    "escalated_at",
                ],
                name="proposal_dashboard_idx",
            ),
        ),
        migrations.AddIndex(
            model_name="proposal",
            index=models.Index(
                condition=models.Q(("options", []), _negated=True),
                fields=["checkpoint", "created_at"],
                name="proposal_with_options_idx",
            ),
        ),
        migrations.AddIndex(
            model_name="revision",
            index=models.Index(
                condition=models.Q(("kind", "edited")),
                fields=["proposal"],
                name="revision_edited_idx",
            ),
        ),
        migrations.AddIndex(
            model_name="vote",
            index=models.Index(
                fields=["created_at", "proposal", "reviewer", "decision"], name="vote_cast_idx"
            ),
        ),
        migrations.AddIndex(
            model_name="vote",
            index=models.Index(
                condition=models.Q(("decision", "request_changes")),
                fields=["proposal"],
                name="vote_changes_requested_idx",
            ),
        ),
    ]
