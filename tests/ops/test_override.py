"""The override-rate alert: its definition (table), one announcement per crossing through
the real relay, and concurrent evaluations that announce a crossing once."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from django.core import mail
from django.db import connection
from django.test import override_settings
from prometheus_client import REGISTRY

from audit.models import AuditEvent
from hitl.ops import override
from hitl.ops.models import OverrideAlert
from notifications import relay, tasks
from notifications.models import OutboxEvent
from proposals import services
from proposals.models import Proposal
from tests.factories import submit

OPTIONS = [
    {"key": "a", "label": "A", "confidence": 0.4},
    {"key": "b", "label": "B", "confidence": 0.9},
]


@pytest.mark.parametrize(
    ("status", "options", "selected", "approved", "proposed", "expected"),
    [
        ("approved", [], "", {"x": 1}, {"x": 1}, False),  # accepted as proposed
        ("approved", [], "", {"x": 2}, {"x": 1}, True),  # edited, or revised on request
        ("rejected", [], "", None, {"x": 1}, True),  # rejected, or revoked
        ("approved", OPTIONS, "b", {"b": 1}, {"x": 1}, False),  # the AI's most confident pick
        ("approved", OPTIONS, "a", {"a": 1}, {"x": 1}, True),  # another option
        ("rejected", OPTIONS, "", None, {"x": 1}, True),
    ],
)
def test_what_counts_as_an_override(
    status: str, options: list[Any], selected: str, approved: Any, proposed: Any, expected: bool
) -> None:
    assert (
        override.is_override(
            status=status,
            options=options,
            selected_option=selected,
            approved_payload=approved,
            proposed_payload=proposed,
        )
        is expected
    )


@pytest.fixture
def quiet_delivery(monkeypatch: pytest.MonkeyPatch) -> None:
    """The relay runs in this process; its tasks and websocket sends go nowhere."""
    monkeypatch.setattr(tasks, "enqueue", lambda task, *args: True)
    monkeypatch.setattr(relay.live, "broadcast", lambda messages: True)


def decide(world: Any, decision: str) -> Proposal:
    proposal = submit(world.submitter, world.checkpoint)
    services.vote_cast(
        proposal_id=proposal.pk,
        reviewer=world.reviewer,
        decision=decision,
        revision=1,
        comment="" if decision == "approve" else "no",
    )
    relay.relay_all()  # the worker's part: counts, then evaluates after its commit
    return proposal


def crossings(world: Any, state: str) -> float:
    value = REGISTRY.get_sample_value(
        "nihil_override_rate_crossings_total",
        {"checkpoint": world.checkpoint.slug, "state": state},
    )
    return value or 0.0


@pytest.mark.django_db(transaction=True)
@override_settings(HITL_OVERRIDE_MIN_DECISIONS=4)
def test_override_alert_fires_once_at_the_crossing_and_clears(
    world: Any, quiet_delivery: None
) -> None:
    # This checkpoint's own threshold (the admin's field), not HITL_OVERRIDE_THRESHOLD.
    OverrideAlert.objects.create(checkpoint=world.checkpoint, threshold=0.3)
    high_before, normal_before = crossings(world, "high"), crossings(world, "normal")

    def announced() -> list[str]:
        return list(
            OutboxEvent.objects.filter(topic__startswith="checkpoint.override_rate")
            .order_by("created_at")
            .values_list("topic", flat=True)
        )

    for _ in range(4):
        decide(world, "approve")
    decide(world, "reject")  # 1/5 = 20 %: under 30 %
    assert announced() == []
    decide(world, "reject")  # 2/6 = 33 %: the crossing
    assert announced() == [override.HIGH]
    decide(world, "reject")  # 3/7: still high, nothing new
    assert announced() == [override.HIGH]
    alert = OverrideAlert.objects.get(pk=world.checkpoint.pk)
    assert (alert.active, alert.decisions, alert.overrides) == (True, 7, 3)

    event = OutboxEvent.objects.get(topic=override.HIGH)
    assert event.checkpoint_id == world.checkpoint.pk
    assert event.payload["rate"] == round(2 / 6, 4)
    assert event.payload["threshold"] == 0.3
    assert (event.payload["decisions"], event.payload["overrides"]) == (6, 2)
    audit = AuditEvent.objects.get(verb=override.HIGH)
    assert audit.checkpoint_id == world.checkpoint.pk and audit.actor is None
    assert audit.data["rate"] == event.payload["rate"]
    to_managers = [m for m in mail.outbox if world.manager.email in m.to]
    assert len(to_managers) == 1 and "override" in to_managers[0].subject
    assert crossings(world, "high") == high_before + 1

    for _ in range(2):
        decide(world, "approve")  # 3/8, 3/9: above 30 %
    assert announced() == [override.HIGH]
    decide(world, "approve")  # 3/10 = 30 %: not above the threshold any more
    assert announced() == [override.HIGH, override.NORMAL]
    assert not OverrideAlert.objects.get(pk=world.checkpoint.pk).active
    assert AuditEvent.objects.filter(verb=override.NORMAL).count() == 1
    assert len([m for m in mail.outbox if world.manager.email in m.to]) == 2
    assert crossings(world, "normal") == normal_before + 1
    assert crossings(world, "high") == high_before + 1

    # The announcements themselves are relayed like every event (webhooks carry them).
    relay.relay_all()
    assert not OutboxEvent.objects.filter(dispatched_at__isnull=True).exists()


@pytest.mark.django_db(transaction=True)
@override_settings(HITL_OVERRIDE_MIN_DECISIONS=1)
def test_concurrent_evaluations_announce_a_crossing_once(world: Any, quiet_delivery: None) -> None:
    proposal = submit(world.submitter, world.checkpoint)
    services.vote_cast(
        proposal_id=proposal.pk,
        reviewer=world.reviewer,
        decision="reject",
        revision=1,
        comment="no",
    )
    barrier = threading.Barrier(4)
    results: list[str | None] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            barrier.wait(10)
            results.append(override.evaluate(world.checkpoint.pk))
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert sorted(results, key=str) == [None, None, None, override.HIGH]
    assert OutboxEvent.objects.filter(topic=override.HIGH).count() == 1
    assert AuditEvent.objects.filter(verb=override.HIGH).count() == 1


@pytest.mark.django_db
@override_settings(HITL_OVERRIDE_MIN_DECISIONS=2)
def test_beat_applies_a_threshold_changed_in_the_admin_once(world: Any) -> None:
    from hitl.ops.tasks import evaluate_override_rates

    for decision in ("approve", "reject"):  # 1 of 2 overridden: 50 %
        proposal = submit(world.submitter, world.checkpoint)
        services.vote_cast(
            proposal_id=proposal.pk,
            reviewer=world.reviewer,
            decision=decision,
            revision=1,
            comment="no" if decision == "reject" else "",
        )
    OverrideAlert.objects.create(checkpoint=world.checkpoint, threshold=0.6)
    assert evaluate_override_rates() == 0
    OverrideAlert.objects.filter(pk=world.checkpoint.pk).update(threshold=0.4)  # the admin
    assert evaluate_override_rates() == 1
    assert evaluate_override_rates() == 0
    assert OutboxEvent.objects.filter(topic=override.HIGH).count() == 1
    assert OverrideAlert.objects.get(pk=world.checkpoint.pk).active
    # Every checkpoint gets its row (and gauges), decisions or not.
    other = OverrideAlert.objects.get(pk=world.other_checkpoint.pk)
    assert (other.active, other.rate, other.decisions) == (False, None, 0)
