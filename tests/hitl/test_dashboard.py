"""The dashboard's numbers against hand-computed fixtures, on PostgreSQL: rates, percentiles,
calibration and the suggested auto_approve_at, and the demo history that feeds the page."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from django.core.serializers.json import DjangoJSONEncoder
from django.db import DEFAULT_DB_ALIAS, OperationalError, connection, connections
from django.test import Client

from hitl import dashboard
from proposals import services
from proposals.models import Proposal
from tests.factories import submit
from tests.processes import BASE_DIR

pytestmark = pytest.mark.django_db


def decide(world: Any, confidence: float, approve: bool, **fields: Any) -> Proposal:
    proposal = submit(world.submitter, world.checkpoint, confidence=confidence, **fields)
    services.vote_cast(
        proposal_id=proposal.pk,
        reviewer=world.reviewer,
        decision="approve" if approve else "reject",
        revision=1,
        comment="" if approve else "no",
    )
    return proposal


def calibration_fixture(world: Any) -> None:
    """Hand-computed: from 0.8 up, 55 of 55 approved (>= 99 % of >= 50): suggest 0.8.
    From 0.7 up: 73 of 75 (97.3 %): no. From 0.9 up alone: 30 items (< 50): not enough."""
    for _ in range(30):
        decide(world, 0.95, True)
    for _ in range(25):
        decide(world, 0.85, True)
    for index in range(20):
        decide(world, 0.72, index >= 2)
    for index in range(10):
        decide(world, 0.55, index % 2 == 0)


def test_suggested_threshold_matches_the_hand_computation(world: Any) -> None:
    calibration_fixture(world)
    data = dashboard.summary([world.checkpoint], dashboard.Window.from_params({"period": "24h"}))
    (item,) = data["calibration"]
    assert item["suggested_auto_approve_at"] == 0.8
    buckets = {b["lower"]: (b["decided"], b["approved"]) for b in item["buckets"]}
    assert buckets[0.9] == (30, 30) and buckets[0.8] == (25, 25)
    assert buckets[0.7] == (20, 18) and buckets[0.5] == (10, 5)
    assert data["rates"]["approval_rate"] == round(78 / 85, 4)
    assert data["rates"]["override_rate"] == round(7 / 85, 4)  # the rejections
    assert data["totals"]["decided_by_reviewers"] == 85


@pytest.mark.parametrize(
    ("buckets", "expected"),
    [
        ([(0, 0)] * 9 + [(50, 50)], 0.9),
        ([(0, 0)] * 9 + [(49, 49)], None),  # too few
        ([(0, 0)] * 8 + [(100, 98), (50, 50)], 0.9),  # 148/150 = 98.7 % from 0.8: not enough
        ([(0, 0)] * 8 + [(100, 99), (100, 100)], 0.8),  # 199/200 = 99.5 %
        ([(20, 0)] + [(0, 0)] * 8 + [(1000, 1000)], 0.9),  # 1000/1020 from 0.0: no
        ([(0, 0)] * 10, None),
    ],
)
def test_suggest_auto_approve_at_skips_empty_lower_buckets(
    buckets: list[tuple[int, int]], expected: float | None
) -> None:
    assert dashboard.suggest_auto_approve_at(buckets) == expected


def test_percentiles_and_sla_are_computed_by_the_database(world: Any) -> None:
    from datetime import timedelta

    for minutes in (10, 20, 30, 40, 50):
        proposal = decide(world, 0.5, True)
        Proposal.objects.filter(pk=proposal.pk).update(
            decided_at=proposal.created_at + timedelta(minutes=minutes),
            sla_due_at=proposal.created_at + timedelta(minutes=35),
        )
    data = dashboard.summary([world.checkpoint], dashboard.Window.from_params({"period": "7d"}))
    timing = data["time_to_decision"]
    assert timing["p50_seconds"] == 1800.0  # 30 min
    assert timing["p90_seconds"] == 2760.0  # 40 + 0.6 * 10 min, percentile_cont
    assert data["rates"]["sla_compliance"] == 0.6
    # The one checkpoint and the one priority: the same figures as the whole window.
    (per_checkpoint,) = timing["by_checkpoint"]
    (per_priority,) = timing["by_priority"]
    assert per_priority["priority"] == "medium"
    for group in (per_checkpoint, per_priority):
        assert (group["p50_seconds"], group["p90_seconds"]) == (1800.0, 2760.0)
        assert (group["decided"], group["sla_met"], group["sla_decided"]) == (5, 3, 5)


def overrides_fixture(submitter: Any, checkpoint: Any, reviewer: Any) -> None:
    """Hand-computed: six proposals decided by reviewers, five approved; overridden: the
    rejection, the edit, the one sent back for changes and the lesser option (4 of 6);
    modified: the edit (1 of 5). Shared with dashboard_probe_sqlite.py."""

    def vote(proposal: Proposal, decision: str = "approve", **fields: Any) -> None:
        services.vote_cast(
            proposal_id=proposal.pk,
            reviewer=reviewer,
            decision=decision,
            revision=proposal.revision,
            comment="" if decision == "approve" else "no",
            **fields,
        )

    def new(**fields: Any) -> Proposal:
        return submit(submitter, checkpoint, confidence=0.5, payload={"x": 1}, **fields)

    vote(new())  # accepted as proposed
    vote(new(), "reject")
    vote(new(), patch=[{"op": "replace", "path": "/x", "value": 2}])
    sent_back = new()
    vote(sent_back, "request_changes")
    services.proposal_revise(proposal_id=sent_back.pk, actor=submitter, payload={"x": 3})
    sent_back.refresh_from_db()
    vote(sent_back)
    options = [{"key": "a", "confidence": 0.2}, {"key": "b", "confidence": 0.9}]
    vote(new(options=options), selected_option="b")  # the AI's top option
    vote(new(options=options), selected_option="a")


OVERRIDES_EXPECTED = {"decided_by_reviewers": 6, "override_rate": 0.6667, "modification_rate": 0.2}


def test_override_and_modification_rates_match_the_hand_computation(world: Any) -> None:
    overrides_fixture(world.submitter, world.checkpoint, world.reviewer)
    data = dashboard.summary([world.checkpoint], dashboard.Window.from_params({"period": "24h"}))
    assert data["totals"]["decided_by_reviewers"] == OVERRIDES_EXPECTED["decided_by_reviewers"]
    assert data["rates"]["override_rate"] == OVERRIDES_EXPECTED["override_rate"]
    assert data["rates"]["modification_rate"] == OVERRIDES_EXPECTED["modification_rate"]


def test_the_dashboard_runs_on_sqlite(tmp_path: Any) -> None:
    """The embedded mode's database: the same figures, percentiles included (SQLite runs
    percentile_cont as an aggregate registered on the connection)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DJANGO_", "HITL_", "PYTEST_"))
        and k not in ("DATABASE_URL", "SECRET_KEY", "DEBUG")
    }
    env.update(
        DJANGO_SETTINGS_MODULE="config.settings.base",
        DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}",
        DEBUG="true",
        SECRET_KEY=secrets.token_urlsafe(48),
        NIHIL_SKIP_BOOTSTRAP="1",
        PYTHONPATH=str(BASE_DIR),
    )
    done = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("dashboard_probe_sqlite.py"))],
        env=env,
        cwd=BASE_DIR,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    data = json.loads(done.stdout.splitlines()[-1])
    assert data["totals"]["decided_by_reviewers"] == OVERRIDES_EXPECTED["decided_by_reviewers"]
    assert data["rates"]["override_rate"] == OVERRIDES_EXPECTED["override_rate"]
    assert data["rates"]["modification_rate"] == OVERRIDES_EXPECTED["modification_rate"]
    timing = data["time_to_decision"]
    assert timing["p50_seconds"] is not None
    # Grouped per checkpoint and per priority by a query each there (GROUPING SETS here).
    assert [row["decided"] for row in timing["by_checkpoint"]] == [6]
    assert [(row["priority"], row["decided"]) for row in timing["by_priority"]] == [("medium", 6)]
    assert timing["by_priority"][0]["p50_seconds"] == timing["p50_seconds"]
    assert data["reviewers"][0]["decisions"] == 7  # one reviewer: six proposals, seven votes


def test_page_and_api_show_the_same_numbers(world: Any, client_for: Any) -> None:
    calibration_fixture(world)
    overrides_fixture(world.submitter, world.checkpoint, world.reviewer)
    api = client_for(world.manager).get("/api/v1/metrics/summary/?period=24h").json()
    browser = Client()
    browser.force_login(world.manager)
    page = browser.get("/dashboard/?period=24h")
    shown = json.loads(json.dumps(page.context["summary"], cls=DjangoJSONEncoder))
    # Everything but the window, which moved on between the two requests.
    assert {**shown, "window": None} == {**api, "window": None}
    assert shown["window"]["period"] == api["window"]["period"] == "24h"
    assert "Apply 0.8" in page.content.decode()


@pytest.mark.django_db(transaction=True)
def test_every_figure_comes_from_one_read_only_snapshot_with_room_to_sort(world: Any) -> None:
    """A decision committed by another session between two of the dashboard's statements
    (right after the first, which takes the snapshot the other lanes import) shows in none
    of them, so the totals and the timing agree; every statement runs in the REPEATABLE
    READ, READ ONLY transaction with the dashboard's work_mem."""
    decide(world, 0.5, True)
    late = submit(world.submitter, world.checkpoint, confidence=0.5)

    def decide_late() -> None:
        try:
            services.vote_cast(
                proposal_id=late.pk, reviewer=world.reviewer, decision="approve", revision=1
            )
        finally:
            connection.close()

    seen: list[tuple[str, str, str]] = []

    def probe_then_decide(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        if sql.startswith("SET "):
            return execute(sql, params, many, context)
        raw = context["cursor"].cursor  # beneath the wrappers: not itself probed
        raw.execute(
            "SELECT current_setting('work_mem'), current_setting('transaction_isolation'), "
            "current_setting('transaction_read_only')"
        )
        seen.append(raw.fetchone())
        result = execute(sql, params, many, context)
        if len(seen) == 1:
            other = threading.Thread(target=decide_late)
            other.start()
            other.join()
        return result

    with connection.execute_wrapper(probe_then_decide):
        data = dashboard.summary(
            [world.checkpoint], dashboard.Window.from_params({"period": "24h"})
        )
    assert Proposal.objects.get(pk=late.pk).status == "approved"  # committed meanwhile
    assert data["totals"]["submitted"] == 2
    assert data["totals"]["decided_by_reviewers"] == 1
    (per_checkpoint,) = data["time_to_decision"]["by_checkpoint"]
    assert per_checkpoint["decided"] == 1  # read after the late decision committed
    assert len(seen) > 5
    assert set(seen) == {(dashboard.WORK_MEM, "repeatable read", "on")}


LANE_PROBE = (
    "SELECT pg_backend_pid(), pg_current_snapshot()::text, current_setting('work_mem'), "
    "current_setting('transaction_isolation'), current_setting('transaction_read_only')"
)


def probe_lanes(monkeypatch: Any) -> list[tuple[Any, tuple[Any, ...]]]:
    """Each lane's Django connection and what its database session says, as the lane starts."""
    lanes: list[tuple[Any, tuple[Any, ...]]] = []
    run = dashboard._run

    def probed(jobs: Any) -> dict[str, Any]:
        with connection.cursor() as cursor:
            cursor.execute(LANE_PROBE)
            lanes.append((connections[DEFAULT_DB_ALIAS], cursor.fetchone()))
        return run(jobs)

    monkeypatch.setattr(dashboard, "_run", probed)
    return lanes


@pytest.mark.django_db(transaction=True)
def test_lanes_read_one_snapshot_at_once_and_give_their_connections_back(
    world: Any, monkeypatch: Any
) -> None:
    """Outside a transaction the summary's lanes run at once, each on a connection of its own
    that imports the snapshot the request's connection exported: the same summary, to the
    last figure, as one lane after the other; the other lanes' connections are closed (back
    to the pool) before it returns."""
    calibration_fixture(world)
    overrides_fixture(world.submitter, world.checkpoint, world.reviewer)
    decide(world, 0.9, True, priority="high")
    window = dashboard.Window.from_params({"period": "24h"})
    lanes = probe_lanes(monkeypatch)

    at_once = dashboard.summary([world.checkpoint], window)
    assert len(lanes) == len(dashboard.LANES) > 1
    assert len({pid for _, (pid, *_) in lanes}) == len(lanes)  # a connection each
    (settings,) = {tuple(seen) for _, (_, *seen) in lanes}  # one snapshot, one set of settings
    assert settings[1:] == (dashboard.WORK_MEM, "repeatable read", "on")
    helpers = [wrapper for wrapper, _ in lanes if wrapper is not connections[DEFAULT_DB_ALIAS]]
    assert len(helpers) == len(lanes) - 1
    assert all(wrapper.connection is None for wrapper in helpers)  # closed, not leaked

    lanes.clear()
    monkeypatch.setattr(dashboard, "LANES", (sum(dashboard.LANES, ()),))
    one_after_another = dashboard.summary([world.checkpoint], window)
    assert len(lanes) == 1
    assert at_once == one_after_another
    assert at_once["totals"]["decided_by_reviewers"] == 92
    assert [row["priority"] for row in at_once["time_to_decision"]["by_priority"]] == [
        "high",
        "medium",
    ]


@pytest.mark.django_db(transaction=True)
def test_with_no_connection_to_spare_the_request_runs_every_lane_itself(
    world: Any, monkeypatch: Any
) -> None:
    """A helper that cannot get a connection (the pool exhausted: every request holding one
    and asking for another) leaves its lane to the request's thread instead of waiting."""
    calibration_fixture(world)
    window = dashboard.Window.from_params({"period": "24h"})
    expected = dashboard.summary([world.checkpoint], window)
    ensure_connection = type(connections[DEFAULT_DB_ALIAS]).ensure_connection

    def pool_exhausted(wrapper: Any) -> None:
        if threading.current_thread().name == "dashboard-lane":
            raise OperationalError("couldn't get a connection after 10.00 sec")
        ensure_connection(wrapper)

    monkeypatch.setattr(type(connections[DEFAULT_DB_ALIAS]), "ensure_connection", pool_exhausted)
    lanes = probe_lanes(monkeypatch)
    assert dashboard.summary([world.checkpoint], window) == expected
    assert len(lanes) == len(dashboard.LANES)
    assert {wrapper for wrapper, _ in lanes} == {connections[DEFAULT_DB_ALIAS]}


def test_custom_periods_are_validated() -> None:
    with pytest.raises(ValueError, match="from= and to="):
        dashboard.Window.from_params({"period": "custom", "from": "yesterday"})
    with pytest.raises(ValueError, match="ends before"):
        dashboard.Window.from_params({"period": "custom", "from": "2026-02-02", "to": "2026-02-01"})
    window = dashboard.Window.from_params(
        {"period": "custom", "from": "2026-02-01", "to": "2026-02-01"}
    )
    assert (window.end - window.start).days == 1 and window.bucket == "hour"


def test_demo_history_gives_every_chart_something(db: None, tmp_path: Any, settings: Any) -> None:
    from hitl.management.commands.seed_demo import seed_demo
    from proposals.models import Checkpoint

    settings.HITL_DEMO_HISTORY_DAYS = 21  # what `up` seeds (the tests default to none)

    seed_demo(credentials_file=tmp_path / "creds")
    checkpoints = list(Checkpoint.objects.all())
    data = dashboard.summary(checkpoints, dashboard.Window.from_params({"period": "30d"}))
    assert data["totals"]["decided_by_reviewers"] > 150
    assert len({row["bucket"] for row in data["volumes"]}) >= 20  # three weeks of days
    assert len(data["reviewers"]) >= 5
    assert data["time_to_decision"]["p90_seconds"] > data["time_to_decision"]["p50_seconds"]
    assert 0 < data["rates"]["override_rate"] < 1
    assert data["rates"]["modification_rate"] > 0
    assert data["totals"]["timeouts"] > 0 and data["totals"]["escalations"] > 0
    suggested = {c["checkpoint"]: c["suggested_auto_approve_at"] for c in data["calibration"]}
    assert suggested["inspection-schedule"] is not None
    before = Proposal.objects.count()
    seed_demo(credentials_file=tmp_path / "creds")
    assert Proposal.objects.count() == before  # idempotent


def test_votes_carry_their_proposals_checkpoint_and_review_time(
    db: None, tmp_path: Any, settings: Any
) -> None:
    """Whichever path wrote them (the services, the back-dated demo history, the bulk
    history's COPY), votes hold what the reviewer figures read without a join."""
    from django.db import connection

    from hitl.management.commands.seed_demo import seed_demo

    settings.HITL_DEMO_HISTORY_DAYS = 3
    seed_demo(credentials_file=tmp_path / "creds", bulk_proposals=300)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*), count(*) FILTER (WHERE v.checkpoint_id = p.checkpoint_id AND "
            "abs(v.review_seconds - date_part('epoch', v.created_at - p.created_at)) < 0.001) "
            "FROM proposals_vote v JOIN proposals_proposal p ON p.id = v.proposal_id"
        )
        votes, consistent = cursor.fetchone()
    assert votes > 300 and consistent == votes
