"""Summaries, the printed table, and the profile's top frames.

How to read a ratio: product ÷ baseline, medians of the repetitions. For throughput (req/s,
proposals/s, rows/s) 1.0 means as fast as the bare baseline and 0.2 means five times slower;
for latency and CPU per request 1.0 means the same cost and 5.0 means five times the cost.
"""

from __future__ import annotations

import statistics
from collections import Counter
from pathlib import Path
from typing import Any

# metric: (label, higher is better)
HTTP_METRICS = {
    "rps": ("req/s", True),
    "p50_ms": ("p50 ms", False),
    "p99_ms": ("p99 ms", False),
    "web_cpu_ms_per_req": ("web CPU ms/req", False),
    "worker_cpu_ms_per_req": ("worker CPU ms/req", False),
}
BULK_METRICS = {
    "proposals_per_s": ("proposals/s", True),
    "p50_ms": ("p50 ms (request)", False),
    "p99_ms": ("p99 ms (request)", False),
    "web_cpu_ms_per_proposal": ("web CPU ms/proposal", False),
}
SWEEP_METRICS = {
    "rows_per_s": ("rows/s", True),
    "sweeper_cpu_ms_per_row": ("sweeper CPU ms/row", False),
}
WS_METRICS = {
    "lost_messages": ("lost messages", False),
    "expected_messages": ("expected messages", False),
    "p50_ms": ("p50 ms commit->socket", False),
    "p99_ms": ("p99 ms commit->socket", False),
}


def _stats(values: list[Any]) -> dict[str, float] | None:
    numbers = [v for v in values if isinstance(v, int | float)]
    if not numbers:
        return None
    return {"min": min(numbers), "median": statistics.median(numbers), "n": len(numbers)}


def _metrics_for(name: str) -> dict[str, tuple[str, bool]]:
    if name == "bulk_submit":
        return BULK_METRICS
    if name.startswith("sweep"):
        return SWEEP_METRICS
    if name == "ws_fanout":
        return WS_METRICS
    return HTTP_METRICS


def summarize(meta: dict[str, Any], results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for name, entry in results.items():
        metrics = _metrics_for(name)
        out: dict[str, Any] = {
            "status": entry.get("status") or ("errors" if entry["errors"] else "ok"),
            "errors": entry["errors"],
            "notes": entry["notes"],
            "metrics": {},
            "reps": {
                side: entry.get(side, [])
                for side in ("product", "baseline", "raw_update")
                if entry.get(side)
            },
        }
        if out["status"] != "n/a" and not entry["product"]:
            out["status"] = "errors"
            out["errors"] = max(out["errors"], 1)
            out["notes"].append("no measurement was made")
        for key, (label, higher_better) in metrics.items():
            row: dict[str, Any] = {"label": label, "higher_is_better": higher_better}
            for side in ("product", "baseline", "raw_update"):
                stats = _stats([rep.get(key) for rep in entry.get(side, [])])
                if stats:
                    row[side] = stats
            if "product" in row and "baseline" in row and row["baseline"]["median"]:
                row["ratio"] = row["product"]["median"] / row["baseline"]["median"]
            if "product" in row and "raw_update" in row and row["raw_update"]["median"]:
                row["ratio_raw_update"] = row["product"]["median"] / row["raw_update"]["median"]
            if len(row) > 2:
                out["metrics"][key] = row
        if "sql" in entry:
            out["sql"] = entry["sql"]
            out["sql_statements"] = entry.get("sql_statements", {})
        paths[name] = out
    derived: dict[str, Any] = {}
    bulk = paths.get("bulk_submit", {}).get("metrics", {}).get("proposals_per_s", {})
    single = paths.get("submit_queued", {}).get("metrics", {}).get("rps", {})
    if bulk.get("product") and single.get("product"):
        derived["bulk_vs_single_submit"] = bulk["product"]["median"] / single["product"]["median"]
    one = paths.get("sweep_1", {}).get("metrics", {}).get("rows_per_s", {})
    two = paths.get("sweep_2", {}).get("metrics", {}).get("rows_per_s", {})
    if one.get("product") and two.get("product"):
        derived["two_sweepers_vs_one"] = two["product"]["median"] / one["product"]["median"]
    if one.get("baseline") and two.get("baseline"):
        derived["raw_audit_two_vs_one"] = two["baseline"]["median"] / one["baseline"]["median"]
    deep = paths.get("queue_page_deep", {}).get("metrics", {}).get("p99_ms", {})
    first = paths.get("queue_page_1", {}).get("metrics", {}).get("p99_ms", {})
    if deep.get("product") and first.get("product"):
        derived["queue_deep_p99_vs_page_1"] = deep["product"]["median"] / first["product"]["median"]
    return {"meta": meta, "paths": paths, "derived": derived}


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _pair(stats: dict[str, float] | None) -> str:
    if not stats:
        return "-"
    return f"{_fmt(stats['min'])} / {_fmt(stats['median'])}"


def table(summary: dict[str, Any]) -> str:
    meta = summary["meta"]
    lines = [
        f"bench ({meta['mode']}): {meta['sizes']['reps']} repetition(s), "
        f"concurrency {meta['sizes']['concurrency']}, {meta['web_processes']} web process(es) "
        f"each, {meta['cpus']} CPUs, load average before {meta['loadavg_before'][0]:.2f}, "
        f"after {meta['loadavg_after'][0]:.2f}; {meta['elapsed_s']} s",
        "values: min / median over repetitions; ratio = product median / baseline median "
        "(sweeps: baseline = raw UPDATE + chained audit INSERT in psycopg)",
        "",
    ]
    header = ("path", "metric", "product", "baseline", "ratio", "SQL (product/baseline)")
    rows: list[tuple[str, ...]] = []
    for name, path in summary["paths"].items():
        sql = path.get("sql", {})
        sql_text = ""
        if sql:
            prod, base = sql.get("product", {}), sql.get("baseline", {})
            sql_text = f"{prod.get('total', '-')}/{base.get('total', '-')}"
        if path["status"] == "n/a":
            rows.append((name, "n/a", "; ".join(path["notes"]), "", "", ""))
            continue
        first = True
        for _key, row in path["metrics"].items():
            baseline = row.get("baseline")
            ratio = row.get("ratio")
            rows.append(
                (
                    name if first else "",
                    row["label"],
                    _pair(row.get("product")),
                    _pair(baseline),
                    f"{ratio:.2f}x" if ratio is not None else "-",
                    sql_text if first else "",
                )
            )
            if "ratio_raw_update" in row:
                rows.append(
                    (
                        "",
                        row["label"] + " vs raw UPDATE",
                        "",
                        _pair(row["raw_update"]),
                        f"{row['ratio_raw_update']:.3f}x",
                        "",
                    )
                )
            first = False
        if path["errors"]:
            rows.append(
                ("", f"ERRORS: {path['errors']}", "; ".join(path["notes"])[:120], "", "", "")
            )
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines.append(fmt.format(*header))
    lines.append(fmt.format(*("-" * w for w in widths)))
    lines += [fmt.format(*row) for row in rows]
    if summary["derived"]:
        lines.append("")
        for key, value in summary["derived"].items():
            lines.append(f"{key}: {value:.2f}x")
    return "\n".join(lines)


# --- profiles ------------------------------------------------------------------------------

REQUEST_MARKER = "django/core/handlers/base.py"


def write_profile_summary(raw: Path, top: int = 40) -> Path | None:
    """From py-spy's raw (collapsed) stacks: the share of request samples in which each
    function appears (inclusive) and on top (self). Only stacks inside Django's request
    handler count, so idle pool threads do not dilute the picture; waiting on PostgreSQL
    or Redis shows as the socket call that waits (py-spy ran with --idle)."""
    if not raw.exists():
        return None
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = requests = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        if REQUEST_MARKER not in stack:
            continue
        requests += count
        frames = stack.split(";")
        for frame in set(frames):
            inclusive[frame] += count
        own[frames[-1]] += count
    out = raw.with_suffix(".txt")
    lines = [
        f"py-spy samples: {total} in all, {requests} inside Django's request handler "
        f"({REQUEST_MARKER}); percentages are of the latter.",
        "",
        f"## top {top} by inclusive share (the function or anything it called)",
        "",
    ]
    for frame, count in inclusive.most_common(top):
        lines.append(f"{100 * count / max(requests, 1):6.1f}%  {frame}")
    lines += ["", "## top 25 by self share (on top of the stack: running or waiting there)", ""]
    for frame, count in own.most_common(25):
        lines.append(f"{100 * count / max(requests, 1):6.1f}%  {frame}")
    out.write_text("\n".join(lines) + "\n")
    return out
