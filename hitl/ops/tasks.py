"""Beat's part of the override-rate alert."""

from __future__ import annotations

from celery import shared_task

from hitl.ops import override
from proposals.models import Checkpoint


@shared_task(name="hitl.ops.tasks.evaluate_override_rates", ignore_result=True)
def evaluate_override_rates() -> int:
    """Every checkpoint, every HITL_OVERRIDE_EVALUATE_SECONDS: the relay evaluates after each
    human decision, but a threshold changed in the admin, or history that predates this
    install's first relayed decision, would otherwise wait for the next decision. Returns the
    number of crossings announced (evaluate announces each once, under the row lock)."""
    return sum(
        override.evaluate(checkpoint_id) is not None
        for checkpoint_id in Checkpoint.objects.order_by("pk").values_list("pk", flat=True)
    )
