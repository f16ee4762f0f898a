"""The manager's numbers: one `summary()` serves the dashboard page and
`GET /api/v1/metrics/summary/`, so both always say the same thing.

Every figure is an aggregate computed by the database (COUNT, percentile, GROUP BY); Python
only loops over the aggregated rows (buckets, checkpoints, reviewers), never over proposals.

Definitions (the README's "Dashboard" section repeats them):
- the population is the proposals of the chosen checkpoints *submitted* in the window;
  reviewer figures count the votes *cast* in the window;
- human-review rate: share not decided at submission by policy or a bypass;
- approval rate: approved / decided by reviewers (resolution `reviewers`);
- override rate: share of reviewer-decided proposals where the humans did not simply accept
  the AI's proposal: not approved, edited, changes requested at some point, or an option
  other than the most confident one chosen (the same rule as `export_feedback`);
- modification rate: approved by reviewers with a reviewer-edited revision / approved by
  reviewers;
- time to decision: decided_at - created_at of reviewer-decided proposals, p50 and p90;
- SLA compliance: share of proposals decided by reviewers or by timeout with decided_at at or
  before sla_due_at;
- calibration: reviewer-decided proposals by AI confidence in buckets 0.1 wide ([0.9, 1.0]
  includes 1.0), human approval rate per bucket; the suggested `auto_approve_at` is the lowest
  non-empty bucket's edge e such that, of the reviewer-decided proposals with confidence >= e,
  there are
  at least CALIBRATION_MIN_ITEMS and at least CALIBRATION_MIN_APPROVAL of them were approved.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, tzinfo
from typing import Any

from django.contrib.auth import get_user_model
from django.db import connection, transaction
from django.db.models import (
    Aggregate,
    CharField,
    Count,
    F,
    FloatField,
    Func,
    IntegerField,
    Q,
    QuerySet,
)
from django.db.models.expressions import RawSQL
from django.db.models.functions import Cast, Floor, Least, TruncDay, TruncHour
from django.utils import timezone

from proposals.models import (
    OPEN_STATUSES,
    Checkpoint,
    Decision,
    Proposal,
    Resolution,
    Revision,
    RevisionKind,
    Status,
    Vote,
)
from proposals.permissions import REVIEW, holders

logger = logging.getLogger(__name__)

PERIODS: dict[str, timedelta] = {
    "24h": timedelta(hours=24),
    "7d": timedelta(days=7),
    "30d": timedelta(days=30),
}
# PostgreSQL's memory per sort and hash, for the dashboard's statements alone (the default,
# 4MB, suits many small concurrent queries). At 4MB, with 100,000 proposals in 30 days, the
# timing query's re-sort of the window's decided proposals for the per-priority set wrote ~9MB
# of temporary files per request, and still did at 12MB; from 16MB it sorts in memory. 32MB
# leaves room for twice that window. (Where the temporary files stay in the page cache, as in
# bench/, sorting in memory saves no measurable time: the gain is the writes avoided.)
WORK_MEM = "32MB"
CALIBRATION_MIN_ITEMS = 50
CALIBRATION_MIN_APPROVAL = 0.99
MAX_CUSTOM_DAYS = 366


@dataclass(frozen=True)
class Window:
    period: str  # "24h" | "7d" | "30d" | "custom"
    start: datetime
    end: datetime

    @property
    def bucket(self) -> str:
        return "hour" if self.end - self.start <= timedelta(days=2) else "day"

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> Window:
        """`period=24h|7d|30d` (default 7d) or `period=custom&from=YYYY-MM-DD&to=YYYY-MM-DD`
        (both days included). ValueError with a readable message on bad input."""
        period = str(params.get("period") or "7d")
        now = timezone.now()
        if period in PERIODS:
            return cls(period=period, start=now - PERIODS[period], end=now)
        if period != "custom":
            raise ValueError(f"Unknown period {period!r}: use 24h, 7d, 30d or custom.")
        try:
            first = date.fromisoformat(str(params.get("from") or ""))
            last = date.fromisoformat(str(params.get("to") or ""))
        except ValueError:
            raise ValueError("A custom period needs from= and to= as YYYY-MM-DD.") from None
        if last < first:
            raise ValueError("The custom period ends before it starts.")
        if (last - first).days > MAX_CUSTOM_DAYS:
            raise ValueError(f"A custom period covers at most {MAX_CUSTOM_DAYS} days.")
        tz = timezone.get_current_timezone()
        start = datetime.combine(first, time.min, tzinfo=tz)
        end = datetime.combine(last + timedelta(days=1), time.min, tzinfo=tz)
        return cls(period="custom", start=start, end=end)


# --- database expressions ------------------------------------------------------------------


class SecondsBetween(Func):
    """Seconds from the first datetime to the second, as a float, computed in SQL."""

    output_field = FloatField()
    arity = 2

    def as_sql(self, compiler: Any, conn: Any, **extra: Any) -> Any:  # type: ignore[override]
        first, second = self.source_expressions
        sql1, params1 = compiler.compile(first)
        sql2, params2 = compiler.compile(second)
        if conn.vendor == "sqlite":
            # julianday() parses the ISO text Django stores; days -> seconds.
            return f"((julianday({sql2}) - julianday({sql1})) * 86400.0)", (*params2, *params1)
        # date_part stays in double precision; EXTRACT returns numeric (PostgreSQL 14+), whose
        # arithmetic made the percentiles' sort keys cost more than the whole scan.
        return f"date_part('epoch', {sql2} - {sql1})", (*params2, *params1)


class _SqlitePercentile:
    """percentile_cont for SQLite (embedded mode), registered on the connection: SQLite runs
    it inside the query like any aggregate."""

    def __init__(self) -> None:
        self.values: list[float] = []
        self.fraction = 0.5

    def step(self, value: float | None, fraction: float) -> None:
        if value is not None:
            self.values.append(float(value))
        self.fraction = fraction

    def finalize(self) -> float | None:
        if not self.values:
            return None
        values = sorted(self.values)
        position = self.fraction * (len(values) - 1)
        low = int(position)
        high = min(low + 1, len(values) - 1)
        return values[low] + (values[high] - values[low]) * (position - low)


class Percentile(Aggregate):
    """Continuous percentile (PostgreSQL's percentile_cont) of a numeric expression."""

    function = "PERCENTILE_CONT"
    name = "Percentile"
    output_field = FloatField()
    template = "%(function)s(%(fraction)s) WITHIN GROUP (ORDER BY %(expressions)s)"

    def __init__(self, expression: Any, fraction: float, **extra: Any) -> None:
        if not 0 <= fraction <= 1:
            raise ValueError("fraction must be within 0..1")
        super().__init__(expression, fraction=float(fraction), **extra)

    def as_sqlite(self, compiler: Any, conn: Any, **extra: Any) -> Any:  # type: ignore[override]
        conn.ensure_connection()
        conn.connection.create_aggregate("hitl_percentile", 2, _SqlitePercentile)
        # On a copy, not as keyword arguments: Aggregate.as_sql passes its own template= when
        # there is a FILTER, and a second one is a TypeError.
        sqlite = self.copy()
        sqlite.function = "hitl_percentile"
        sqlite.template = "%(function)s(%(expressions)s, %(fraction)s)"
        return super(Percentile, sqlite).as_sql(compiler, conn, **extra)


def _top_option_sql() -> str:
    """The key of the AI's most confident option (the first on ties), or NULL. Correlated
    with the outer query's proposals_proposal row (Proposal's table)."""
    if connection.vendor == "postgresql":
        return (
            "CASE WHEN proposals_proposal.options = '[]'::jsonb THEN NULL ELSE "
            "(SELECT o.value->>'key' FROM jsonb_array_elements("
            "CASE WHEN jsonb_typeof(proposals_proposal.options) = 'array' "
            "THEN proposals_proposal.options ELSE '[]'::jsonb END"
            ") WITH ORDINALITY AS o(value, idx) ORDER BY CASE WHEN "
            "jsonb_typeof(o.value->'confidence') = 'number' THEN (o.value->>'confidence')::float "
            "ELSE 0 END DESC, o.idx LIMIT 1) END"
        )
    return (
        "CASE WHEN json_array_length(proposals_proposal.options) = 0 THEN NULL ELSE "
        "(SELECT json_extract(o.value, '$.key') FROM json_each(proposals_proposal.options) AS o "
        "ORDER BY COALESCE(json_extract(o.value, '$.confidence'), 0) DESC, o.key LIMIT 1) END"
    )


# --- the summary ---------------------------------------------------------------------------


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _population(checkpoints: Iterable[Checkpoint], window: Window) -> QuerySet[Proposal]:
    return Proposal.objects.filter(
        checkpoint_id__in=[c.pk for c in checkpoints],
        created_at__gte=window.start,
        created_at__lt=window.end,
    ).order_by()


# What COUNT counts: a NOT NULL column every aggregate reads anyway (Proposal's and Vote's);
# the id would widen each row that the grouped percentiles sort (COUNT(*) takes no FILTER).
ROWS = "created_at"
HUMAN = Q(resolution=Resolution.REVIEWERS, status__in=[Status.APPROVED, Status.REJECTED])
BY_REVIEWERS = Q(resolution=Resolution.REVIEWERS)
DECIDED_FOR_SLA = Q(resolution__in=[Resolution.REVIEWERS, Resolution.TIMEOUT])
COUNTS = ("submitted", "open", "by_policy", "human", "human_approved", "escalations", "timeouts")


def _decision_seconds() -> SecondsBetween:
    return SecondsBetween(F("created_at"), F("decided_at"))


def _timing_aggregates() -> dict[str, Any]:
    """Time to decision and SLA compliance of a group (the whole window, a checkpoint, a
    priority). p50 and p90 share one sort: same input, same filter."""
    return {
        "decided": Count(ROWS, filter=BY_REVIEWERS),
        "p50_seconds": Percentile(_decision_seconds(), 0.5, filter=BY_REVIEWERS),
        "p90_seconds": Percentile(_decision_seconds(), 0.9, filter=BY_REVIEWERS),
        "sla_decided": Count(ROWS, filter=DECIDED_FOR_SLA),
        "sla_met": Count(ROWS, filter=DECIDED_FOR_SLA & Q(decided_at__lte=F("sla_due_at"))),
    }


def _grouped(
    qs: QuerySet[Proposal], aggregates: Mapping[str, Any], sets: list[tuple[str, ...]]
) -> list[dict[str, Any]]:
    """The `aggregates` of `qs` grouped by each of `sets` (tuples of field names), as rows
    holding every field named: one outside the row's set is None. On PostgreSQL one pass,
    GROUPING SETS in place of the GROUP BY Django writes; elsewhere a query per set, the
    same rows."""
    names = list(dict.fromkeys(name for keys in sets for name in keys))
    if connection.vendor != "postgresql":
        rows = []
        for keys in sets:
            found = (
                qs.values(*keys).annotate(**aggregates).order_by()
                if keys
                else [qs.aggregate(**aggregates)]
            )
            rows += [{**dict.fromkeys(names), **row} for row in found]
        return rows
    query = qs.values(*names).annotate(**aggregates).order_by().query
    compiler = query.get_compiler(connection=connection)
    sql, params = compiler.as_sql()
    position = {alias: index for index, (_, _, alias) in enumerate(compiler.select, start=1)}
    grouped, _, _ = sql.rpartition(" GROUP BY ")
    sets_sql = ", ".join(
        "(" + ", ".join(str(position[name]) for name in keys) + ")" for keys in sets
    )
    with connection.cursor() as cursor:
        cursor.execute(f"{grouped} GROUP BY GROUPING SETS ({sets_sql})", params)
        found = cursor.fetchall()
    converters = compiler.get_converters([column for column, _, _ in compiler.select])
    if converters:
        found = list(compiler.apply_converters(found, converters))
    return [dict(zip(position, row, strict=True)) for row in found]


def _per_checkpoint(qs: QuerySet[Proposal]) -> list[dict[str, Any]]:
    """One pass over the window for every count, grouped by checkpoint: the covering index
    (proposal_dashboard_idx) yields the rows in checkpoint order, so nothing is sorted before
    grouping. The window's totals are the sums of these rows. (Counting these with volumes
    and calibration in one GROUPING SETS pass cost more: the database sorted for the sets,
    beyond its memory, rather than hash them.)"""
    return list(
        qs.values("checkpoint_id")
        .annotate(
            submitted=Count(ROWS),
            open=Count(ROWS, filter=Q(status__in=OPEN_STATUSES)),
            by_policy=Count(ROWS, filter=Q(resolution__in=[Resolution.POLICY, Resolution.BYPASS])),
            human=Count(ROWS, filter=HUMAN),
            human_approved=Count(ROWS, filter=HUMAN & Q(status=Status.APPROVED)),
            escalations=Count(ROWS, filter=Q(escalated_at__isnull=False)),
            timeouts=Count(ROWS, filter=Q(resolution=Resolution.TIMEOUT)),
        )
        .order_by("checkpoint_id")
    )


def _overridden_approved(qs: QuerySet[Proposal]) -> tuple[int, int]:
    """(overridden, modified) among the proposals approved by reviewers (the rejected ones,
    overridden too, are counted by `_per_checkpoint`), without a pass over them: those edited
    or sent back come from the few revisions and votes that say so (partial indexes), and an
    option other than the top one is looked for only where there are options (partial
    index)."""
    edited = Revision.objects.filter(kind=RevisionKind.EDITED).values("proposal_id").order_by()
    asked_changes = (
        Vote.objects.filter(decision=Decision.REQUEST_CHANGES).values("proposal_id").order_by()
    )
    reworked = edited.union(asked_changes)
    approved = qs.filter(HUMAN, status=Status.APPROVED)
    row = approved.filter(pk__in=reworked).aggregate(
        reworked=Count(ROWS), modified=Count(ROWS, filter=Q(pk__in=edited))
    )
    other_option = (
        approved.exclude(options=[])
        .exclude(pk__in=reworked)
        .annotate(top_option=RawSQL(_top_option_sql(), (), output_field=CharField()))  # noqa: S611
        .filter(top_option__isnull=False)
        .exclude(selected_option=F("top_option"))
        .count()
    )
    return row["reworked"] + other_option, row["modified"]


def _rates(
    counts: Mapping[str, int], timing: Mapping[str, Any], overridden: int, modified: int
) -> dict[str, Any]:
    return {
        "human_review_rate": _rate(counts["submitted"] - counts["by_policy"], counts["submitted"]),
        "approval_rate": _rate(counts["human_approved"], counts["human"]),
        "override_rate": _rate(overridden, counts["human"]),
        "modification_rate": _rate(modified, counts["human_approved"]),
        "sla_compliance": _rate(timing["sla_met"], timing["sla_decided"]),
    }


def _timing(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "decided": row["decided"],
        "p50_seconds": _round(row["p50_seconds"]),
        "p90_seconds": _round(row["p90_seconds"]),
        "sla_compliance": _rate(row["sla_met"], row["sla_decided"]),
        "sla_met": row["sla_met"],
        "sla_decided": row["sla_decided"],
    }


def _timed(qs: QuerySet[Proposal]) -> list[dict[str, Any]]:
    """Time to decision and SLA compliance per checkpoint, per priority and of the whole
    window (percentiles do not add up), in one pass over the proposals decided by reviewers
    or by timeout, the ones these figures read. (Three queries cost a scan each, and the
    per-checkpoint percentiles sorted inside the counts' pass.)"""
    return _grouped(
        qs.filter(DECIDED_FOR_SLA), _timing_aggregates(), [("checkpoint_id",), ("priority",), ()]
    )


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 1)


def _volumes(qs: QuerySet[Proposal], window: Window, tz: tzinfo) -> list[dict[str, Any]]:
    trunc = TruncHour if window.bucket == "hour" else TruncDay
    rows = (
        qs.annotate(bucket=trunc("created_at", tzinfo=tz))
        .values("bucket", "status", "resolution")
        .annotate(count=Count(ROWS))
        .order_by("bucket", "status", "resolution")
    )
    return [
        {
            "bucket": row["bucket"].isoformat(),
            "status": row["status"],
            "resolution": row["resolution"],
            "count": row["count"],
        }
        for row in rows
    ]


def _calibration_counts(qs: QuerySet[Proposal]) -> dict[int, dict[int, tuple[int, int]]]:
    """(decided, approved) by reviewers per checkpoint id and confidence bucket (0..9)."""
    bucket = Cast(Least(Floor(F("confidence") * 10), 9), IntegerField())
    rows = (
        qs.filter(HUMAN, confidence__isnull=False)
        .annotate(bucket=bucket)
        .values("checkpoint_id", "bucket")
        .annotate(decided=Count(ROWS), approved=Count(ROWS, filter=Q(status=Status.APPROVED)))
        .order_by("checkpoint_id", "bucket")
    )
    by_checkpoint: dict[int, dict[int, tuple[int, int]]] = {}
    for row in rows:
        by_checkpoint.setdefault(row["checkpoint_id"], {})[int(row["bucket"])] = (
            row["decided"],
            row["approved"],
        )
    return by_checkpoint


def _calibration(
    by_checkpoint: Mapping[int, Mapping[int, tuple[int, int]]], checkpoints: list[Checkpoint]
) -> list[dict[str, Any]]:
    out = []
    for checkpoint in checkpoints:
        counts = by_checkpoint.get(checkpoint.pk, {})
        buckets = []
        for index in range(10):
            decided, approved = counts.get(index, (0, 0))
            buckets.append(
                {
                    "lower": index / 10,
                    "upper": (index + 1) / 10,
                    "decided": decided,
                    "approved": approved,
                    "approval_rate": _rate(approved, decided),
                }
            )
        out.append(
            {
                "checkpoint": checkpoint.slug,
                "current_auto_approve_at": checkpoint.auto_approve_at,
                "suggested_auto_approve_at": suggest_auto_approve_at(
                    [counts.get(i, (0, 0)) for i in range(10)]
                ),
                "buckets": buckets,
            }
        )
    return out


def suggest_auto_approve_at(
    buckets: list[tuple[int, int]],
    *,
    min_items: int = CALIBRATION_MIN_ITEMS,
    min_approval: float = CALIBRATION_MIN_APPROVAL,
) -> float | None:
    """`buckets[i]` = (decided, approved) for confidence in [i/10, (i+1)/10). The lowest edge
    from which, cumulatively upward, humans approved >= min_approval of >= min_items; only
    edges of non-empty buckets count."""
    for index in range(len(buckets)):
        if not buckets[index][0]:
            # An edge whose own bucket is empty says nothing about that range: without this,
            # 0.0 would "qualify" whenever only the top bucket has data.
            continue
        decided = sum(d for d, _ in buckets[index:])
        approved = sum(a for _, a in buckets[index:])
        if decided >= min_items and approved >= min_approval * decided:
            return index / 10
    return None


def _reviewers(checkpoints: list[Checkpoint], window: Window) -> list[dict[str, Any]]:
    ids = [c.pk for c in checkpoints]
    # From the votes' index alone (vote_cast_idx): each vote carries its proposal's checkpoint
    # and its review time. Grouped by id alone: joining users first would look one up per vote.
    rows = list(
        Vote.objects.filter(
            checkpoint_id__in=ids, created_at__gte=window.start, created_at__lt=window.end
        )
        .values("reviewer_id")
        .annotate(
            decisions=Count(ROWS),
            approvals=Count(ROWS, filter=Q(decision=Decision.APPROVE)),
            median_review_seconds=Percentile(F("review_seconds"), 0.5),
        )
        .order_by()
    )
    names = dict(
        get_user_model()
        .objects.filter(pk__in=[row["reviewer_id"] for row in rows])
        .values_list("pk", "username")
    )
    rows.sort(key=lambda row: (-row["decisions"], names[row["reviewer_id"]]))
    # Load: what each reviewer holds now, against the open work they are eligible for.
    open_by_checkpoint = dict(
        Proposal.objects.filter(checkpoint_id__in=ids, status=Status.PENDING)
        .order_by()
        .values_list("checkpoint_id")
        .annotate(n=Count(ROWS))
    )
    claimed = dict(
        Proposal.objects.filter(
            checkpoint_id__in=ids, status__in=OPEN_STATUSES, claimed_by__isnull=False
        )
        .order_by()
        .values_list("claimed_by_id")
        .annotate(n=Count(ROWS))
    )
    eligible: dict[int, int] = {}
    for checkpoint in checkpoints:  # one query per checkpoint, not per proposal
        for user_id in holders(checkpoint, REVIEW).values_list("pk", flat=True):
            eligible[user_id] = eligible.get(user_id, 0) + open_by_checkpoint.get(checkpoint.pk, 0)
    out = [
        {
            "reviewer": names[row["reviewer_id"]],
            "decisions": row["decisions"],
            "approvals": row["approvals"],
            "median_review_seconds": _round(row["median_review_seconds"]),
            "claimed": claimed.get(row["reviewer_id"], 0),
            "open_eligible": eligible.get(row["reviewer_id"], 0),
        }
        for row in rows
    ]
    return out


# --- one snapshot, read on several connections at once ----------------------------------------

Jobs = Mapping[str, Callable[[], Any]]

# The summary's statements in three lanes of about the same database time (100,000 proposals
# in 30 days: the timing pass alone is a third of it): the request's own connection runs the
# first, a connection each (in a thread of its own) the others, all in one snapshot. Two lanes
# (timing and calibration on the second) took about 20 % longer; a lane per statement would
# hold more connections for little more.
LANES: tuple[tuple[str, ...], ...] = (
    ("per_checkpoint", "overridden", "reviewers"),
    ("timed",),
    ("volumes", "calibration"),
)


def _setup_sql(snapshot: str | None = None) -> str:
    statements = ["SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"]
    if snapshot is not None:
        # The identifier pg_export_snapshot() gave ([0-9A-F-]): SET takes no parameters.
        statements.append(f"SET TRANSACTION SNAPSHOT '{snapshot}'")
    statements.append(f"SET LOCAL work_mem = '{WORK_MEM}'")
    return "; ".join(statements)


@contextmanager
def _one_snapshot() -> Iterator[str | None]:
    """On PostgreSQL, the dashboard's statements in one REPEATABLE READ, READ ONLY transaction:
    every figure counts the same proposals and votes, even while decisions commit between two
    statements (each would otherwise see its own), with WORK_MEM for their sorts (SET LOCAL:
    until the transaction ends). Both settings go in one round trip. Yields the snapshot's
    identifier (pg_export_snapshot) for other connections to read the same rows (SET
    TRANSACTION SNAPSHOT), valid until this transaction ends. Inside a caller's
    transaction (the tests') its isolation level stands, work_mem stays raised until it ends,
    and nothing is exported: another connection would not see the caller's uncommitted rows."""
    if connection.vendor != "postgresql":
        yield None
        return
    outermost = not connection.in_atomic_block
    with transaction.atomic():
        setup = _setup_sql() if outermost else f"SET LOCAL work_mem = '{WORK_MEM}'"
        snapshot = None
        with connection.cursor() as cursor:
            cursor.execute(setup)
            if outermost:
                cursor.execute("SELECT pg_export_snapshot()")
                (snapshot,) = cursor.fetchone()
        yield snapshot


class _Handoff:
    """Jobs offered to another thread's connection, in the snapshot `snapshot`. Whichever
    thread claims them first runs them: the helper once it holds a connection, or the
    request's thread when it is done with its own lane and the helper has not started. So a
    pool with no connection to spare (every request holding one, waiting for another)
    never deadlocks: the request runs the lane itself, as without a helper."""

    def __init__(self, jobs: Jobs, snapshot: str) -> None:
        self.jobs = jobs
        self.snapshot = snapshot
        self._lock = threading.Lock()
        self._claimed = False
        self._finished = threading.Event()
        self._results: dict[str, Any] = {}
        self._error: BaseException | None = None
        self._helper = threading.Thread(target=self._help, name="dashboard-lane", daemon=True)

    def start(self) -> None:
        self._helper.start()

    def _claim(self) -> bool:
        with self._lock:
            claimed, self._claimed = self._claimed, True
            return not claimed

    def _help(self) -> None:
        # This thread's own Django connection (from the pool when configured), closed (back
        # to the pool) before the request's thread hears the results.
        try:
            try:
                connection.ensure_connection()
            except Exception as error:
                logger.warning("Dashboard lane left to the request's thread: %s", error)
                return
            if not self._claim():
                return
            try:
                with transaction.atomic():
                    with connection.cursor() as cursor:
                        cursor.execute(_setup_sql(self.snapshot))
                    self._results = _run(self.jobs)
            except BaseException as error:  # handed to the request's thread
                self._error = error
        finally:
            connection.close()
            self._finished.set()

    def results(self) -> dict[str, Any]:
        if self._claim():
            return _run(self.jobs)
        self._finished.wait()
        if self._error is not None:
            raise self._error
        return self._results


def _run(jobs: Jobs) -> dict[str, Any]:
    return {name: job() for name, job in jobs.items()}


def _run_in_one_snapshot(jobs: Jobs) -> dict[str, Any]:
    """Every job's result, all read in one snapshot: on PostgreSQL in LANES at once (a
    connection each, one exported snapshot), elsewhere (SQLite, the embedded mode, or inside
    a caller's transaction) one after the other. The helpers' connections are closed (back to
    the pool) before this returns."""
    with _one_snapshot() as snapshot:
        if snapshot is None:
            return _run(jobs)
        own, *others = LANES
        handoffs = [_Handoff({name: jobs[name] for name in lane}, snapshot) for lane in others]
        for handoff in handoffs:
            handoff.start()
        results = _run({name: jobs[name] for name in own})
        for handoff in handoffs:
            results.update(handoff.results())
        return results


def summary(checkpoints: list[Checkpoint], window: Window) -> dict[str, Any]:
    qs = _population(checkpoints, window)
    tz = timezone.get_current_timezone()  # the request's: the other lane's thread has its own
    found = _run_in_one_snapshot(
        {
            "per_checkpoint": lambda: _per_checkpoint(qs),
            "overridden": lambda: _overridden_approved(qs),
            "timed": lambda: _timed(qs),
            "volumes": lambda: _volumes(qs, window, tz),
            "reviewers": lambda: _reviewers(checkpoints, window),
            "calibration": lambda: _calibration_counts(qs),
        }
    )
    counts = {key: sum(row[key] for row in found["per_checkpoint"]) for key in COUNTS}
    timed = found["timed"]
    (overall,) = [row for row in timed if row["checkpoint_id"] is None and row["priority"] is None]
    timed_checkpoints = sorted(
        (row for row in timed if row["checkpoint_id"] is not None),
        key=lambda row: row["checkpoint_id"],
    )
    timed_priorities = sorted(
        (row for row in timed if row["priority"] is not None), key=lambda row: row["priority"]
    )
    approved_overridden, modified = found["overridden"]
    overridden = counts["human"] - counts["human_approved"] + approved_overridden
    by_checkpoint = {c.pk: c.slug for c in checkpoints}
    return {
        "window": {
            "period": window.period,
            "start": window.start.isoformat(),
            "end": window.end.isoformat(),
            "bucket": window.bucket,
        },
        "checkpoints": [c.slug for c in checkpoints],
        "totals": {
            "submitted": counts["submitted"],
            "open": counts["open"],
            "decided_by_policy": counts["by_policy"],
            "decided_by_reviewers": counts["human"],
            "escalations": counts["escalations"],
            "timeouts": counts["timeouts"],
        },
        "rates": _rates(counts, overall, overridden, modified),
        "time_to_decision": {
            "p50_seconds": _round(overall["p50_seconds"]),
            "p90_seconds": _round(overall["p90_seconds"]),
            "decided": counts["human"],
            "by_checkpoint": [
                {
                    "checkpoint": by_checkpoint.get(row["checkpoint_id"], "?"),
                    "checkpoint_id": row["checkpoint_id"],
                    **_timing(row),
                }
                for row in timed_checkpoints
            ],
            "by_priority": [
                {"priority": row["priority"], **_timing(row)} for row in timed_priorities
            ],
        },
        "volumes": found["volumes"],
        "reviewers": found["reviewers"],
        "calibration": _calibration(found["calibration"], checkpoints),
    }


# --- for the page's charts -----------------------------------------------------------------

SERIES_ORDER = [
    ("approved", "reviewers"),
    ("approved", "policy"),
    ("approved", "timeout"),
    ("approved", "bypass"),
    ("rejected", "reviewers"),
    ("rejected", "policy"),
    ("rejected", "timeout"),
    ("rejected", "revoked"),
    ("cancelled", "cancelled"),
    ("changes_requested", ""),
    ("pending", ""),
]


def chart_data(data: dict[str, Any]) -> dict[str, Any]:
    """What static/hitl/dashboard.js draws: plain lists, no logic left for the browser."""
    labels = sorted({row["bucket"] for row in data["volumes"]})
    index = {label: i for i, label in enumerate(labels)}
    series: dict[tuple[str, str], list[int]] = {}
    for row in data["volumes"]:
        key = (row["status"], row["resolution"])
        series.setdefault(key, [0] * len(labels))[index[row["bucket"]]] += row["count"]
    ordered = [k for k in SERIES_ORDER if k in series] + sorted(
        k for k in series if k not in SERIES_ORDER
    )
    return {
        "volumes": {
            "labels": labels,
            "bucket": data["window"]["bucket"],
            "series": [
                {
                    "name": f"{status} · {resolution}" if resolution else status,
                    "status": status,
                    "values": series[(status, resolution)],
                }
                for status, resolution in ordered
            ],
        },
        "calibration": [
            {
                "checkpoint": item["checkpoint"],
                "labels": [f"{b['lower']:.1f}" for b in item["buckets"]],
                "rates": [b["approval_rate"] for b in item["buckets"]],
                "counts": [b["decided"] for b in item["buckets"]],
            }
            for item in data["calibration"]
        ],
    }
