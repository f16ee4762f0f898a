"""audit_verify against what the databases really hand back, and its report of every break.

PostgreSQL's jsonb stores numbers as `numeric` and prints them back in its own spelling (the
`1e+16` Python wrote comes back as `10000000000000000`, an int), so a hash over Python's JSON
text raised false tamper alarms. Hashes are now over RFC 8785 (JCS); rows written before keep
verifying under their own `hash_version`.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.db import connection
from django.utils import timezone

from audit.models import AuditEvent
from audit.services import (
    GENESIS_HASH,
    HASH_V1_PYTHON_JSON,
    HASH_V2_JCS,
    HASH_V3_CHAINS,
    event_hash,
    jsonable,
)
from proposals import services
from proposals.models import Status
from tests.factories import submit

ROOT = Path(__file__).resolve().parents[2]

COST = 1e16  # Python writes 1e+16; jsonb reads back 10000000000000000
ADJUSTED = 2.5e20  # written 2.5e+20; read back 250000000000000000000


def big_number_round(submitter: Any, reviewer: Any, checkpoint: Any) -> Any:
    """Through the real services: changes requested, a revision with {"cost": 1e16}, then a
    reviewer's approve with adjustments {"cost": 2.5e20}. Also run in the SQLite subprocess."""
    proposal = submit(submitter, checkpoint, payload={"cost": 5, "tiny": 2.5e-7})
    services.vote_cast(
        proposal_id=proposal.pk,
        reviewer=reviewer,
        decision="request_changes",
        revision=1,
        comment="too cheap to be true",
    )
    services.proposal_revise(
        proposal_id=proposal.pk,
        actor=submitter,
        payload={"cost": COST, "tiny": 2.5e-7, "list": [1e16, 1e23, -0.0, 1.0]},
    )
    services.vote_cast(
        proposal_id=proposal.pk,
        reviewer=reviewer,
        decision="approve",
        revision=2,
        adjustments={"cost": ADJUSTED},
    )
    proposal.refresh_from_db()
    return proposal


def verify_json() -> tuple[int, dict[str, Any]]:
    out = StringIO()
    try:
        call_command("audit_verify", "--json", stdout=out)
        code = 0
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    return code, json.loads(out.getvalue())


@pytest.mark.django_db
def test_audit_verify_survives_jsonb_number_normalisation(world: Any) -> None:
    proposal = big_number_round(world.submitter, world.reviewer, world.checkpoint)
    assert proposal.status == Status.APPROVED
    edited = AuditEvent.objects.get(proposal=proposal, verb="proposal.edited")
    # The precondition of the old false alarm: jsonb really rewrote the numbers.
    assert any(op["value"] == 250000000000000000000 for op in edited.data["patch"])
    assert type(edited.data["patch"][0]["value"]) is int
    assert edited.hash_version == HASH_V3_CHAINS

    code, report = verify_json()

    assert report == {
        "problems": [],
        "checked": AuditEvent.objects.count(),
        "broken": 0,
        "intact": True,
    }
    assert code == 0


@pytest.mark.django_db
def test_rows_hashed_by_the_old_rule_still_verify(world: Any) -> None:
    """A row written by the previous code (hash over Python's JSON text, hash_version 1) with
    1e16 in it: jsonb's rewrite breaks the exact old recomputation, the version-1 rule still
    accepts it, and a real edit of it is still caught."""
    submit(world.submitter, world.checkpoint)
    head = AuditEvent.objects.order_by("-seq").first()
    assert head is not None
    fields: dict[str, Any] = {
        "seq": head.seq + 1,
        "created_at": timezone.now(),
        "actor_id": None,
        "actor_label": "system",
        "verb": "proposal.revised",
        "proposal_id": None,
        "checkpoint_id": None,
        "revision": None,
        "data": jsonable({"cost": COST, "n": 10**17, "list": [ADJUSTED, 3]}),
        "reason": "",
        "prev_hash": head.hash,
        "chain": head.chain,  # not hashed by version 1
        "chain_seq": head.chain_seq + 1,
    }
    old_hash = event_hash(hash_version=HASH_V1_PYTHON_JSON, **fields)
    AuditEvent.objects.create(hash=old_hash, hash_version=HASH_V1_PYTHON_JSON, **fields)
    stored = AuditEvent.objects.get(seq=head.seq + 1)
    assert stored.data["cost"] == 10**16 and type(stored.data["cost"]) is int
    assert event_hash(hash_version=1, **{**fields, "data": stored.data}) != old_hash

    assert verify_json() == (
        0,
        {"problems": [], "checked": AuditEvent.objects.count(), "broken": 0, "intact": True},
    )

    _tamper(stored.pk, "data", '{"cost": 1e16, "n": 10, "list": [2.5e20, 3]}')
    code, report = verify_json()
    assert code == 1
    assert [p["seq"] for p in report["problems"]] == [stored.seq]


def _tamper(event_id: int, column: str, value: str) -> None:
    cast = "::jsonb" if column == "data" else ""
    with connection.cursor() as cursor:
        # What a rogue superuser can do: replica mode skips ordinary triggers.
        cursor.execute("SET session_replication_role = replica")
        try:
            cursor.execute(
                f"UPDATE audit_auditevent SET {column} = %s{cast} WHERE id = %s",  # noqa: S608
                [value, event_id],
            )
            assert cursor.rowcount == 1
        finally:
            cursor.execute("SET session_replication_role = origin")


@pytest.mark.django_db
def test_audit_verify_reports_every_broken_link(world: Any) -> None:
    big_number_round(world.submitter, world.reviewer, world.checkpoint)
    for n in range(4):
        submit(world.submitter, world.checkpoint, title=f"p{n}")
    events = list(AuditEvent.objects.order_by("seq"))
    first, second = events[3], events[-2]
    _tamper(first.pk, "reason", "nothing to see here")
    _tamper(second.pk, "data", '{"routing": "approve"}')

    code, report = verify_json()

    assert code == 1
    assert report["intact"] is False
    assert report["checked"] == len(events)
    assert [(p["seq"], p["event_id"]) for p in report["problems"]] == [
        (first.seq, first.pk),
        (second.seq, second.pk),
    ]
    assert all("edited" in p["problem"] for p in report["problems"])
    assert report["broken"] == 2

    out, err = StringIO(), StringIO()
    with pytest.raises(SystemExit) as exit_:
        call_command("audit_verify", stdout=out, stderr=err)
    assert exit_.value.code == 1
    assert f"seq {first.seq} (row id {first.pk})" in err.getvalue()
    assert f"seq {second.seq} (row id {second.pk})" in err.getvalue()
    assert "2 problem(s)" in err.getvalue()


@pytest.mark.django_db
def test_audit_verify_names_a_relinked_chain_at_each_break(world: Any) -> None:
    """Rewriting a row's hash to match its edit moves the break to the next link, and an
    empty chain is intact."""
    assert verify_json() == (0, {"problems": [], "checked": 0, "broken": 0, "intact": True})
    for n in range(3):
        submit(world.submitter, world.checkpoint, title=f"p{n}")
    events = list(AuditEvent.objects.order_by("seq"))
    _tamper(events[1].pk, "hash", "f" * 64)
    _tamper(events[0].pk, "prev_hash", "e" * 64)
    code, report = verify_json()
    assert code == 1
    assert [(p["seq"], p["problem"]) for p in report["problems"]] == [
        (events[0].seq, "prev_hash does not match the previous event"),
        (events[0].seq, "content does not match its hash (edited)"),
        (events[1].seq, "content does not match its hash (edited)"),
        (events[2].seq, "prev_hash does not match the previous event"),
    ]
    assert events[0].prev_hash == GENESIS_HASH


SQLITE_SCRIPT = """
import json
from io import StringIO
from django.core.management import call_command
from guardian.shortcuts import assign_perm
from proposals.permissions import REVIEW
from tests.audit.test_audit_verify import big_number_round
from django.db import transaction
from audit.models import AuditEvent
from audit.services import audit_record
from tests.factories import CheckpointFactory, UserFactory, make_service_account, submit

checkpoint = CheckpointFactory(slug="sqlite-numbers")
reviewer = UserFactory(username="rita")
assign_perm(REVIEW, reviewer, checkpoint)
agent = make_service_account("agent", checkpoint)
proposal = big_number_round(agent, reviewer, checkpoint)
others = [submit(agent, checkpoint, title=f"o{n}") for n in range(8)]
with transaction.atomic():  # one transaction, one chain, whatever chains the proposals pick
    for other in others:
        audit_record(verb="test.together", actor=None, proposal=other)
together = AuditEvent.objects.filter(verb="test.together").values_list("chain", flat=True)
out = StringIO()
try:
    call_command("audit_verify", "--json", stdout=out)
finally:
    print(json.dumps({
        "status": proposal.status,
        "together": sorted(set(together)),
        "report": json.loads(out.getvalue()),
    }))
"""


@pytest.mark.embedded
def test_audit_verify_survives_sqlite_round_trip(tmp_path: Path) -> None:
    """The same revision and adjustment in the embedded mode (SQLite stores the JSON text)."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(
        DJANGO_SETTINGS_MODULE="config.settings.base",
        DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}",
        DEBUG="true",
        SECRET_KEY=secrets.token_urlsafe(48),
        NIHIL_SKIP_BOOTSTRAP="1",
        CELERY_TASK_ALWAYS_EAGER="false",
    )
    manage = [sys.executable, str(ROOT / "manage.py")]
    subprocess.run([*manage, "migrate", "--noinput", "-v", "0"], env=env, cwd=ROOT, check=True)
    done = subprocess.run(
        [*manage, "shell", "-c", SQLITE_SCRIPT],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["status"] == "approved"
    assert len(result["together"]) == 1, result["together"]
    assert result["report"]["intact"] is True, result
    assert result["report"]["problems"] == []


@pytest.mark.django_db
def test_audit_export_carries_the_hash_version(world: Any) -> None:
    submit(world.submitter, world.checkpoint)
    for fmt in ("jsonl", "csv"):
        out = StringIO()
        call_command("audit_export", "--format", fmt, stdout=out)
        assert str(HASH_V2_JCS) in out.getvalue().splitlines()[-1]
        assert "hash_version" in out.getvalue()


def test_lone_surrogates_hash_instead_of_failing_the_write() -> None:
    """SQLite keeps what JSON's "\\ud800" parses to; RFC 8785 alone would refuse to encode it."""
    fields: dict[str, Any] = {
        "seq": 1,
        "created_at": timezone.now(),
        "actor_id": None,
        "actor_label": "system",
        "verb": "proposal.submitted",
        "proposal_id": None,
        "checkpoint_id": None,
        "revision": None,
        "reason": "",
        "prev_hash": GENESIS_HASH,
    }
    lone = event_hash(data={"k\ud800": "\udc00"}, **fields)
    other = event_hash(data={"k\ud801": "\udc00"}, **fields)
    assert len(lone) == 64 and lone != other
