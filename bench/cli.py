"""`bench/run` / `manage.py bench`: the product against a bare baseline, in one run.

See README "Benchmarks". The orchestrator imports no Django: everything it measures runs in
processes of their own (web servers, worker, load generator, sweepers, probes), so its own
work is never charged to what it measures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import report
from bench.baseline import schema
from bench.stack import PYTHON, ROOT, Stack, make_workdir

PATHS = (
    "submit_auto",
    "submit_queued",
    "submit_1web",
    "bulk_submit",
    "vote",
    "queue_page_1",
    "queue_page_deep",
    "dashboard",
    "sweep_1",
    "sweep_2",
    "ws_fanout",
)
HTTPS = {"X-Forwarded-Proto": "https"}  # what the load balancer adds (no SSL redirect)


@dataclass(frozen=True)
class Sizes:
    reps: int
    concurrency: int
    duration: float | None  # seconds per measured stage (None: count-based)
    count: int  # requests per stage when count-based
    warmup: int
    bulk_size: int
    bulk_count: int
    bulk_concurrency: int
    votes: int
    page_size: int
    deep_pages: int
    sweep_rows: int
    ws_sockets: int
    ws_rate: float
    ws_seconds: float
    ws_drain: float

    @property
    def queue_rows(self) -> int:
        return self.page_size * (self.deep_pages + 2)


QUICK = Sizes(
    reps=1,
    concurrency=4,
    duration=None,
    count=12,
    warmup=2,
    bulk_size=20,
    bulk_count=2,
    bulk_concurrency=1,
    votes=12,
    page_size=50,
    deep_pages=10,
    sweep_rows=30,
    ws_sockets=10,
    ws_rate=4,
    ws_seconds=1.5,
    ws_drain=15,
)
FULL = Sizes(
    reps=3,
    concurrency=8,
    duration=8.0,
    count=0,
    warmup=16,
    bulk_size=500,
    bulk_count=2,
    bulk_concurrency=2,
    votes=240,
    page_size=50,
    deep_pages=1000,
    # The figure; 100 chunks, so two sweepers split the work evenly (with 10 chunks
    # one of them took 6 and the pair's wall time was the longer one's).
    sweep_rows=10_000,
    ws_sockets=500,
    ws_rate=10,
    ws_seconds=30,
    ws_drain=60,
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench", description="Measure the product against a bare baseline in one run."
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny sizes, one repetition: checks every path runs (for CI)",
    )
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--reps", type=int, help="repetitions (full: 3)")
    parser.add_argument(
        "--web-processes",
        type=int,
        default=None,
        help="uvicorn processes for each of product and baseline "
        "(default: the number of CPUs, at most 2; --quick: 1)",
    )
    parser.add_argument("--concurrency", type=int, help="load generator concurrency (full: 8)")
    parser.add_argument("--duration", type=float, help="seconds per measured stage (full: 8)")
    parser.add_argument("--sweep-rows", type=int, help="due proposals per sweep (full: 10000)")
    parser.add_argument("--ws-sockets", type=int, help="websockets (full: 500)")
    parser.add_argument("--ws-seconds", type=float, help="seconds of submits (full: 30)")
    parser.add_argument("--only", help=f"comma-separated subset of: {', '.join(PATHS)}")
    parser.add_argument(
        "--profile",
        type=Path,
        help="py-spy the first product web process during submit_queued; "
        "raw samples to this file, top frames beside it (.txt)",
    )
    parser.add_argument(
        "--explain",
        type=Path,
        help="write EXPLAIN (ANALYZE, BUFFERS) of queue page 1 and the deep page",
    )
    parser.add_argument("--keep-workdir", action="store_true", help="keep logs afterwards")
    return parser.parse_args(argv)


def sizes_for(args: argparse.Namespace) -> Sizes:
    base = QUICK if args.quick else FULL
    changes: dict[str, Any] = {}
    for name in ("reps", "concurrency", "duration", "sweep_rows", "ws_sockets", "ws_seconds"):
        value = getattr(args, name)
        if value is not None:
            changes[name] = value
    return Sizes(**{**base.__dict__, **changes})


# --- running the load generator ------------------------------------------------------------


def run_load(
    stack: Stack, product: bool, spec: dict[str, Any], during: Callable[[], Any] | None = None
) -> dict[str, Any]:
    """One measured stage: the load generator in its own process; web CPU sampled right
    before and after the measured requests, the worker's until the outbox is relayed."""
    web = stack.product_web if product else stack.baseline_web
    process = subprocess.Popen(
        [PYTHON, "-m", "bench.load"],
        cwd=stack.src,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write(
        json.dumps({**spec, "headers": {**HTTPS, **spec.get("headers", {})}}) + "\n"
    )
    process.stdin.flush()
    _expect(process, "ready")
    if product:  # the warm-up's after-commit work is not this stage's
        stack.wait_outbox_drained()
    web_cpu0 = sum(p.cpu_seconds() for p in web)
    worker_cpu0 = stack.worker.cpu_seconds() if product and stack.worker else 0.0
    process.stdin.write("go\n")
    process.stdin.flush()
    side = during() if during else None
    _expect(process, "done")
    web_cpu = sum(p.cpu_seconds() for p in web) - web_cpu0
    drain = stack.wait_outbox_drained() if product else None
    worker_cpu = (stack.worker.cpu_seconds() if product and stack.worker else 0.0) - worker_cpu0
    process.stdin.write("report\n")
    process.stdin.flush()
    result: dict[str, Any] = json.loads(process.stdout.readline())
    process.wait(30)
    if side is not None and hasattr(side, "wait"):
        side.wait(120)
    done = max(result["requests"], 1)
    result["web_cpu_ms_per_req"] = web_cpu * 1000 / done
    result["loadgen_cpu_ms_per_req"] = result.pop("loadgen_cpu_s") * 1000 / done
    if product:
        # The worker's share includes relaying this stage's events (drain time below).
        result["worker_cpu_ms_per_req"] = worker_cpu * 1000 / done
        result["relay_drain_s"] = drain
    return result


def _expect(process: subprocess.Popen[str], word: str) -> None:
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    if line != word:
        process.kill()
        raise RuntimeError(f"load generator said {line!r}, expected {word!r}")


def load_spec(
    sizes: Sizes,
    urls: list[str],
    requests: list[dict[str, Any]],
    *,
    token: str,
    count: int | None = None,
    concurrency: int | None = None,
    warmup: int | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "base_urls": urls,
        "concurrency": concurrency or sizes.concurrency,
        "requests": requests,
        "headers": {"Authorization": f"Bearer {token}"},
        "warmup": sizes.warmup if warmup is None else warmup,
        "timeout": 600,
    }
    if count is not None:
        spec["count"] = count
    elif sizes.duration:
        spec["duration"] = sizes.duration
    else:
        spec["count"] = sizes.count
    return spec


# --- the run -------------------------------------------------------------------------------


class Bench:
    dashboard_path = "/api/v1/metrics/summary/"
    has_dashboard = False

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.sizes = sizes_for(args)
        self.only = set(args.only.split(",")) if args.only else set(PATHS)
        unknown = self.only - set(PATHS)
        if unknown:
            raise SystemExit(f"unknown paths: {', '.join(sorted(unknown))}")
        cpus = os.cpu_count() or 1
        # Quick mode checks the pipeline, not scaling: one process each starts faster.
        self.web_processes = args.web_processes or (1 if args.quick else min(2, cpus))
        self.workdir = make_workdir()
        self.stack = Stack(self.workdir, self.web_processes)
        self.results: dict[str, dict[str, Any]] = {
            name: {"product": [], "baseline": [], "errors": 0, "notes": []}
            for name in PATHS
            if name in self.only
        }
        self.log = lambda text: print(
            f"[bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True
        )

    # -- helpers ---------------------------------------------------------------------------

    def product_cmd(self, *args: str, stdin: str | None = None) -> dict[str, Any]:
        out = (
            self.stack.run_checked(
                "product-" + args[0],
                [PYTHON, "-m", "bench.product", *args],
                self.stack.product_env(),
                timeout=900,
            )
            if stdin is None
            else self._with_stdin(
                [PYTHON, "-m", "bench.product", *args], self.stack.product_env(), stdin
            )
        )
        return json.loads(out.strip().splitlines()[-1])

    def _with_stdin(self, args: list[str], env: dict[str, str], stdin: str) -> str:
        done = subprocess.run(
            args,
            cwd=self.stack.src,
            env=env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{args[2:]} failed:\n{done.stderr[-3000:]}{done.stdout[-2000:]}")
        return done.stdout

    def record(self, name: str, side: str, result: dict[str, Any]) -> None:
        entry = self.results[name]
        entry[side].append(result)
        entry["errors"] += int(result.get("errors", 0))
        for sample in result.get("error_samples", [])[:3]:
            if len(entry["notes"]) < 6:
                entry["notes"].append(f"{side}: {sample}")

    # -- set-up ----------------------------------------------------------------------------

    def prepare(self) -> None:
        self.log(f"starting: workdir {self.workdir}, {self.web_processes} web process(es) each")
        self.stack.start(self.log, after_migrate=self.seed)
        self.log("product and baseline are up")

    def seed(self) -> None:
        s = self.sizes
        queue_rows = s.queue_rows if self.only & {"queue_page_1", "queue_page_deep"} else 0
        deep = s.page_size * s.deep_pages
        votes = (s.votes + s.warmup) * s.reps if "vote" in self.only else 0
        self.tokens = self.product_cmd("prepare", str(queue_rows), str(deep), str(votes + 2))
        self.deep_cursor = self.tokens["deep_cursor"]
        self.vote_ids: list[str] = self.tokens["vote_ids"]
        base_dsn = self.stack.pg.dsn(self.stack.baseline_db)
        self.base_agent = schema.add_user_with_key(base_dsn, "agent")
        self.base_reviewer = schema.add_user_with_key(base_dsn, "reviewer")
        if queue_rows:
            schema.seed_items(base_dsn, queue_rows, due_in_past=False, owner="agent")
        self.base_deep_after = schema.cursor_at(base_dsn, deep)
        self.log("seeded")
        # In-process, so it needs no web server: it runs while they start.
        self.probe_sql()
        self.log("SQL statements per request counted")

    # -- requests --------------------------------------------------------------------------

    def submit_body(self, number: int, auto: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "checkpoint": "bench-auto" if auto else "bench-review",
            "title": f"bench submit {number}",
            "payload": {"cost": number % 100, "rows": 10},
        }
        if auto:
            body["confidence"] = 0.99
        return body

    def bulk_body(self, auto: bool = False) -> dict[str, Any]:
        return {"proposals": [self.submit_body(n, auto) for n in range(self.sizes.bulk_size)]}

    def queue_path(self, cursor: str | None) -> str:
        return "/api/v1/proposals/?status=pending" + (f"&cursor={cursor}" if cursor else "")

    def base_queue_path(self, after: str | None) -> str:
        from urllib.parse import quote

        return "/items/" + (f"?after={quote(after)}" if after else "")

    # -- stages ----------------------------------------------------------------------------

    def probe_sql(self) -> None:
        """Statements per request, product and baseline, each path once (in-process)."""
        s = self.sizes
        t = self.tokens
        vote_ids = [self.vote_ids.pop(), self.vote_ids.pop()]
        requests = [
            {
                "name": "warm",
                "method": "GET",
                "path": self.queue_path(None),
                "token": t["reviewer_token"],
            },
            {
                "name": "warm",
                "method": "POST",
                "path": "/api/v1/proposals/",
                "body": self.submit_body(0, True),
                "token": t["agent_token"],
            },
            {
                # Both checkpoints warm: a submit's caches (checkpoint row, electorate) are
                # per checkpoint, and the load stages run with them warm.
                "name": "warm",
                "method": "POST",
                "path": "/api/v1/proposals/",
                "body": self.submit_body(0, False),
                "token": t["agent_token"],
            },
            {
                "name": "warm",
                "method": "POST",
                "path": f"/api/v1/proposals/{vote_ids[0]}/votes/",
                "body": {"decision": "approve", "revision": 1},
                "token": t["reviewer_token"],
            },
            {
                "name": "submit_auto",
                "method": "POST",
                "path": "/api/v1/proposals/",
                "body": self.submit_body(1, True),
                "token": t["agent_token"],
            },
            {
                "name": "submit_queued",
                "method": "POST",
                "path": "/api/v1/proposals/",
                "body": self.submit_body(2, False),
                "token": t["agent_token"],
            },
            {
                "name": "bulk_submit",
                "method": "POST",
                "path": "/api/v1/proposals/bulk/",
                "body": self.bulk_body(),
                "token": t["agent_token"],
            },
            {
                "name": "vote",
                "method": "POST",
                "path": f"/api/v1/proposals/{vote_ids[1]}/votes/",
                "body": {"decision": "approve", "revision": 1},
                "token": t["reviewer_token"],
            },
            {
                "name": "queue_page_1",
                "method": "GET",
                "path": self.queue_path(None),
                "token": t["reviewer_token"],
            },
            {
                "name": "queue_page_deep",
                "method": "GET",
                "path": self.queue_path(self.deep_cursor),
                "token": t["reviewer_token"],
            },
        ]
        if "dashboard" in self.results:
            # The endpoint may not exist yet (another change builds it): asked at run time.
            requests.append(
                {
                    "name": "dashboard",
                    "method": "GET",
                    "path": self.dashboard_path,
                    "token": t["manager_token"],
                    "optional": True,
                }
            )
        product_probe = self._start_probe(self.stack.product_env(), requests)
        base_dsn = self.stack.pg.dsn(self.stack.baseline_db)
        decide_id = schema.seed_items(base_dsn, 1, due_in_past=False, owner="agent", far=True)[0]
        one = {"title": "probe", "payload": {"cost": 1}}
        base_requests: list[dict[str, Any]] = [
            {"name": "warm", "method": "GET", "path": "/items/", "token": self.base_agent},
            {
                "name": "submit",
                "method": "POST",
                "path": "/items/",
                "body": one,
                "token": self.base_agent,
            },
            {
                "name": "bulk_submit",
                "method": "POST",
                "path": "/items/bulk/",
                "body": {"proposals": [one] * s.bulk_size},
                "token": self.base_agent,
            },
            {
                "name": "vote",
                "method": "POST",
                "path": f"/items/{decide_id}/decide/",
                "token": self.base_reviewer,
            },
            {"name": "queue_page_1", "method": "GET", "path": "/items/", "token": self.base_agent},
            {
                "name": "queue_page_deep",
                "method": "GET",
                "path": self.base_queue_path(self.base_deep_after),
                "token": self.base_agent,
            },
        ]
        baseline_probe = self._start_probe(self.stack.baseline_env(), base_requests)
        product, baseline = self._probe_result(product_probe), self._probe_result(baseline_probe)
        self.has_dashboard = "dashboard" in product and not product["dashboard"].get("absent")
        if not self.has_dashboard:
            product.pop("dashboard", None)
        baseline["submit_auto"] = baseline["submit_queued"] = baseline.pop("submit")
        for name, entry in self.results.items():
            for side, found in (("product", product), ("baseline", baseline)):
                if name in found:
                    counts = dict(found[name])
                    statements = counts.pop("statements")
                    if name == "bulk_submit":
                        counts["per_proposal"] = counts["total"] / s.bulk_size
                    entry.setdefault("sql", {})[side] = counts
                    entry.setdefault("sql_statements", {})[side] = statements
        self._write_own_sql(product)

    def _write_own_sql(self, product: dict[str, Any]) -> None:
        """The SQL of each list page as the product sent it (its page query: the statement
        that reads proposals with a LIMIT), for the baseline's `own-sql` view to run."""
        self.stack.own_sql_dir.mkdir(parents=True, exist_ok=True)
        for name in ("queue_page_1", "queue_page_deep"):
            statements = product.get(name, {}).get("statements", [])
            pages = [sql for sql in statements if "LIMIT" in sql and "proposals_proposal" in sql]
            if name in self.results and pages:
                (self.stack.own_sql_dir / f"{name}.sql").write_text(pages[-1])

    def _start_probe(self, env: dict[str, str], requests: list[dict[str, Any]]) -> Any:
        process = subprocess.Popen(
            [PYTHON, "-m", "bench.probe"],
            cwd=self.stack.src,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert process.stdin is not None
        process.stdin.write(json.dumps(requests))
        process.stdin.close()
        return process

    @staticmethod
    def _probe_result(process: subprocess.Popen[str]) -> dict[str, Any]:
        assert process.stdout is not None and process.stderr is not None
        out, err = process.stdout.read(), process.stderr.read()
        if process.wait(600) != 0:
            raise RuntimeError(f"SQL probe failed:\n{err[-3000:]}{out[-2000:]}")
        result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        return result

    def http_stages(self, rep: int) -> None:
        s = self.sizes
        t = self.tokens
        pu, bu = self.stack.product_urls, self.stack.baseline_urls
        base_submit = [
            {
                "method": "POST",
                "path": "/items/",
                "body": {"title": f"bench submit {n}", "payload": {"cost": n % 100}},
            }
            for n in range(200)
        ]
        # submit_1web: the queued submit again, all of it on the first web process of each
        # side (the other stays idle): how intake scales from one process to two.
        for name, auto, web in (
            ("submit_auto", True, None),
            ("submit_queued", False, None),
            ("submit_1web", False, 1),
        ):
            if name not in self.results:
                continue
            if web is not None and self.web_processes <= web:
                self.results[name]["status"] = "n/a"
                self.results[name]["notes"] = [f"needs more than {web} web process(es)"]
                continue
            reqs = [
                {"method": "POST", "path": "/api/v1/proposals/", "body": self.submit_body(n, auto)}
                for n in range(200)
            ]
            profile = (
                self._profiler
                if (name == "submit_queued" and rep == 0 and self.args.profile)
                else None
            )
            self.log(f"rep {rep + 1}: {name}")
            self.record(
                name,
                "product",
                run_load(
                    self.stack,
                    True,
                    load_spec(s, pu[:web], reqs, token=t["agent_token"]),
                    during=profile,
                ),
            )
            self.record(
                name,
                "baseline",
                run_load(
                    self.stack, False, load_spec(s, bu[:web], base_submit, token=self.base_agent)
                ),
            )
        if "bulk_submit" in self.results:
            self.log(f"rep {rep + 1}: bulk_submit")
            bulk = [{"method": "POST", "path": "/api/v1/proposals/bulk/", "body": self.bulk_body()}]
            result = run_load(
                self.stack,
                True,
                load_spec(
                    s,
                    pu,
                    bulk,
                    token=t["agent_token"],
                    # As the baseline's: a warm-up request per web process first (the single
                    # submits before do not reach the bulk path's per-process caches), then
                    # the same number of measured requests.
                    count=s.bulk_count * 4,
                    concurrency=s.bulk_concurrency,
                    warmup=s.bulk_concurrency,
                ),
            )
            self._per_proposal(result, s.bulk_size)
            self._bulk_item_errors(result)
            self.record("bulk_submit", "product", result)
            base_bulk = [
                {
                    "method": "POST",
                    "path": "/items/bulk/",
                    "body": {
                        "proposals": [
                            {"title": f"b{n}", "payload": {"cost": n}} for n in range(s.bulk_size)
                        ]
                    },
                }
            ]
            result = run_load(
                self.stack,
                False,
                load_spec(
                    s,
                    bu,
                    base_bulk,
                    token=self.base_agent,
                    count=s.bulk_count * 4,
                    concurrency=s.bulk_concurrency,
                    warmup=s.bulk_concurrency,
                ),
            )
            self._per_proposal(result, s.bulk_size)
            self.record("bulk_submit", "baseline", result)
        if "vote" in self.results:
            self.log(f"rep {rep + 1}: vote")
            warm = s.warmup
            ids = [self.vote_ids.pop() for _ in range(s.votes + warm)]
            reqs = [
                {
                    "method": "POST",
                    "path": f"/api/v1/proposals/{pid}/votes/",
                    "body": {"decision": "approve", "revision": 1},
                }
                for pid in ids
            ]
            self.record(
                "vote",
                "product",
                run_load(
                    self.stack,
                    True,
                    {
                        **load_spec(s, pu, reqs, token=t["reviewer_token"], count=s.votes),
                        "consume": True,
                    },
                ),
            )
            base_ids = schema.seed_items(
                self.stack.pg.dsn(self.stack.baseline_db),
                s.votes + warm,
                due_in_past=False,
                owner="agent",
                far=True,
            )
            reqs = [{"method": "POST", "path": f"/items/{bid}/decide/"} for bid in base_ids]
            self.record(
                "vote",
                "baseline",
                run_load(
                    self.stack,
                    False,
                    {
                        **load_spec(s, bu, reqs, token=self.base_reviewer, count=s.votes),
                        "consume": True,
                    },
                ),
            )
        for name, cursor, after in (
            ("queue_page_1", None, None),
            ("queue_page_deep", self.deep_cursor, self.base_deep_after),
        ):
            if name not in self.results:
                continue
            self.log(f"rep {rep + 1}: {name}")
            self.record(
                name,
                "product",
                run_load(
                    self.stack,
                    True,
                    load_spec(
                        s,
                        pu,
                        [{"method": "GET", "path": self.queue_path(cursor)}],
                        token=t["reviewer_token"],
                    ),
                ),
            )
            self.record(
                name,
                "baseline",
                run_load(
                    self.stack,
                    False,
                    load_spec(
                        s,
                        bu,
                        [{"method": "GET", "path": self.base_queue_path(after)}],
                        token=self.base_agent,
                    ),
                ),
            )
            # The floor the issue names: the product's own page SQL, run by the bare baseline.
            self.results[name].setdefault("own_sql", [])
            self.record(
                name,
                "own_sql",
                run_load(
                    self.stack,
                    False,
                    load_spec(
                        s,
                        bu,
                        [{"method": "GET", "path": f"/own-sql/{name}/"}],
                        token=self.base_agent,
                    ),
                ),
            )
        if "dashboard" in self.results:
            if not self.has_dashboard:
                self.results["dashboard"]["status"] = "n/a"
                self.results["dashboard"]["notes"] = [
                    f"{self.dashboard_path} answers 404: not in this build"
                ]
            else:
                self.log(f"rep {rep + 1}: dashboard")
                self.record(
                    "dashboard",
                    "product",
                    run_load(
                        self.stack,
                        True,
                        load_spec(
                            s,
                            pu,
                            [{"method": "GET", "path": self.dashboard_path}],
                            token=t["manager_token"],
                        ),
                    ),
                )

    @staticmethod
    def _per_proposal(result: dict[str, Any], size: int) -> None:
        result["proposals_per_s"] = (result["rps"] or 0) * size
        result["web_cpu_ms_per_proposal"] = result["web_cpu_ms_per_req"] / size

    @staticmethod
    def _bulk_item_errors(result: dict[str, Any]) -> None:
        """A bulk answers 200 even when items fail; the load generator counts requests only."""
        # Item-level errors are checked by the SQL probe's bulk (which must succeed) and by
        # the product's own tests; here a non-200 already counts as an error.

    def _profiler(self) -> subprocess.Popen[bytes]:
        """py-spy on the first product web process for the stage's length."""
        out = self.args.profile
        out.parent.mkdir(parents=True, exist_ok=True)
        duration = max(1, int(self.sizes.duration or 5) - 1)
        dirty = " + uncommitted changes" if _git("status", "--porcelain", "-uno") else ""
        self.profile_context = (
            f"py-spy record --idle --rate 200 --nonblocking for {duration} s on product web "
            f"process 0 of {self.web_processes}, during submit_queued (POST /api/v1/proposals/ "
            f"to a checkpoint that queues for review) at concurrency {self.sizes.concurrency}; "
            f"git {_git('rev-parse', '--short', 'HEAD')}"
            f"{dirty}"
            f", load average at start {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs."
        )
        return subprocess.Popen(
            [
                str(Path(PYTHON).parent / "py-spy"),
                "record",
                "--format",
                "raw",
                "--pid",
                str(self.stack.product_web[0].pid),
                "--duration",
                str(duration),
                "--rate",
                "200",
                "--idle",
                "--output",
                str(out),
                "--nonblocking",
            ],
            stdout=subprocess.DEVNULL,
            stderr=(self.workdir / "py-spy.log").open("wb"),
        )

    def sweeps(self, rep: int) -> None:
        s = self.sizes
        base_dsn = self.stack.pg.dsn(self.stack.baseline_db)
        for name, procs in (("sweep_1", 1), ("sweep_2", 2)):
            if name not in self.results:
                continue
            self.log(f"rep {rep + 1}: {name}")
            worker = self.stack.worker
            worker_cpu0 = worker.cpu_seconds() if worker else 0.0
            result = self._sweepers("product", procs, self.stack.product_env(), seed=s.sweep_rows)
            # How long the worker needs to relay the sweep's events and run what the relay
            # queued (they reach webhooks, mail and sockets only then), and its CPU for them;
            # waiting also keeps that work out of the next measurement.
            result["relay_drain_s"] = self.stack.wait_outbox_drained(timeout=600)
            worker_cpu = (worker.cpu_seconds() if worker else 0.0) - worker_cpu0
            result["worker_cpu_ms_per_row"] = worker_cpu * 1000 / max(result["rows"], 1)
            self.record(name, "product", result)
            for kind, side in (("raw-update", "raw_update"), ("raw-audit", "baseline")):
                schema.seed_items(base_dsn, s.sweep_rows, due_in_past=True, owner="agent", far=True)
                self.results[name].setdefault(side, [])
                self.record(name, side, self._sweepers(kind, procs, self.stack.baseline_env()))

    def _sweepers(
        self, kind: str, count: int, env: dict[str, str], seed: int = 0
    ) -> dict[str, Any]:
        """`count` sweepers started together; the first seeds the due rows (product) before
        saying ready."""
        procs = [
            subprocess.Popen(
                [PYTHON, "-m", "bench.sweeper", kind, *([str(seed)] if n == 0 and seed else [])],
                cwd=self.stack.src,
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for n in range(count)
        ]
        for proc in procs:
            assert proc.stdout is not None
            line = proc.stdout.readline().strip()
            if line != "ready":
                raise RuntimeError(f"sweeper {kind} said {line!r}")
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        outs = []
        for proc in procs:
            assert proc.stdout is not None
            outs.append(json.loads(proc.stdout.readline()))
            proc.wait(60)
        done = sum(o["done"] for o in outs)
        wall = max(o["wall_s"] for o in outs)
        cpu = sum(o["cpu_s"] for o in outs)
        pg_cpu = sum(o["pg_cpu_s"] for o in outs)
        return {
            "rows": done,
            "rows_per_s": done / wall if wall else None,
            "wall_s": wall,
            "sweeper_cpu_ms_per_row": cpu * 1000 / max(done, 1),
            "postgres_cpu_ms_per_row": pg_cpu * 1000 / max(done, 1),
            "errors": 0 if done >= self.sizes.sweep_rows else 1,
            "error_samples": []
            if done >= self.sizes.sweep_rows
            else [f"{kind}: swept {done} of {self.sizes.sweep_rows}"],
        }

    def ws_fanout(self, rep: int) -> None:
        if "ws_fanout" not in self.results:
            return
        s = self.sizes
        self.log(f"rep {rep + 1}: ws_fanout ({s.ws_sockets} sockets, {s.ws_rate}/s)")
        self.stack.wait_outbox_drained()
        url = self.stack.product_urls[0]
        spec = {
            "ws_url": url.replace("http://", "ws://"),
            # The submits go to the last web process, as a load balancer would spread them:
            # the sockets' process then carries the fan-out, not also the intake.
            "http_url": self.stack.product_urls[-1],
            "socket_token": self.tokens["reviewer_token"],
            "submit_token": self.tokens["agent_token"],
            "checkpoint": "bench-review",
            "sockets": s.ws_sockets,
            "rate": s.ws_rate,
            "seconds": s.ws_seconds,
            "drain_seconds": s.ws_drain,
        }
        web_cpu0 = self.stack.product_web[0].cpu_seconds()
        out = self._with_stdin(
            [PYTHON, "-m", "bench.wsfanout"], dict(os.environ), json.dumps(spec) + "\n"
        )
        result = json.loads(out.strip().splitlines()[-1])
        result["web_cpu_s"] = self.stack.product_web[0].cpu_seconds() - web_cpu0
        self.record("ws_fanout", "product", result)

    # -- whole run -------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        started = time.monotonic()
        meta: dict[str, Any] = {
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "mode": "quick" if self.args.quick else "full",
            "sizes": self.sizes.__dict__,
            "web_processes": self.web_processes,
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "git_commit": _git("rev-parse", "HEAD"),
            "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
            "loadavg_before": os.getloadavg(),
        }
        try:
            self.prepare()
            if self.args.explain:
                self.write_explain(self.args.explain)
            for rep in range(self.sizes.reps):
                self.http_stages(rep)
                self.sweeps(rep)
                self.ws_fanout(rep)
            if self.args.profile:
                report.write_profile_summary(
                    self.args.profile, context=getattr(self, "profile_context", "")
                )
        finally:
            meta["databases"] = [self.stack.product_db, self.stack.baseline_db]
            meta["server_logs"] = str(self.workdir)
            self.stack.stop()
            if not self.args.keep_workdir:
                import shutil

                shutil.rmtree(self.workdir, ignore_errors=True)
                meta["server_logs"] = None
        meta["loadavg_after"] = os.getloadavg()
        meta["elapsed_s"] = round(time.monotonic() - started, 1)
        return report.summarize(meta, self.results)

    def write_explain(self, path: Path) -> None:
        deep = self.sizes.page_size * self.sizes.deep_pages
        plans = self.product_cmd("explain", self.tokens["reviewer_token"], "0", str(deep))
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = [
            "# EXPLAIN (ANALYZE, BUFFERS) of the reviewer's queue (GET /api/v1/proposals/"
            "?status=pending),",
            f"# {self.sizes.queue_rows} pending rows seeded; written by `bench --explain` on "
            f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC.",
            "",
        ]
        for offset, entry in plans.items():
            label = (
                "page 1" if offset == "0" else f"page {int(offset) // 50 + 1} ({offset} rows in)"
            )
            lines += [
                f"## {label}: {entry.get('path')}",
                "",
                f"statements in the request: {len(entry['statements'])}",
                "",
                "### page query",
                "",
                entry.get("sql") or "(none found)",
                "",
                "### plan",
                "",
                entry.get("plan") or "(none)",
                "",
            ]
        path.write_text("\n".join(lines))


def _git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=False
        ).stdout.strip()
    except OSError:
        return ""


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # A SIGTERM (a CI timeout, a killed test) unwinds like Ctrl-C: the `finally` that stops
    # the servers and drops the databases runs either way.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    results = Bench(args).run()
    if args.json:  # first: a results file survives whatever happens to the table
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(report.table(results))
    if args.json:
        print(f"\nJSON: {args.json}")
    return 1 if any(p.get("errors") for p in results["paths"].values()) else 0
