"""The embedded mode's database with DEBUG on (as `up` runs it): every /api/ answer is the
documented JSON, forged cursors are 400s, the label filter works on SQLite.

One subprocess (its own settings: SQLite, DEBUG=true) runs every probe through Django's test
client in-process and prints the answers; the tests below read them."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.processes import BASE_DIR, private_redis_db

PROBE = str(Path(__file__).with_name("api_probe_sqlite.py"))


@pytest.fixture(scope="module")
def answers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    database = tmp_path_factory.mktemp("sqlite") / "db.sqlite3"
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DJANGO_", "HITL_", "PYTEST_"))
        and k not in ("DATABASE_URL", "REDIS_URL", "SECRET_KEY", "DEBUG")
    }
    with private_redis_db() as redis_url:
        env.update(
            DJANGO_SETTINGS_MODULE="config.settings.base",
            DATABASE_URL=f"sqlite:///{database}",
            DEBUG="true",
            SECRET_KEY=secrets.token_urlsafe(48),
            REDIS_URL=redis_url,
            NIHIL_SKIP_BOOTSTRAP="1",
            PYTHONPATH=str(BASE_DIR),
        )
        done = subprocess.run(
            [sys.executable, PROBE],
            env=env,
            cwd=BASE_DIR,
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert done.returncode == 0, done.stderr[-4000:]
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    yield {line["name"]: line for line in lines}


def assert_json_error(answer: dict[str, Any], status: int, code: str | None = None) -> None:
    assert answer["status"] == status, answer
    assert answer["ct"].startswith("application/json"), answer
    error = answer["body"]["error"]
    assert set(error) == {"code", "message", "details"}, answer
    if code:
        assert error["code"] == code, answer


@pytest.mark.parametrize("name", ["cursor-year-1-plus-14", "cursor-year-9999-minus-14"])
def test_forged_cursor_overflowing_utc_is_400_on_sqlite_with_debug(answers, name):
    assert_json_error(answers[name], 400, "invalid")


def test_label_filter_works_on_sqlite(answers):
    leather = answers["leather-id"]["id"]
    assert [p["id"] for p in answers["label-filter"]["body"]["results"]] == [leather]
    assert [p["id"] for p in answers["label-filter-two"]["body"]["results"]] == [leather]
    assert answers["label-filter-none"]["body"]["results"] == []


@pytest.mark.parametrize(
    ("name", "status"),
    [
        ("unknown-api-path", 404),
        ("unknown-api-path-post", 404),
        ("unknown-api-root", 404),
        ("unicode-digit-webhook", 404),
        ("unicode-digit-proposal", 404),
        ("method-not-allowed", 405),
        ("unauthenticated", 401),
        ("unhandled-exception", 500),
    ],
)
def test_every_api_answer_is_the_json_error_shape_with_debug_on(answers, name, status):
    assert_json_error(answers[name], status)


def test_bulk_submit_on_sqlite_writes_each_item_as_alone(answers):
    """The embedded mode's bulk path (bulk_create, bulk_history_create, the audit batch as
    INSERTs): each accepted item has its revision, a history row for both, and one submitted
    event; the refused one is answered alone; the chain verifies."""
    results = answers["bulk"]["body"]["results"]
    assert [(r["index"], r["status"]) for r in results] == [(0, 201), (1, 201), (2, 201), (3, 400)]
    written = answers["bulk-written"]
    assert (
        written["rows"]
        == [{"history": 1, "revision_history": 1, "events": ["proposal.submitted"]}] * 3
    )
    assert written["verified"] >= 3 and not written["broken"]
