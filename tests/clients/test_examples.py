"""Each example in examples/, run as a user would (its own process, the README's two
environment variables) against the live server, with a scripted reviewer deciding."""

from __future__ import annotations

import ast
import re
import uuid
from pathlib import Path

import pytest

from tests.clients.conftest import Desk, run_python, started
from tests.processes import BASE_DIR

pytestmark = [pytest.mark.slow, pytest.mark.django_db]

EXAMPLES = BASE_DIR / "examples"
EDIT = [{"op": "replace", "path": "/cost", "value": 120}]
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


def test_every_example_is_under_40_lines() -> None:
    lengths = {path.name: len(path.read_text().splitlines()) for path in EXAMPLES.glob("*.py")}
    print(lengths)
    assert len(lengths) == 4 and max(lengths.values()) < 40


def finished(process: object, log: Path, timeout: float = 120) -> str:
    process.wait(timeout)  # type: ignore[attr-defined]
    return log.read_text()


def test_decorator_example(desk: Desk, tmp_path: Path) -> None:
    known = desk.bruno.pending()
    log = tmp_path / "out.log"
    process = started([str(EXAMPLES / "decorator.py")], desk.env(RUN_ID=str(uuid.uuid4())), log)
    desk.approve(desk.bruno.next_pending(known), EDIT)
    out = finished(process, log)
    assert "TOOL buy_leads cost=120 businesses=40" in out
    assert "bought 40 bakeries leads for 120" in out


def test_langgraph_example_resumes_in_a_new_process_and_buys_once(
    desk: Desk, tmp_path: Path
) -> None:
    env = desk.env(THREAD_ID=str(uuid.uuid4()), AGENT_DB=str(tmp_path / "state.sqlite"))
    example = [str(EXAMPLES / "langgraph_agent.py")]
    first = run_python(example, env)
    assert first.returncode == 0, first.stderr
    assert "paused on" in first.stdout and "TOOL" not in first.stdout
    (proposal_id,) = re.findall(UUID, first.stdout)

    desk.approve(proposal_id, EDIT)  # the process that asked is gone
    second = run_python(example, env)  # a new process resumes the thread from SQLite
    assert second.returncode == 0, second.stderr
    assert second.stdout.splitlines() == [
        "TOOL buy_leads cost=120 businesses=40",
        "bought 40 leads for 120",
    ]


def test_openai_agents_example_decides_two_calls_independently(desk: Desk, tmp_path: Path) -> None:
    env = desk.env(RUN_ID=str(uuid.uuid4()), AGENT_STATE=str(tmp_path / "run.json"))
    example = [str(EXAMPLES / "openai_agent.py")]
    known = desk.bruno.pending()
    first = run_python(example, env)
    assert first.returncode == 0, first.stderr
    assert "paused" in first.stdout and "TOOL" not in first.stdout
    new = desk.bruno.pending() - known
    assert len(new) == 2
    by_cost = {desk.bruno.get(pid)["payload"]["cost"]: pid for pid in new}
    desk.approve(by_cost[250], EDIT)
    desk.bruno.vote(by_cost[900], "reject", "too expensive")

    second = run_python(example, env)
    assert second.returncode == 0, second.stderr
    assert second.stdout.count("TOOL buy_leads") == 1
    assert "TOOL buy_leads cost=120 businesses=40" in second.stdout
    assert "'bought 40 leads for 120'" in second.stdout
    assert "rejected this call: too expensive" in second.stdout


def test_mcp_client_example(desk: Desk, tmp_path: Path) -> None:
    known = desk.bruno.pending()
    log = tmp_path / "out.log"
    process = started([str(EXAMPLES / "mcp_client.py")], desk.env(), log)
    desk.approve(desk.bruno.next_pending(known), EDIT)
    out = finished(process, log)
    (bought,) = re.findall(r"^buying (\{.*\})$", out, re.MULTILINE)
    assert ast.literal_eval(bought) == {"cost": 120, "businesses": 40, "segment": "bakeries"}
