"""The timer ops commands: `hitl_sweep`, `hitl_status` and `hitl_bypass` (DESIGN §4)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from io import StringIO
from typing import Any

import pytest
import time_machine
from django.conf import settings
from django.core.cache import cache
from django.core.management import CommandError, call_command
from django.test import override_settings
from django.utils import timezone
from guardian.shortcuts import assign_perm

from audit.models import AuditEvent
from hitl import heartbeat
from hitl.management.commands.hitl_bypass import parse_duration
from proposals import services
from proposals.models import Checkpoint, Decision, Resolution, Status
from proposals.permissions import SUBMIT
from tests.factories import CheckpointFactory, submit

pytestmark = pytest.mark.django_db


def run(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


@pytest.fixture
def private_cache() -> Iterator[None]:
    """Heartbeats under a key prefix of our own: other test runs share the Redis database."""
    caches = {
        "default": {**settings.CACHES["default"], "KEY_PREFIX": f"nihil-test-{uuid.uuid4().hex}"}
    }
    with override_settings(CACHES=caches):
        yield
        cache.delete_many([heartbeat.WORKER_KEY, heartbeat.BEAT_KEY])


def travel(when: Any) -> Any:
    return time_machine.travel(when, tick=False)


@pytest.fixture
def world(world: Any) -> Any:
    """The shared world, with the submitter also allowed on the other checkpoint."""
    assign_perm(SUBMIT, world.submitter, world.other_checkpoint)
    return world


# --- hitl_sweep ----------------------------------------------------------------------------


def test_hitl_sweep_prints_what_each_phase_did(world: Any) -> None:
    world.checkpoint.timeout_seconds = 3600
    world.checkpoint.save()
    other = world.other_checkpoint
    other.remind_after_seconds = 60
    other.save()
    now = timezone.now()
    with travel(now - timedelta(hours=2)):
        overdue = submit(world.submitter, world.checkpoint)
    not_yet = submit(world.submitter, other)
    with travel(now - timedelta(minutes=2)):
        to_remind = submit(world.submitter, other)

    output = run("hitl_sweep")
    counts = {
        name.strip(): int(value)
        for name, value in (line.split(":") for line in output.splitlines() if ":" in line)
    }
    assert counts["timeout"] == 1
    assert counts["reminder"] == 1
    assert sum(counts.values()) == 2
    assert "2 changes." in output
    overdue.refresh_from_db()
    to_remind.refresh_from_db()
    assert (overdue.status, overdue.resolution) == (Status.REJECTED, Resolution.TIMEOUT)
    assert to_remind.reminded_at is not None
    not_yet.refresh_from_db()
    assert (not_yet.status, not_yet.reminded_at) == (Status.PENDING, None)

    assert "0 changes." in run("hitl_sweep")


# --- hitl_status ---------------------------------------------------------------------------


def _status_world(world: Any) -> dict[str, Any]:
    world.checkpoint.timeout_seconds = 3600
    world.checkpoint.save()
    now = timezone.now()
    with travel(now - timedelta(hours=2)):
        old = submit(world.submitter, world.checkpoint, priority="critical")  # overdue, SLA
    with travel(now - timedelta(minutes=10)):
        submit(world.submitter, world.checkpoint, priority="low")
    changes = submit(world.submitter, world.checkpoint)
    services.vote_cast(
        proposal_id=changes.pk,
        reviewer=world.reviewer,
        decision=Decision.REQUEST_CHANGES,
        revision=1,
        comment="more detail",
    )
    decided = submit(world.submitter, world.checkpoint)
    services.vote_cast(
        proposal_id=decided.pk, reviewer=world.reviewer, decision=Decision.APPROVE, revision=1
    )
    services.checkpoint_bypass_start(
        checkpoint_id=world.other_checkpoint.pk,
        actor=None,
        until=now + timedelta(hours=1),
        reason="incident",
    )
    CheckpointFactory(slug="zz-disabled", enabled=False)
    return {"old": old, "now": now}


def test_hitl_status_json_reports_each_checkpoint(world: Any, private_cache: None) -> None:
    _status_world(world)
    heartbeat.worker_alive("worker-1@test")
    heartbeat.beat_alive()

    status = json.loads(run("hitl_status", "--json"))  # no SystemExit: exit code 0

    rows = {row["slug"]: row for row in status["checkpoints"]}
    assert list(rows) == ["elsewhere", "inspection-schedule", "zz-disabled"]
    main = rows["inspection-schedule"]
    assert main["enabled"] is True
    assert main["bypass_until"] is None
    assert (main["pending"], main["changes_requested"]) == (2, 1)
    assert 7200 <= main["oldest_pending_age_seconds"] < 7260
    assert (main["overdue"], main["sla_breached"]) == (1, 1)
    elsewhere = rows["elsewhere"]
    assert elsewhere["bypass_until"] is not None
    assert (elsewhere["pending"], elsewhere["oldest_pending_age_seconds"]) == (0, None)
    assert rows["zz-disabled"]["enabled"] is False

    assert status["healthy"] is True
    assert status["heartbeats"]["worker"]["host"] == "worker-1@test"
    for name in ("worker", "beat"):
        assert status["heartbeats"][name]["stale"] is False
        assert 0 <= status["heartbeats"][name]["age_seconds"] < 5


def test_hitl_status_text(world: Any, private_cache: None) -> None:
    _status_world(world)
    heartbeat.worker_alive("worker-1@test")
    heartbeat.beat_alive()

    lines = run("hitl_status").splitlines()

    assert lines[0].split() == [
        "checkpoint",
        "on",
        "bypass",
        "pending",
        "changes",
        "oldest",
        "overdue",
        "sla",
    ]
    rows = {line.split()[0]: line.split() for line in lines[1:4]}
    assert rows["inspection-schedule"] == [
        "inspection-schedule",
        "yes",
        "-",
        "2",
        "1",
        "2h",
        "1",
        "1",
    ]
    assert rows["elsewhere"] == ["elsewhere", "yes", "ACTIVE", "0", "0", "-", "0", "0"]
    assert rows["zz-disabled"][1] == "no"
    beats = [line for line in lines if line.startswith(("worker", "beat"))]
    assert len(beats) == 2
    assert all(" ok " in line for line in beats), beats
    assert "on worker-1@test" in beats[0]


def test_hitl_status_exits_1_when_heartbeats_are_missing(world: Any, private_cache: None) -> None:
    cache.delete_many([heartbeat.WORKER_KEY, heartbeat.BEAT_KEY])
    out = StringIO()
    with pytest.raises(SystemExit) as excinfo:
        call_command("hitl_status", "--json", stdout=out)
    assert excinfo.value.code == 1
    status = json.loads(out.getvalue())
    assert status["healthy"] is False
    assert status["heartbeats"]["worker"] == {"age_seconds": None, "host": None, "stale": True}

    text = StringIO()
    with pytest.raises(SystemExit) as excinfo:
        call_command("hitl_status", stdout=text)
    assert excinfo.value.code == 1
    assert "STALE" in text.getvalue()
    assert "never seen" in text.getvalue()


def test_hitl_status_exits_1_when_one_heartbeat_is_old(world: Any, private_cache: None) -> None:
    heartbeat.beat_alive()
    old = time.time() - settings.HITL_HEARTBEAT_STALE_SECONDS - 5
    cache.set(heartbeat.WORKER_KEY, {"at": old, "host": "gone"}, 60)
    out = StringIO()
    with pytest.raises(SystemExit) as excinfo:
        call_command("hitl_status", "--json", stdout=out)
    assert excinfo.value.code == 1
    beats = json.loads(out.getvalue())["heartbeats"]
    assert beats["worker"]["stale"] is True
    assert beats["beat"]["stale"] is False

    heartbeat.worker_alive()  # the worker comes back
    json.loads(run("hitl_status", "--json"))  # exit code 0 again


# --- hitl_bypass ---------------------------------------------------------------------------


def test_hitl_bypass_start_then_end(world: Any) -> None:
    before = timezone.now()
    output = run(
        "hitl_bypass", "inspection-schedule", "--duration", "1h30m", "--reason", "incident 7"
    )
    assert "BYPASS ACTIVE on inspection-schedule until" in output
    checkpoint = Checkpoint.objects.get(pk=world.checkpoint.pk)
    expected = before + timedelta(minutes=90)
    assert expected <= checkpoint.bypass_until <= expected + timedelta(seconds=10)
    assert checkpoint.bypass_reason == "incident 7"
    started = AuditEvent.objects.get(verb="checkpoint.bypassed")
    assert (started.reason, started.actor_label) == ("incident 7", "system")

    proposal = submit(world.submitter, checkpoint)
    assert (proposal.status, proposal.resolution) == (Status.APPROVED, Resolution.BYPASS)

    assert run("hitl_bypass", "inspection-schedule", "--end", "--reason", "fixed") == (
        "Bypass on inspection-schedule ended.\n"
    )
    checkpoint.refresh_from_db()
    assert checkpoint.bypass_until is None
    ended = AuditEvent.objects.get(verb="checkpoint.bypass_ended")
    assert ended.reason == "fixed"
    assert ended.data["expired"] is False
    assert submit(world.submitter, checkpoint).status == Status.PENDING

    assert run("hitl_bypass", "inspection-schedule", "--end") == (
        "Bypass on inspection-schedule was not active.\n"
    )
    assert AuditEvent.objects.filter(verb="checkpoint.bypass_ended").count() == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["inspection-schedule", "--duration", "1h"], "A bypass needs a reason."),
        (["inspection-schedule", "--duration", "1h", "--reason", "  "], "needs a reason"),
        (["inspection-schedule", "--duration", "soon", "--reason", "x"], "Cannot read duration"),
        (["inspection-schedule", "--duration", "1x", "--reason", "x"], "Cannot read duration"),
        (["inspection-schedule", "--duration=-1h", "--reason", "x"], "Cannot read duration"),
        (["inspection-schedule", "--duration", "0s", "--reason", "x"], "must end in the future"),
        (["inspection-schedule", "--reason", "x"], "Give --duration"),
        (["inspection-schedule", "--end", "--duration", "1h"], "exclude each other"),
        (["no-such-checkpoint", "--duration", "1h", "--reason", "x"], "No checkpoint"),
        (["no-such-checkpoint", "--end"], "No checkpoint"),
    ],
)
def test_hitl_bypass_errors(world: Any, args: list[str], message: str) -> None:
    with pytest.raises(CommandError, match=message):
        run("hitl_bypass", *args)
    world.checkpoint.refresh_from_db()
    assert world.checkpoint.bypass_until is None
    assert not AuditEvent.objects.filter(verb__startswith="checkpoint.bypass").exists()


def test_hitl_bypass_refuses_a_duration_beyond_the_calendar(world: Any) -> None:
    """PRODUCT BUG (hitl/management/commands/hitl_bypass.py, Command.handle): `now +
    parse_duration(...)` overflows past year 9999 and the command dies with an OverflowError
    traceback instead of a CommandError naming the bad --duration."""
    with pytest.raises(CommandError, match="duration"):
        run("hitl_bypass", "inspection-schedule", "--duration", "9999999d", "--reason", "x")
    world.checkpoint.refresh_from_db()
    assert world.checkpoint.bypass_until is None


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("15m", 900), ("1h", 3600), ("2d", 172800), ("1h30m", 5400), ("1d2h3m4s", 93784)],
)
def test_parse_duration(text: str, seconds: int) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)
