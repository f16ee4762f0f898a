from django.db import migrations, models


class Migration(migrations.Migration):
    """Partial indexes for the arms of a list page (proposals.selectors.proposal_page): a
    submitter's open work and escalated open work, each in queue order."""

    dependencies = [
        ("proposals", "0003_typed_payloads"),
    ]

    operations = [
        migrations.AddIndex(
            model_name="proposal",
            index=models.Index(
                condition=models.Q(("status__in", ("pending", "changes_requested"))),
                fields=["submitted_by", "sla_due_at", "id"],
                name="proposal_open_by_sub_idx",
            ),
        ),
        migrations.AddIndex(
            model_name="proposal",
            index=models.Index(
                condition=models.Q(
                    ("escalated_at__isnull", False),
                    ("status__in", ("pending", "changes_requested")),
                ),
                fields=["checkpoint", "sla_due_at", "id"],
                name="proposal_open_escalated_idx",
            ),
        ),
    ]
