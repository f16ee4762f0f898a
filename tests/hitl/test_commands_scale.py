"""Commands that behave at scale: seed_demo --proposals (the bulk path), the streaming
exports and hitl_decide's filter mode (progress on a terminal only, constant memory), and every
command's exit codes and --json."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import struct
import termios
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client

from audit.models import AuditEvent
from hitl import demo_bulk
from hitl.management.commands import hitl_decide
from notifications.models import OutboxEvent
from proposals.models import OPEN_STATUSES, Proposal, Resolution, Revision, Status, Vote
from tests.factories import submit

pytestmark = pytest.mark.django_db

BULK = 2000


def run(name: str, *args: str, stderr: Any = None) -> str:
    out = StringIO()
    call_command(name, *args, stdout=out, stderr=stderr if stderr is not None else StringIO())
    return out.getvalue()


def verify() -> dict[str, Any]:
    """audit_verify --json; exits non-zero (SystemExit) on a broken chain."""
    out = StringIO()
    try:
        call_command("audit_verify", "--json", stdout=out, stderr=StringIO())
    except SystemExit as exit_:
        pytest.fail(f"audit_verify exited {exit_.code}: {out.getvalue()[:2000]}")
    return json.loads(out.getvalue())


def seed(tmp_path: Path, proposals: int) -> dict[str, Any]:
    return json.loads(
        run(
            "seed_demo",
            "--json",
            "--credentials-file",
            str(tmp_path / "creds.txt"),
            "--proposals",
            str(proposals),
        )
    )


def bulk() -> Any:
    return Proposal.objects.filter(external_id__startswith=demo_bulk.PREFIX)


def test_seed_demo_proposals_loads_decided_history_in_bulk(tmp_path: Path, settings: Any) -> None:
    settings.HITL_DEMO_HISTORY_DAYS = 0  # the services-made weeks have their own test
    report = seed(tmp_path, BULK)
    assert report["created"]["bulk_proposals"] == BULK
    assert report["totals"]["bulk_proposals"] == BULK
    assert report["totals"]["proposals"] == 12  # the example proposals are untouched

    proposals = bulk()
    assert proposals.count() == BULK
    decided = proposals.exclude(status__in=OPEN_STATUSES)
    pending = proposals.filter(status=Status.PENDING)
    assert pending.exists() and decided.count() > BULK * 0.9
    assert decided.filter(resolution=Resolution.REVIEWERS).exists()
    assert decided.filter(resolution=Resolution.POLICY).exists()  # small data purchases
    assert not decided.filter(decided_at__isnull=True).exists()

    # Revision 1 each; the votes a quorum needs; one history row per row written, plus the
    # decision's row for every decided proposal.
    assert Revision.objects.filter(proposal__in=proposals).count() == BULK
    votes = Vote.objects.filter(proposal__in=proposals)
    assert votes.count() > 0
    for proposal in decided.filter(resolution=Resolution.REVIEWERS, status=Status.APPROVED)[:50]:
        assert proposal.votes.filter(decision="approve").count() == proposal.quorum_required
        assert proposal.approved_payload == proposal.payload
    assert Proposal.history.filter(external_id__startswith=demo_bulk.PREFIX).count() == (
        BULK + decided.count()
    )
    assert Revision.history.filter(proposal__in=proposals).count() == BULK
    assert Vote.history.filter(proposal__in=proposals).count() == votes.count()

    # Outbox rows already dispatched (nothing is sent for demo data); audit events per change.
    outbox = OutboxEvent.objects.filter(proposal__in=proposals)
    assert outbox.count() == BULK + votes.count() + decided.count()
    assert not outbox.filter(dispatched_at__isnull=True).exists()
    events = AuditEvent.objects.filter(proposal__in=proposals)
    assert events.count() == outbox.count()
    vote_event = events.filter(verb="proposal.vote_cast").first()
    assert vote_event is not None
    assert Vote.objects.filter(pk=vote_event.data["vote_id"], proposal=vote_event.proposal)

    report = verify()
    assert report["intact"] is True and report["problems"] == []

    # The queue answers for a reviewer.
    client = Client()
    client.force_login(get_user_model().objects.get(username="ingrid"))
    response = client.get("/api/v1/proposals/?reviewable=me")
    assert response.status_code == 200, response.content[:500]
    assert response.json()["results"]

    # A re-run adds nothing; a larger N tops up, and the chain still verifies across runs.
    again = seed(tmp_path, BULK)
    assert again["created"]["bulk_proposals"] == 0
    assert bulk().count() == BULK
    more = seed(tmp_path, BULK + 150)
    assert more["created"]["bulk_proposals"] == 150
    assert bulk().count() == BULK + 150
    assert verify()["intact"] is True


def test_seed_demo_proposals_refuses_a_negative_count(tmp_path: Path) -> None:
    with pytest.raises(CommandError, match="--proposals") as excinfo:
        seed(tmp_path, -1)
    assert excinfo.value.returncode == 2


# --- progress: drawn on a terminal only --------------------------------------------------


def _with_tty(name: str, *args: str) -> tuple[str, str]:
    """Run a command with standard error on a pseudo-terminal; (stdout, what the tty got)."""
    leader, follower = pty.openpty()
    # A terminal 100 columns wide (a fresh pty reports 0, and the bar would have no room).
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    os.set_blocking(leader, False)
    with os.fdopen(follower, "w") as tty:
        out = run(name, *args, stderr=tty)
    drawn = b""
    try:
        while chunk := os.read(leader, 65536):
            drawn += chunk
    except (BlockingIOError, OSError):
        pass
    os.close(leader)
    return out, drawn.decode(errors="replace")


def test_streaming_commands_draw_progress_on_a_terminal_only(world: Any) -> None:
    for _ in range(3):
        submit(world.submitter, world.checkpoint)
    out, drawn = _with_tty("audit_export")
    assert len(out.splitlines()) == AuditEvent.objects.count()
    assert "audit events" in drawn and "100%" in drawn
    _, quiet = _with_tty("audit_export", "--no-progress")
    assert quiet == ""
    verified, drawn = _with_tty("audit_verify")
    assert "intact" in verified and "audit events" in drawn and "100%" in drawn
    assert _with_tty("audit_verify", "--no-progress")[1] == ""
    stderr = StringIO()
    out = run("audit_export", stderr=stderr)  # not a terminal: data only, nothing else
    assert stderr.getvalue() == ""
    assert all(json.loads(line)["hash"] for line in out.splitlines())

    _, drawn = _with_tty(
        "hitl_decide",
        "--checkpoint",
        world.checkpoint.slug,
        "--all-pending",
        "--decision",
        "approve",
        "--as",
        "rita",
        "--reason",
        "ok",
        "--dry-run",
    )
    assert "proposals" in drawn and "3/3" in drawn


def test_export_feedback_refusals_exit_2(world: Any) -> None:
    for args, message in (
        (["--since", "yesterday"], "ISO 8601"),
        (["--checkpoint", "no-such-checkpoint"], "No checkpoint"),
    ):
        with pytest.raises(CommandError, match=message) as excinfo:
            run("export_feedback", *args)
        assert excinfo.value.returncode == 2


def test_audit_export_refusals_exit_2(world: Any) -> None:
    for args, message in (
        (["--since", "yesterday"], "ISO 8601"),
        (["--proposal", "not-a-uuid"], "not a proposal id"),
    ):
        with pytest.raises(CommandError, match=message) as excinfo:
            run("audit_export", *args)
        assert excinfo.value.returncode == 2


# --- hitl_decide filter mode ---------------------------------------------------------------


def decide_json(*args: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in run("hitl_decide", "--json", *args).splitlines()]


def test_hitl_decide_filter_mode_walks_every_chunk_in_a_dry_run(
    world: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dry run leaves every proposal pending: the keyset must still move past each chunk
    (re-reading "the first chunk of pending proposals" would loop or stop after one)."""
    monkeypatch.setattr(hitl_decide, "CHUNK", 2)
    ids = {str(submit(world.submitter, world.checkpoint).pk) for _ in range(5)}
    args = ["--checkpoint", world.checkpoint.slug, "--all-pending", "--decision", "approve"]
    lines = decide_json(*args, "--as", "rita", "--reason", "ok", "--dry-run")
    assert {line["id"] for line in lines[:-1]} == ids
    assert all(line["outcome"] == "approved" and line["error"] is None for line in lines[:-1])
    assert lines[-1] == {"decided": 5, "refused": 0, "dry_run": True}
    assert Proposal.objects.filter(status=Status.PENDING).count() == 5

    lines = decide_json(*args, "--as", "rita", "--reason", "ok")
    assert lines[-1] == {"decided": 5, "refused": 0, "dry_run": False}
    assert Proposal.objects.filter(status=Status.APPROVED).count() == 5


def test_hitl_decide_exit_codes(world: Any) -> None:
    proposal = submit(world.submitter, world.checkpoint)
    # The submitter's own proposal: refused by separation of duties -> ran, found a problem.
    with pytest.raises(CommandError, match="1 of 1 refused") as excinfo:
        run(
            "hitl_decide",
            str(proposal.pk),
            "--decision",
            "approve",
            "--as",
            "olga",
            "--reason",
            "x",
        )
    assert excinfo.value.returncode == 1
    for args in (
        ["--decision", "approve", "--as", "nobody", "--reason", "x", str(proposal.pk)],
        [
            "--checkpoint",
            "nope",
            "--all-pending",
            "--decision",
            "approve",
            "--as",
            "rita",
            "--reason",
            "x",
        ],
        ["--decision", "approve", "--as", "rita", "--reason", "x"],
    ):
        with pytest.raises(CommandError) as excinfo:
            run("hitl_decide", *args)
        assert excinfo.value.returncode == 2, args


def test_hitl_decide_json_reports_refusals(world: Any) -> None:
    proposal = submit(world.submitter, world.checkpoint)
    out = StringIO()
    with pytest.raises(CommandError):
        call_command(
            "hitl_decide",
            "--json",
            str(proposal.pk),
            "--decision",
            "approve",
            "--as",
            "olga",
            "--reason",
            "x",
            stdout=out,
        )
    first, summary = (json.loads(line) for line in out.getvalue().splitlines())
    assert first["id"] == str(proposal.pk) and first["outcome"] is None and first["error"]
    assert summary == {"decided": 0, "refused": 1, "dry_run": False}


# --- --json and exit codes of the other commands -------------------------------------------


def test_create_api_key_json_and_refusals(world: Any) -> None:
    record = json.loads(run("create_api_key", "new-bot", "--service-account", "--json"))
    assert record["username"] == "new-bot" and record["service_account_created"] is True
    assert record["token"].startswith("nok_") and record["signing_secret"]
    assert record["prefix"] in record["token"] and record["expires_at"] is None
    again = json.loads(run("create_api_key", "new-bot", "--expires-in-days", "3", "--json"))
    assert again["service_account_created"] is False and again["signing_secret"] is None
    assert again["expires_at"]
    for args in (["nobody"], ["rita", "--service-account"], ["rita", "--expires-in-days", "0"]):
        with pytest.raises(CommandError) as excinfo:
            run("create_api_key", *args)
        assert excinfo.value.returncode == 2, args


def test_hitl_bypass_json_and_refusals(world: Any) -> None:
    slug = world.checkpoint.slug
    started = json.loads(
        run("hitl_bypass", slug, "--duration", "1h", "--reason", "incident", "--json")
    )
    assert started["checkpoint"] == slug and started["active"] is True and started["until"]
    ended = json.loads(run("hitl_bypass", slug, "--end", "--json"))
    assert ended == {"checkpoint": slug, "active": False, "until": None, "changed": True}
    for args in (["nope", "--end"], [slug], [slug, "--duration", "soon"]):
        with pytest.raises(CommandError) as excinfo:
            run("hitl_bypass", *args)
        assert excinfo.value.returncode == 2, args


def test_hitl_sweep_json(world: Any) -> None:
    report = json.loads(run("hitl_sweep", "--json"))
    assert set(report) == {"counts", "total"}
    assert report["total"] == sum(report["counts"].values())


@pytest.mark.parametrize(
    "name",
    [
        "seed_demo",
        "export_feedback",
        "hitl_decide",
        "hitl_bypass",
        "hitl_sweep",
        "create_api_key",
        "hitl_status",
        "audit_export",
    ],
)
def test_every_command_help_explains_its_exit_codes(name: str) -> None:
    from django.core.management import load_command_class

    app = "audit" if name.startswith("audit") else "hitl"
    command = load_command_class(app, name)
    assert "Exit" in command.help and len(command.help) > 120
    parser = command.create_parser("manage.py", name)
    for action in parser._actions:
        # Django's own options (--verbosity, --settings...) have help too.
        assert action.help, f"{name} {action.option_strings or action.dest} has no help"


@pytest.mark.django_db(transaction=True)
def test_seed_demo_bulk_workers_fork_without_sharing_the_connection_pool(
    tmp_path: Path, settings: Any
) -> None:
    """Two forked workers, each chunk its own transaction: the parent's pooled connections must
    be closed before the fork (a shared psycopg pool socket ends in "server closed the
    connection unexpectedly"), and every chunk continues the audit chain under its lock."""
    settings.HITL_DEMO_HISTORY_DAYS = 0
    seed(tmp_path, 0)
    agent = get_user_model().objects.get(username="demo-agent")
    created = demo_bulk.generate(agent=agent, count=600, chunk_size=100, workers=2)
    assert created == 600
    assert bulk().count() == 600
    assert Revision.objects.filter(proposal__in=bulk()).count() == 600
    assert verify()["intact"] is True
    # A re-run continues after the highest number: nothing to add.
    assert demo_bulk.generate(agent=agent, count=600, chunk_size=100, workers=2) == 0
