"""`manage.py bench --quick` runs the whole benchmark pipeline (product as production runs it,
the bare baseline, every path) with tiny sizes, so the harness cannot rot between full runs.

Nothing about speed is asserted here: speed is judged from a full run's ratios, never in a
timed test. What is asserted is that every path ran, on both sides where it has a baseline,
without a single failed request, and that the numbers a reader needs are in the JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.cli import PATHS

ROOT = Path(__file__).resolve().parents[2]
HTTP_PATHS = ("submit_auto", "submit_queued", "vote", "queue_page_1", "queue_page_deep")


@pytest.mark.slow
def test_bench_quick_runs_every_path_without_errors(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env["NIHIL_SKIP_BOOTSTRAP"] = "1"
    done = subprocess.run(
        [sys.executable, "manage.py", "bench", "--quick", "--json", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    (tmp_path / "bench.stderr").write_text(done.stderr)
    assert out.exists(), f"no JSON written (exit {done.returncode}):\n{_first_error(done.stderr)}"
    results = json.loads(out.read_text())
    paths = results["paths"]

    assert set(paths) == set(PATHS)
    for name, path in paths.items():
        if name == "dashboard" and path["status"] == "n/a":
            continue  # the endpoint is optional at run time; n/a says so
        if name == "submit_1web":
            # One web process per side in quick mode: nothing to scale from.
            assert path["status"] == "n/a", path
            continue
        assert path["status"] == "ok", (name, path["notes"])
        assert path["errors"] == 0, (name, path["notes"])
    assert done.returncode == 0, done.stderr[-4000:]

    for name in HTTP_PATHS:
        for side in ("product", "baseline"):
            reps = paths[name]["reps"][side]
            assert reps and all(rep["requests"] > 0 for rep in reps), (name, side)
            assert paths[name]["metrics"]["rps"][side]["median"] > 0
        assert paths[name]["metrics"]["rps"]["ratio"] > 0
        # statements per request, counted on both sides
        assert paths[name]["sql"]["product"]["total"] > 0
        assert paths[name]["sql"]["baseline"]["total"] > 0
    for name in ("queue_page_1", "queue_page_deep"):
        # ... and against the product's own page SQL, run by the bare baseline
        own = paths[name]["reps"]["own_sql"]
        assert own and all(rep["requests"] > 0 for rep in own), name
        assert paths[name]["metrics"]["p50_ms"]["ratio_own_sql"] > 0
    bulk = paths["bulk_submit"]["metrics"]["proposals_per_s"]
    assert bulk["product"]["median"] > 0 and bulk["baseline"]["median"] > 0
    for name in ("sweep_1", "sweep_2"):
        reps = paths[name]["reps"]
        size = results["meta"]["sizes"]["sweep_rows"]
        for side in ("product", "baseline", "raw_update"):
            assert reps[side] and all(rep["rows"] == size for rep in reps[side]), (name, side)
    fanout = paths["ws_fanout"]["reps"]["product"][0]
    assert fanout["connected"] == fanout["sockets"]
    assert fanout["received_messages"] > 0
    assert "ratio" in paths["submit_queued"]["metrics"]["web_cpu_ms_per_req"]
    # the run cleans up after itself: no database of its own is left on the server
    assert results["meta"]["databases"]
    assert not set(results["meta"]["databases"]) & _databases()


def _first_error(stderr: str) -> str:
    """The first traceback and the end: a failing stage makes later ones fail too."""
    start = stderr.find("Traceback (most recent call last)")
    head = stderr[max(0, start - 1500) : start + 3000] if start >= 0 else ""
    return f"{head}\n...\n{stderr[-2000:]}"


def _databases() -> set[str]:
    import psycopg

    with psycopg.connect("postgres://postgres@127.0.0.1:5432/postgres") as conn:
        return {row[0] for row in conn.execute("SELECT datname FROM pg_database").fetchall()}
