"""bench/report.py's verdict on intake scaling from one web process to two: met, missed, or
without its condition when the baseline itself does not scale that far."""

from __future__ import annotations

from typing import Any

import pytest

from bench import report


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
