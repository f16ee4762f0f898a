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

MAX_STATEMENTS = 60
# Who a path is measured on: the product, the bare baseline, and two floors some paths also
# have: a sweep's chunked raw UPDATE, and a list page's own SQL run by the baseline (the one
# the "queue list <= 2x its own SQL" names; the baseline's own keyset page over its
# simpler table stays beside it).
SIDES = ("product", "baseline", "raw_update", "own_sql")
OTHER_FLOORS = {"raw_update": (" vs raw UPDATE", 3), "own_sql": (" vs its own SQL", 2)}
INTAKE_SCALING = 1.6  # issue 10: intake from 1 to 2 web processes, when the baseline scales so
# metric: (label, higher is better)
HTTP_METRICS = {
    "rps": ("req/s", True),
    "p50_ms": ("p50 ms", False),
    "p99_ms": ("p99 ms", False),
    "web_cpu_ms_per_req": ("web CPU ms/req", False),
    "worker_cpu_ms_per_req": ("worker CPU ms/req", False),
    "relay_drain_s": ("relay catch-up s", False),
}
BULK_METRICS = {
    "proposals_per_s": ("proposals/s", True),
    "p50_ms": ("p50 ms (request)", False),
    "p99_ms": ("p99 ms (request)", False),
    "web_cpu_ms_per_proposal": ("web CPU ms/proposal", False),
    "relay_drain_s": ("relay catch-up s", False),
}
SWEEP_METRICS = {
    "rows_per_s": ("rows/s", True),
    "sweeper_cpu_ms_per_row": ("sweeper CPU ms/row", False),
    "postgres_cpu_ms_per_row": ("its PostgreSQL CPU ms/row", False),
    "worker_cpu_ms_per_row": ("worker CPU ms/row", False),
    "relay_drain_s": ("relay catch-up s", False),
}
WS_METRICS = {
    "failed_to_connect": ("sockets failed to connect", False),
    "lost_messages": ("lost messages", False),
    "expected_messages": ("expected messages", False),
    "p50_ms": ("p50 ms commit->socket", False),
    "p99_ms": ("p99 ms commit->socket", False),
    "fanout_p50_ms": ("p50 ms stream->socket", False),
    "fanout_p99_ms": ("p99 ms stream->socket", False),
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
            "reps": {side: entry.get(side, []) for side in SIDES if entry.get(side)},
        }
        if out["status"] != "n/a" and not entry["product"]:
            out["status"] = "errors"
            out["errors"] = max(out["errors"], 1)
            out["notes"].append("no measurement was made")
        for key, (label, higher_better) in metrics.items():
            row: dict[str, Any] = {"label": label, "higher_is_better": higher_better}
            for side in SIDES:
                stats = _stats([rep.get(key) for rep in entry.get(side, [])])
                if stats:
                    row[side] = stats
            for side in SIDES[1:]:
                if "product" in row and side in row and row[side]["median"]:
                    ratio_key = "ratio" if side == "baseline" else f"ratio_{side}"
                    row[ratio_key] = row["product"]["median"] / row[side]["median"]
            if len(row) > 2:
                out["metrics"][key] = row
        if "sql" in entry:
            out["sql"] = entry["sql"]
            # The statements themselves, for a reader; a bulk sends thousands, so at most
            # MAX_STATEMENTS per side are kept (the counts in "sql" are complete).
            out["sql_statements"] = {
                side: statements[:MAX_STATEMENTS]
                + (
                    [f"... {len(statements) - MAX_STATEMENTS} more"]
                    if len(statements) > MAX_STATEMENTS
                    else []
                )
                for side, statements in entry.get("sql_statements", {}).items()
            }
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
    one_web = paths.get("submit_1web", {}).get("metrics", {}).get("rps", {})
    for side in ("product", "baseline"):
        if one_web.get(side) and single.get(side):
            derived[f"{side}_intake_2_vs_1_web_processes"] = (
                single[side]["median"] / one_web[side]["median"]
            )
    deep = paths.get("queue_page_deep", {}).get("metrics", {}).get("p99_ms", {})
    first = paths.get("queue_page_1", {}).get("metrics", {}).get("p99_ms", {})
    if deep.get("product") and first.get("product"):
        derived["queue_deep_p99_vs_page_1"] = deep["product"]["median"] / first["product"]["median"]
    return {"meta": meta, "paths": paths, "derived": derived, "targets": targets(paths, derived)}


def _median(paths: dict[str, Any], name: str, metric: str, side: str = "product") -> Any:
    row = paths.get(name, {}).get("metrics", {}).get(metric, {})
    return (row.get(side) or {}).get("median")


def targets(paths: dict[str, Any], derived: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 10's ratio targets, as measured in this run (None: not measured)."""

    def ratio(name: str, metric: str, floor: str = "baseline") -> float | None:
        row = paths.get(name, {}).get("metrics", {}).get(metric, {})
        value = row.get("ratio" if floor == "baseline" else f"ratio_{floor}")
        return float(value) if value is not None else None

    # A single submit both ways: left pending for review, and decided by policy (the common
    # case the issue names: "most proposals are routed by policy").
    checks: list[tuple[str, float | None, str, float]] = [
        check
        for kind, path in (("queued", "submit_queued"), ("policy-decided", "submit_auto"))
        for check in (
            (f"{kind} submit req/s vs baseline", ratio(path, "rps"), ">=", 0.5),
            (f"{kind} submit p99 vs baseline", ratio(path, "p99_ms"), "<=", 2.0),
            (f"{kind} submit web CPU vs baseline", ratio(path, "web_cpu_ms_per_req"), "<=", 3.0),
        )
    ]
    checks += [
        ("bulk proposals/s vs single submit", derived.get("bulk_vs_single_submit"), ">=", 10.0),
        ("two sweepers vs one", derived.get("two_sweepers_vs_one"), ">=", 1.6),
        ("sweep rows/s vs raw UPDATE + chained audit", ratio("sweep_1", "rows_per_s"), ">=", 0.5),
        ("queue page 1 p50 vs its own SQL", ratio("queue_page_1", "p50_ms", "own_sql"), "<=", 2),
        (
            "queue deep page p50 vs its own SQL",
            ratio("queue_page_deep", "p50_ms", "own_sql"),
            "<=",
            2,
        ),
        ("queue deep page p99 vs page 1", derived.get("queue_deep_p99_vs_page_1"), "<=", 1.5),
        ("websocket messages lost", _median(paths, "ws_fanout", "lost_messages"), "<=", 0),
        ("websocket p99 commit->socket ms", _median(paths, "ws_fanout", "p99_ms"), "<=", 1000),
    ]
    out = []
    for label, value, op, bound in checks:
        met = None if value is None else (value >= bound if op == ">=" else value <= bound)
        out.append({"target": f"{label} {op} {bound:g}", "value": value, "met": met})
    out.append(_scaling_target(derived))
    return out


def _scaling_target(derived: dict[str, Any]) -> dict[str, Any]:
    """The issue's "intake scales >= 1.6x from 1 to 2 processes on 2 cores when the baseline
    does": the queued submit's req/s with both web processes over the first alone. A baseline
    that does not scale that far on this machine (the cores are shared with PostgreSQL and the
    load generator) leaves the target without its condition: then the product's scaling is
    shown beside the baseline's, neither met nor missed."""
    product = derived.get("product_intake_2_vs_1_web_processes")
    baseline = derived.get("baseline_intake_2_vs_1_web_processes")
    target: dict[str, Any] = {
        "target": f"intake, 2 web processes vs 1 (baseline's too) >= {INTAKE_SCALING:g}",
        "value": product,
        "met": None,
    }
    if product is None or baseline is None:
        return target
    if product >= INTAKE_SCALING:
        target["met"] = True
    elif baseline >= INTAKE_SCALING:
        target["met"] = False
    else:
        target["verdict"] = f"n/a: the baseline's is {baseline:.2f}"
    return target


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
        "(sweeps: baseline = raw UPDATE + chained audit INSERT in psycopg; queue pages: also vs "
        "the product's own page SQL run by the bare baseline)",
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
            for side, (suffix, digits) in OTHER_FLOORS.items():
                if f"ratio_{side}" in row:
                    rows.append(
                        (
                            "",
                            row["label"] + suffix,
                            "",
                            _pair(row[side]),
                            f"{row[f'ratio_{side}']:.{digits}f}x",
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
    if summary.get("targets"):
        lines += ["", "issue 10 targets (medians of this run):"]
        for check in summary["targets"]:
            verdict = (
                check.get("verdict")
                or {True: "met", False: "NOT met", None: "not measured"}[check["met"]]
            )
            value = "-" if check["value"] is None else _fmt(check["value"])
            lines.append(f"  {check['target']:<55} {value:>10}  {verdict}")
    return "\n".join(lines)


# --- profiles ------------------------------------------------------------------------------

# Django runs a sync request in a thread that starts at the outermost middleware wrapper.
REQUEST_MARKER = "django/core/handlers/exception.py"
# Leaf frames of a thread that is parked, not working (event loop select, pool threads).
# Runner.run is the leaf whenever uvloop runs its own C code, busy or parked: unknowable.
IDLE_LEAVES = (
    "select",
    "poll",
    "wait",
    "sleep",
    "_worker (concurrent/futures/thread.py",
    "Runner.run",
)


def write_profile_summary(raw: Path, top: int = 40, context: str = "") -> Path | None:
    """From py-spy's raw (collapsed) stacks, recorded with --idle: for the request threads
    (stacks inside Django's request handler), the share of their samples in which each
    function appears (inclusive) and on top (self): waiting on PostgreSQL or Redis shows as
    the socket call that waits. The rest of the process (the event loop: ASGI, request
    bodies, responses) is listed by its busy samples, parked threads left out."""
    if not raw.exists():
        return None
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    other: Counter[str] = Counter()
    total = requests = busy_other = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        if REQUEST_MARKER not in stack:
            leaf = frames[-1].split(" (")[0].lower()
            if not any(word in leaf or word in frames[-1] for word in IDLE_LEAVES):
                busy_other += count
                other[frames[-1]] += count
            continue
        requests += count
        for frame in set(frames):
            inclusive[frame] += count
        own[frames[-1]] += count
    out = raw.with_suffix(".txt")
    lines = [
        *([context, ""] if context else []),
        f"py-spy samples: {total} in all; {requests} in request threads (inside "
        f"{REQUEST_MARKER}), the percentages below are of these; {busy_other} busy samples "
        "elsewhere (event loop).",
        "",
        f"## request threads: top {top} by inclusive share (the function or what it called)",
        "",
    ]
    for frame, count in inclusive.most_common(top):
        lines.append(f"{100 * count / max(requests, 1):6.1f}%  {frame}")
    lines += ["", "## request threads: top 25 by self share (running or waiting right there)", ""]
    for frame, count in own.most_common(25):
        lines.append(f"{100 * count / max(requests, 1):6.1f}%  {frame}")
    lines += ["", "## outside request threads: top 15 busy leaf frames (share of those)", ""]
    for frame, count in other.most_common(15):
        lines.append(f"{100 * count / max(busy_other, 1):6.1f}%  {frame}")
    out.write_text("\n".join(lines) + "\n")
    return out
