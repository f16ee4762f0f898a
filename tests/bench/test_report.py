"""bench/report.py's verdicts: intake scaling from one web process to two (met, missed, or
without its condition when the baseline itself does not scale that far), and the queue list
measured against its own SQL."""

from __future__ import annotations

from typing import Any

import pytest

from bench import report

_META = {
    "mode": "full",
    "sizes": {"reps": 1, "concurrency": 8},
    "web_processes": 2,
    "cpus": 2,
    "loadavg_before": [0.0],
    "loadavg_after": [0.0],
    "elapsed_s": 1,
}


def _rps(product: float, baseline: float) -> dict[str, Any]:
    return {
        "product": [{"rps": product}],
        "baseline": [{"rps": baseline}],
        "errors": 0,
        "notes": [],
    }


def _scaling(product: tuple[float, float], baseline: tuple[float, float]) -> dict[str, Any]:
    """The scaling target of a run whose queued submit ran at `product` and `baseline` req/s
    on (one, two) web processes."""
    summary = report.summarize(
        {"sizes": {}},
        {
            "submit_1web": _rps(product[0], baseline[0]),
            "submit_queued": _rps(product[1], baseline[1]),
        },
    )
    (target,) = [t for t in summary["targets"] if t["target"].startswith("intake, 2 web processes")]
    return {"derived": summary["derived"], **target}


@pytest.mark.parametrize(
    ("product", "baseline", "met", "verdict"),
    [
        ((100, 170), (200, 380), True, None),
        ((100, 150), (200, 380), False, None),
        ((100, 120), (200, 260), None, "n/a: the baseline's is 1.30"),
    ],
)
def test_intake_scaling_verdict(product, baseline, met, verdict):
    target = _scaling(product, baseline)
    assert target["value"] == pytest.approx(product[1] / product[0])
    assert target["derived"]["baseline_intake_2_vs_1_web_processes"] == pytest.approx(
        baseline[1] / baseline[0]
    )
    assert target["met"] is met
    assert target.get("verdict") == verdict


def test_intake_scaling_not_measured_without_the_one_process_stage():
    summary = report.summarize({"sizes": {}}, {"submit_queued": _rps(150, 380)})
    (target,) = [t for t in summary["targets"] if t["target"].startswith("intake, 2 web processes")]
    assert target["value"] is None and target["met"] is None and "verdict" not in target


def test_queue_targets_compare_with_the_pages_own_sql():
    page = {
        "product": [{"p50_ms": 30.0}],
        "baseline": [{"p50_ms": 10.0}],
        "own_sql": [{"p50_ms": 20.0}],
        "errors": 0,
        "notes": [],
    }
    summary = report.summarize({"sizes": {}}, {"queue_page_1": page})
    row = summary["paths"]["queue_page_1"]["metrics"]["p50_ms"]
    assert row["ratio"] == pytest.approx(3.0) and row["ratio_own_sql"] == pytest.approx(1.5)
    (target,) = [t for t in summary["targets"] if t["target"].startswith("queue page 1 p50")]
    assert target["value"] == pytest.approx(1.5) and target["met"] is True
    assert "p50 ms vs its own SQL" in report.table({**summary, "meta": _META})
