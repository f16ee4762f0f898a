"""hitl_decide and export_feedback: ops decide through the services, and the human feedback
comes out as training data. hitl_status: a report for monitoring whatever state Redis is in."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from io import StringIO
from typing import Any

import pytest
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import override_settings

from audit.models import AuditEvent
from config.redis_clients import cache_config
from hitl import embedded, heartbeat
from proposals import services
from proposals.models import Proposal, Status
from tests.factories import submit
from tests.notifications.conftest import RedisServer

pytestmark = pytest.mark.django_db


def decide(*args: str) -> str:
    out = StringIO()
    call_command("hitl_decide", *args, stdout=out)
    return out.getvalue()


def test_decide_one_as_a_reviewer(world: Any) -> None:
    proposal = submit(world.submitter, world.checkpoint)
    output = decide(str(proposal.pk), "--decision", "approve", "--as", "rita", "--reason", "ok")
    assert "is now approved" in output
    proposal.refresh_from_db()
    assert proposal.status == Status.APPROVED
    approval = AuditEvent.objects.get(proposal=proposal, verb="proposal.approved")
    assert approval.actor == world.reviewer


def test_dry_run_changes_nothing(world: Any) -> None:
    proposal = submit(world.submitter, world.checkpoint)
    events = AuditEvent.objects.count()
    output = decide(
        str(proposal.pk), "--decision", "reject", "--as", "rita", "--reason", "no", "--dry-run"
    )
    assert "would be rejected" in output and "dry run" in output
    proposal.refresh_from_db()
    assert proposal.status == Status.PENDING
    assert AuditEvent.objects.count() == events
    assert not proposal.votes.exists()


def test_separation_of_duties_and_eligibility_still_hold(world: Any) -> None:
    proposal = submit(world.submitter, world.checkpoint)
    for username in ("agent-smith", "olga", "otto"):
        with pytest.raises(CommandError, match="1 of 1 refused"):
            decide(str(proposal.pk), "--decision", "approve", "--as", username, "--reason", "x")
    proposal.refresh_from_db()
    assert proposal.status == Status.PENDING


def test_many_at_once_reports_each(world: Any) -> None:
    pending = [submit(world.submitter, world.checkpoint) for _ in range(3)]
    done = submit(world.submitter, world.checkpoint)
    services.proposal_cancel(proposal_id=done.pk, actor=world.submitter, reason="")
    with pytest.raises(CommandError, match="1 of 4 refused"):
        decide(
            *[str(p.pk) for p in [*pending, done]],
            "--decision",
            "reject",
            "--as",
            "rita",
            "--reason",
            "batch clean-up",
        )
    assert Proposal.objects.filter(status=Status.REJECTED).count() == 3


def test_all_pending_of_a_checkpoint_and_cancel_as_manager(world: Any) -> None:
    for _ in range(2):
        submit(world.submitter, world.checkpoint)
    output = decide(
        "--checkpoint",
        world.checkpoint.slug,
        "--all-pending",
        "--decision",
        "cancel",
        "--as",
        "mona",
        "--reason",
        "incident 42",
    )
    assert "2 decided, 0 refused" in output
    assert Proposal.objects.filter(status=Status.CANCELLED).count() == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--decision", "approve", "--as", "rita", "--reason", "x"], "Name proposal ids"),
        (["x", "--decision", "approve", "--as", "nobody", "--reason", "x"], "No user"),
        (["x", "--decision", "approve", "--as", "rita", "--reason", " "], "must not be empty"),
        (["--all-pending", "--decision", "approve", "--as", "rita", "--reason", "x"], "needs"),
        (["not-a-uuid", "--decision", "approve", "--as", "rita", "--reason", "x"], "refused"),
    ],
)
def test_decide_errors(world: Any, args: list[str], message: str) -> None:
    with pytest.raises(CommandError, match=message):
        decide(*args)


def feedback(*args: str) -> list[dict[str, Any]]:
    out = StringIO()
    call_command("export_feedback", *args, stdout=out, stderr=StringIO())
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_export_feedback_records_human_decisions_and_overrides(world: Any) -> None:
    accepted = submit(world.submitter, world.checkpoint, payload={"frequency": 4}, confidence=0.7)
    services.vote_cast(
        proposal_id=accepted.pk, reviewer=world.reviewer, decision="approve", revision=1
    )
    edited = submit(world.submitter, world.checkpoint, payload={"frequency": 4})
    services.vote_cast(
        proposal_id=edited.pk,
        reviewer=world.reviewer,
        decision="approve",
        revision=1,
        adjustments={"frequency": 2},
        comment="twice is enough",
    )
    rejected = submit(world.submitter, world.checkpoint)
    services.vote_cast(
        proposal_id=rejected.pk,
        reviewer=world.reviewer,
        decision="reject",
        revision=1,
        comment="wrong site",
    )
    submit(world.submitter, world.checkpoint)  # still pending: not exported

    records = {r["proposal_id"]: r for r in feedback()}
    assert set(records) == {str(accepted.pk), str(edited.pk), str(rejected.pk)}
    assert records[str(accepted.pk)]["override"] is False
    assert records[str(accepted.pk)]["confidence"] == 0.7
    edit = records[str(edited.pk)]
    assert edit["override"] is True
    assert edit["proposed_payload"] == {"frequency": 4}
    assert edit["approved_payload"] == {"frequency": 2}
    assert edit["human_patch"] == [{"op": "replace", "path": "/frequency", "value": 2}]
    assert edit["feedback"][0]["comment"] == "twice is enough"
    assert records[str(rejected.pk)]["outcome"] == "rejected"
    assert records[str(rejected.pk)]["override"] is True

    overrides = feedback("--only-overrides")
    assert {r["proposal_id"] for r in overrides} == {str(edited.pk), str(rejected.pk)}
    assert feedback("--checkpoint", "elsewhere") == []


def test_export_feedback_skips_policy_decisions(world: Any) -> None:
    world.checkpoint.auto_approve_at = 0.5
    world.checkpoint.save()
    submit(world.submitter, world.checkpoint, confidence=0.9)
    assert feedback() == []


# --- hitl_status when Redis does not answer ----------------------------------------------------


@pytest.fixture
def status_redis() -> Iterator[RedisServer]:
    """This process's cache (where the heartbeats live) on a private redis-server."""
    server = RedisServer()
    server.start()
    url = server.url()
    try:
        with override_settings(
            REDIS_URL=url, CACHES={"default": cache_config(url, settings.REDIS_TIMEOUTS)}
        ):
            yield server
    finally:
        server.stop()


def status_json() -> tuple[dict[str, Any], int, float]:
    """hitl_status --json: (report, exit code, seconds)."""
    out = StringIO()
    started = time.monotonic()
    code = 0
    try:
        call_command("hitl_status", "--json", stdout=out)
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    return json.loads(out.getvalue()), code, time.monotonic() - started


def test_hitl_status_json_reports_redis_down_instead_of_crashing(
    world: Any, status_redis: RedisServer
) -> None:
    status_redis.stop()
    report, code, _ = status_json()
    assert code == 1
    assert report["healthy"] is False
    assert report["problems"] and report["problems"][0].startswith("Redis unreachable at redis://")
    assert {row["slug"] for row in report["checkpoints"]} == {"inspection-schedule", "elsewhere"}


def test_hitl_status_json_reports_a_frozen_redis_within_seconds(
    world: Any, status_redis: RedisServer
) -> None:
    assert status_redis.proc is not None
    status_redis.proc.send_signal(signal.SIGSTOP)
    try:
        report, code, seconds = status_json()
    finally:
        status_redis.proc.send_signal(signal.SIGCONT)
    assert code == 1
    assert report["healthy"] is False
    assert "Redis unreachable" in report["problems"][0]
    assert seconds < 10, f"hitl_status waited {seconds:.1f}s for a frozen Redis"


def test_hitl_status_reports_never_seen_heartbeats_as_problems(
    world: Any, status_redis: RedisServer
) -> None:
    report, code, _ = status_json()
    assert code == 1
    assert report["problems"] == ["worker: never seen", "beat: never seen"]
    heartbeat.worker_alive("w@test")
    heartbeat.beat_alive()
    report, code, _ = status_json()
    assert (code, report["healthy"], report["problems"]) == (0, True, [])


def test_hitl_status_beside_a_stopped_up_reads_no_redis(
    world: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """manage.py marks commands beside a stopped `up` (embedded.py): no Redis is read, so
    another install's heartbeats can never pass for this one's."""
    monkeypatch.setenv(embedded.UP_STATE_ENV, "stopped")
    monkeypatch.setenv(embedded.RUN_DIR_ENV, str(tmp_path))
    with override_settings(
        CACHES={"default": cache_config("redis://127.0.0.1:1/0", settings.REDIS_TIMEOUTS)}
    ):
        report, code, _ = status_json()
    assert code == 1
    assert report["up"] == "stopped"
    assert report["heartbeats"] == {}
    assert report["problems"] == [
        f"`manage.py up` is not running (run dir {tmp_path}): its worker and beat are stopped"
    ]
