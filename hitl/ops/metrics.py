"""Prometheus metrics (prometheus-client in multiprocess mode).

Two kinds of series, kept apart on purpose:

* Counters and histograms of things that happened (decisions, votes, timeouts, webhook
  attempts, HTTP requests). They count committed work only: the relay increments them after
  the commit of the transaction that claimed the outbox events (`relayed`), once per event,
  since an event is claimed once; a rolled-back decision writes no event and counts nothing.
  Each process writes its own files under PROMETHEUS_MULTIPROC_DIR; a scrape of any web
  process sums every process's files, so N web processes and M workers report one truth.
* State (pending work, outbox backlog, audit chain length, heartbeats, override alerts) is
  read at scrape time by `StateCollector`, from cheap indexed queries and the heartbeat keys,
  so it is never stale and never double counted across processes.

Without PROMETHEUS_MULTIPROC_DIR each process keeps its metrics to itself (fine for one
process; `up`, the deploy/ units and the tests set it).
"""

from __future__ import annotations

import atexit
import collections
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import transaction
from django.db.models import Count, Max, Min
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from notifications.models import OutboxEvent

logger = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# --- things that happened -----------------------------------------------------------------

DECISIONS = Counter(
    "nihil_decisions",
    "Proposals that reached a final state, by outcome (status) and resolution.",
    ["checkpoint", "outcome", "resolution"],
)
TIME_TO_DECISION = Histogram(
    "nihil_time_to_decision_seconds",
    "Submission to decision, for decisions made by reviewers (resolution 'reviewers').",
    ["checkpoint"],
    buckets=(60, 300, 900, 1800, 3600, 4 * 3600, 8 * 3600, 86400, 3 * 86400, 7 * 86400),
)
SLA_BREACHES = Counter(
    "nihil_sla_breaches", "Proposals still open at their SLA deadline.", ["checkpoint", "priority"]
)
ESCALATIONS = Counter("nihil_escalations", "Proposals escalated.", ["checkpoint"])
TIMEOUTS = Counter(
    "nihil_timeouts", "Proposals decided by their timeout, by outcome.", ["checkpoint", "outcome"]
)
REMINDERS = Counter("nihil_reminders", "Reminders sent to reviewers.", ["checkpoint"])
VOTES = Counter("nihil_votes", "Votes cast, by decision.", ["checkpoint", "decision"])
OVERRIDE_CROSSINGS = Counter(
    "nihil_override_rate_crossings",
    "Override-rate alerts raised (state=high) and cleared (state=normal).",
    ["checkpoint", "state"],
)
WEBHOOK_DELIVERIES = Counter(
    "nihil_webhook_deliveries",
    "Webhook delivery attempts, by result: success (2xx), http_error (another status), "
    "network_error (no response), refused (unsafe target or no signing secret).",
    ["result"],
)
WEBHOOK_DURATION = Histogram(
    "nihil_webhook_delivery_duration_seconds",
    "Duration of webhook delivery attempts, by result.",
    ["result"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 30),
)
LIVE_OVERFLOW = Counter(
    "nihil_live_messages_dropped",
    "Websocket messages dropped because a socket's backlog (HITL_LIVE_SOCKET_BACKLOG) was "
    "full; each drop is replayed to the socket from the live stream (notifications.live).",
)
HTTP_DURATION = Histogram(
    "nihil_http_request_duration_seconds",
    "HTTP request latency by view (URL name), method and status class.",
    ["view", "method", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)


def never_raise(what: str, record: Callable[[], object]) -> None:
    """Metrics are a by-product: a full disk or a broken multiprocess directory must never
    fail the request, the delivery or the relay that is being measured."""
    try:
        record()
    except Exception:
        logger.warning("metrics: could not record %s", what, exc_info=True)


DECISION_TOPICS = frozenset(
    {"proposal.approved", "proposal.rejected", "proposal.cancelled", "proposal.revoked"}
)
HUMAN_RESOLUTIONS = frozenset({"reviewers", "revoked"})  # what the override rate looks at


def relayed(events: Sequence[OutboxEvent]) -> None:
    """The relay's hook, called inside the transaction that claims `events`: once that
    commits (and only then), count them and re-evaluate the override rate of every checkpoint
    that got a human decision. A relay whose transaction rolls back counts nothing, and the
    next relay that claims the same events counts them then. Counted per series per batch
    (one increment by n, not n increments: a label lookup and a write each, ~15% of the
    relay's CPU for a sweep's batch of timeouts)."""
    counts: collections.Counter[tuple[Counter, tuple[str, ...]]] = collections.Counter()
    decided_after: list[tuple[str, float]] = []  # (checkpoint, seconds open) by reviewers
    human_decided: set[int] = set()
    for event in events:
        topic, data = event.topic, event.payload
        cp = str(data.get("checkpoint") or "")
        if topic in DECISION_TOPICS:
            outcome, resolution = str(data.get("status", "")), str(data.get("resolution", ""))
            counts[DECISIONS, (cp, outcome, resolution)] += 1
            if resolution == "timeout":
                counts[TIMEOUTS, (cp, outcome)] += 1
            if resolution == "reviewers" and event.proposal is not None:
                opened = event.created_at - event.proposal.created_at
                decided_after.append((cp, max(0.0, opened.total_seconds())))
            if data.get("resolution") in HUMAN_RESOLUTIONS and event.checkpoint_id is not None:
                human_decided.add(event.checkpoint_id)
        elif topic == "proposal.vote_cast":
            counts[VOTES, (cp, str(data.get("decision", "")))] += 1
        elif topic == "proposal.sla_breached":
            counts[SLA_BREACHES, (cp, str(data.get("priority", "")))] += 1
        elif topic == "proposal.escalated":
            counts[ESCALATIONS, (cp,)] += 1
        elif topic == "proposal.reminder":
            counts[REMINDERS, (cp,)] += 1
    transaction.on_commit(
        partial(_after_relay_commit, counts, decided_after, human_decided), robust=True
    )


def _after_relay_commit(
    counts: collections.Counter[tuple[Counter, tuple[str, ...]]],
    decided_after: list[tuple[str, float]],
    human_decided: set[int],
) -> None:
    for (counter, labels), n in counts.items():
        never_raise("relayed events", partial(_increment, counter, labels, n))
    for cp, seconds in decided_after:
        never_raise("time to decision", partial(_observe, cp, seconds))
    if human_decided:
        from hitl.ops import override

        for checkpoint_id in sorted(human_decided):
            try:
                override.evaluate(checkpoint_id)
            except Exception:  # the alert must never stop deliveries; the next decision retries
                logger.exception("override-rate evaluation failed for checkpoint %s", checkpoint_id)


def _increment(counter: Counter, labels: tuple[str, ...], n: int) -> None:
    counter.labels(*labels).inc(n)


def _observe(cp: str, seconds: float) -> None:
    TIME_TO_DECISION.labels(cp).observe(seconds)


def webhook_attempt(status_code: int | None, error: str, duration_ms: int) -> None:
    """One recorded delivery attempt (notifications.webhooks, after its transaction)."""
    if status_code is not None:
        result = "success" if 200 <= status_code < 300 else "http_error"
    elif error.startswith("refused"):
        result = "refused"
    else:
        result = "network_error"
    seconds = duration_ms / 1000
    never_raise("a webhook attempt", lambda: WEBHOOK_DELIVERIES.labels(result).inc())
    never_raise("a webhook attempt", lambda: WEBHOOK_DURATION.labels(result).observe(seconds))


# --- HTTP latency -------------------------------------------------------------------------

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class RequestMetricsMiddleware:
    """First in MIDDLEWARE, so the time covers every other middleware too. Labelled by URL
    name (or route), never by path: paths carry ids and would make a series per proposal."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        response = self.get_response(request)
        match = getattr(request, "resolver_match", None)
        view = (match.view_name or match.route or "unnamed") if match else "unmatched"
        method = request.method if request.method in _METHODS else "other"
        status = f"{response.status_code // 100}xx"
        elapsed = time.perf_counter() - started
        never_raise(
            "a request", lambda: HTTP_DURATION.labels(view, method, status).observe(elapsed)
        )
        return response


# --- state, read at scrape time -------------------------------------------------------------


def _gauge(name: str, doc: str, labels: Sequence[str] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=list(labels))


class StateCollector(Collector):
    """Gauges computed from the database and Redis at each scrape. A source that fails
    reports nihil_scrape_source_up 0 and its series are left out, rather than failing the
    whole scrape (the counters are still worth having when the database is down)."""

    def collect(self) -> Iterable[Metric]:
        up = _gauge(
            "nihil_scrape_source_up",
            "1 when this scrape could read the source (database, redis).",
            ["source"],
        )
        try:
            yield from self._database()
        except Exception:
            logger.warning("metrics: database state unavailable", exc_info=True)
            up.add_metric(["database"], 0)
        else:
            up.add_metric(["database"], 1)
        try:
            yield from self._heartbeats()
        except Exception:
            logger.warning("metrics: heartbeats unavailable", exc_info=True)
            up.add_metric(["redis"], 0)
        else:
            up.add_metric(["redis"], 1)
        yield up

    def _database(self) -> Iterable[Metric]:
        from audit.models import AuditEvent
        from hitl.ops.models import OverrideAlert
        from notifications.models import OutboxEvent
        from proposals.models import OPEN_STATUSES, Checkpoint, Priority, Proposal, Status

        now = timezone.now()
        slugs = dict(Checkpoint.objects.values_list("pk", "slug"))
        # Open work only, so the partial indexes on open proposals serve it (the filter is
        # written exactly as their condition); decided history is never scanned.
        counts = {
            (row["checkpoint_id"], row["priority"], row["status"]): row["n"]
            for row in Proposal.objects.filter(status__in=OPEN_STATUSES)
            .values("checkpoint_id", "priority", "status")
            .annotate(n=Count("id"))
            .order_by()
        }
        families = {
            Status.PENDING: _gauge(
                "nihil_proposals_pending",
                "Proposals waiting for reviewers, by checkpoint and priority.",
                ["checkpoint", "priority"],
            ),
            Status.CHANGES_REQUESTED: _gauge(
                "nihil_proposals_changes_requested",
                "Proposals waiting for the submitter's revision, by checkpoint and priority.",
                ["checkpoint", "priority"],
            ),
        }
        for checkpoint_id, slug in sorted(slugs.items(), key=lambda item: item[1]):
            for priority in Priority.values:
                for status, family in families.items():
                    family.add_metric(
                        [slug, priority], counts.get((checkpoint_id, priority, status), 0)
                    )
        yield from families.values()

        backlog = OutboxEvent.objects.filter(dispatched_at__isnull=True).aggregate(
            n=Count("id"), oldest=Min("created_at")
        )
        yield GaugeMetricFamily(
            "nihil_outbox_backlog", "Outbox events not yet relayed.", value=backlog["n"]
        )
        oldest = backlog["oldest"]
        yield GaugeMetricFamily(
            "nihil_outbox_oldest_undispatched_age_seconds",
            "Age of the oldest outbox event not yet relayed (0 when none).",
            value=max(0.0, (now - oldest).total_seconds()) if oldest else 0.0,
        )
        chain = AuditEvent.objects.aggregate(seq=Max("seq"))["seq"] or 0
        yield GaugeMetricFamily(
            "nihil_audit_chain_length", "Events in the audit hash chain (its last seq).", chain
        )

        rate = _gauge(
            "nihil_override_rate",
            "Share of the last HITL_OVERRIDE_WINDOW human decisions that differ from the AI's "
            "recommendation, at the last evaluation.",
            ["checkpoint"],
        )
        active = _gauge(
            "nihil_override_alert_active", "1 while the override rate is high.", ["checkpoint"]
        )
        threshold = _gauge(
            "nihil_override_threshold", "The override-rate alert's threshold.", ["checkpoint"]
        )
        default = settings.HITL_OVERRIDE_THRESHOLD
        for alert in OverrideAlert.objects.all():
            label = slugs.get(alert.checkpoint_id)
            if label is None:
                continue
            if alert.rate is not None:
                rate.add_metric([label], alert.rate)
            active.add_metric([label], 1 if alert.active else 0)
            threshold.add_metric(
                [slug], alert.threshold if alert.threshold is not None else default
            )
        yield from (rate, active, threshold)

    def _heartbeats(self) -> Iterable[Metric]:
        from hitl import heartbeat

        ages = _gauge(
            "nihil_heartbeat_age_seconds",
            "Seconds since the worker / beat last reported (+Inf: never seen).",
            ["process"],
        )
        for beat in heartbeat.read():  # bounded by the cache's Redis timeouts
            ages.add_metric([beat.name], math.inf if beat.age_seconds is None else beat.age_seconds)
        yield ages


class _ThisProcess(Collector):
    """The default registry's metrics, when there is no multiprocess directory."""

    def collect(self) -> Iterable[Metric]:
        yield from REGISTRY.collect()


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


def fresh_multiproc_dir(path: Path) -> Path:
    """An empty PROMETHEUS_MULTIPROC_DIR for a set of processes about to start: files left by
    an earlier run would add its counts to this one's."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def exposition() -> tuple[bytes, str]:
    """The text a scrape returns: every process's counters plus the state read now."""
    registry = CollectorRegistry()
    if multiprocess_dir():
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        registry.register(_ThisProcess())
    registry.register(StateCollector())
    return generate_latest(registry), CONTENT_TYPE_LATEST


# --- process exit -------------------------------------------------------------------------


def _mark_dead(pid: int | None = None) -> None:
    if multiprocess_dir():
        multiprocess.mark_process_dead(pid or os.getpid())  # type: ignore[no-untyped-call]


def connect_process_exit_hooks() -> None:
    """Drop an exiting process's live-gauge files (its counters stay: they are history).
    Celery's pool processes leave through worker_process_shutdown; web processes through
    atexit. Also makes sure the directory exists: prometheus-client writes there on the
    first increment and would fail every one without it."""
    directory = multiprocess_dir()
    if not directory:
        return
    Path(directory).mkdir(parents=True, exist_ok=True)
    from celery.signals import worker_process_shutdown

    atexit.register(_mark_dead)
    worker_process_shutdown.connect(_on_worker_process_shutdown, weak=False)


def _on_worker_process_shutdown(pid: int | None = None, **kwargs: Any) -> None:
    _mark_dead(pid)
