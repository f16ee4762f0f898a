"""/metrics from two web processes at once, after a scripted run through real processes.

Two uvicorn servers and a Celery worker share one PROMETHEUS_MULTIPROC_DIR, the test
database and a private Redis database, as N web processes and M workers do in production
(deploy/). Proposals are submitted through server A and voted on through server B; one times
out, one is reminded, escalated and breaches its SLA (the worker's sweep); a webhook receiver
fails the first delivery. Then both servers must report the same counters (every process's
files summed) and the state read from the database at scrape time.
"""

from __future__ import annotations

import math
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.db.models import Max
from django.test import override_settings
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from audit.models import AuditEvent
from notifications import webhooks
from notifications.models import DeliveryAttempt, OutboxEvent, WebhookDelivery
from proposals.models import Proposal
from tests.factories import token_for
from tests.notifications.conftest import LOOPBACK
from tests.processes import (
    BASE_DIR,
    CELERY,
    Proc,
    free_port,
    private_redis_db,
    send,
    subprocess_env,
    wait_until,
)

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

TOKEN = "scrape-token-for-the-test-0123456789"

WORKER = [CELERY, "-A", "config", "worker", "--loglevel", "INFO", "--concurrency", "2"]
WORKER += ["--without-mingle", "--without-gossip"]
UVICORN = [str(BASE_DIR / ".venv" / "bin" / "python"), "-m", "uvicorn", "config.asgi:application"]
UVICORN += ["--host", "127.0.0.1", "--port"]

# What `-s` shows of each scrape: the HITL series, not the buckets or the HTTP ones.
_SHOWN = re.compile(r"^nihil_(?!http_)\w+(?<!_bucket)(?<!_created)[{ ]")

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(base: str) -> Samples:
    response = httpx.get(
        f"{base}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30
    )
    assert response.status_code == 200, response.text
    excerpt = [line for line in response.text.splitlines() if _SHOWN.match(line)]
    print(f"\n--- scrape of {base}/metrics (excerpt) ---\n" + "\n".join(excerpt))  # -s
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def test_metrics_from_two_web_processes_after_a_scripted_run(
    world: Any, tmp_path: Path, receiver: Any
) -> None:
    hook = receiver([500])  # the first delivery fails, every other one succeeds
    with override_settings(HITL_WEBHOOK_ALLOWED_NETWORKS=LOOPBACK):
        webhooks.endpoint_create(name="ops", url=hook.url)
    agent = {"Authorization": f"Bearer {token_for(world.submitter)}"}
    rita = {"Authorization": f"Bearer {token_for(world.reviewer)}"}
    cp = world.checkpoint.slug
    multiproc = tmp_path / "prometheus"
    multiproc.mkdir()

    with private_redis_db() as redis_url:
        env = subprocess_env(
            redis_url,
            PROMETHEUS_MULTIPROC_DIR=str(multiproc),
            HITL_METRICS_TOKEN=TOKEN,
            HITL_WEBHOOK_ALLOWED_NETWORKS="127.0.0.0/8",
        )
        started: list[Proc] = []
        try:
            # All three start at once (each takes seconds to import Django on a busy machine).
            ports = [free_port(), free_port()]
            started.append(Proc([*WORKER, "-n", f"ops-{ports[0]}@%h"], env, tmp_path / "w.log"))
            for port in ports:
                started.append(Proc([*UVICORN, str(port)], env, tmp_path / f"web-{port}.log"))
            started[0].wait_for(r" ready\.")
            for proc in started[1:]:
                proc.wait_for(r"Uvicorn running on")
            a, b = (f"http://127.0.0.1:{port}" for port in ports)

            ids = []
            for n, priority in enumerate(["high", "medium", "medium", "medium", "medium"]):
                response = httpx.post(
                    f"{a}/api/v1/proposals/",
                    json={
                        "checkpoint": cp,
                        "title": f"p{n}",
                        "payload": {"n": n},
                        "priority": priority,
                    },
                    headers=agent,
                    timeout=30,
                )
                assert response.status_code == 201, response.text
                ids.append(response.json()["id"])
            for pid, decision in ((ids[0], "approve"), (ids[1], "reject")):
                response = httpx.post(
                    f"{b}/api/v1/proposals/{pid}/votes/",
                    json={"decision": decision, "revision": 1, "comment": "checked"},
                    headers=rita,
                    timeout=30,
                )
                assert response.status_code == 201, response.text
            # Timers come due: p2 times out; p3 is reminded, escalated and breaches its SLA.
            past = timezone.now() - timedelta(seconds=5)
            Proposal.objects.filter(pk=ids[2]).update(due_at=past)
            Proposal.objects.filter(pk=ids[3]).update(
                remind_at=past, escalate_at=past, sla_due_at=past
            )
            send(redis_url, "hitl.tasks.sweep")

            def settled() -> bool:
                # 5 submitted, 2 votes, 2 decisions, a timeout, a reminder, an escalation and
                # an SLA breach: 13 events, each relayed and delivered (attempted) once.
                return (
                    OutboxEvent.objects.count() == 13
                    and not OutboxEvent.objects.filter(dispatched_at__isnull=True).exists()
                    and WebhookDelivery.objects.count() == 13
                    and DeliveryAttempt.objects.count() == 13
                )

            wait_until(settled, 60, "the worker to relay and deliver every event")
            from_a, from_b = scrape(a), scrape(b)
        finally:
            for proc in reversed(started):
                proc.stop()

    pending = Proposal.objects.get(pk=ids[3])
    assert pending.status == "pending" and pending.sla_breached_at is not None
    for samples in (from_a, from_b):
        # State, from the database at scrape time.
        assert value(samples, "nihil_proposals_pending", checkpoint=cp, priority="medium") == 2
        assert value(samples, "nihil_proposals_pending", checkpoint=cp, priority="high") == 0
        assert value(samples, "nihil_outbox_backlog") == 0
        assert value(samples, "nihil_outbox_oldest_undispatched_age_seconds") == 0
        chain = AuditEvent.objects.aggregate(seq=Max("seq"))["seq"]
        assert value(samples, "nihil_audit_chain_length") == chain
        worker_age = value(samples, "nihil_heartbeat_age_seconds", process="worker")
        assert worker_age is not None and 0 <= worker_age < 120
        assert value(samples, "nihil_heartbeat_age_seconds", process="beat") == math.inf
        assert value(samples, "nihil_scrape_source_up", source="database") == 1
        # One of the two human decisions rejected what the AI proposed (fewer than
        # HITL_OVERRIDE_MIN_DECISIONS: no alert).
        assert value(samples, "nihil_override_rate", checkpoint=cp) == 0.5
        assert value(samples, "nihil_override_alert_active", checkpoint=cp) == 0
        # Counters, written by the worker's relay after its commits.
        decisions = "nihil_decisions_total"
        assert (
            value(samples, decisions, checkpoint=cp, outcome="approved", resolution="reviewers")
            == 1
        )
        assert (
            value(samples, decisions, checkpoint=cp, outcome="rejected", resolution="reviewers")
            == 1
        )
        assert (
            value(samples, decisions, checkpoint=cp, outcome="rejected", resolution="timeout") == 1
        )
        assert value(samples, "nihil_timeouts_total", checkpoint=cp, outcome="rejected") == 1
        assert value(samples, "nihil_time_to_decision_seconds_count", checkpoint=cp) == 2
        assert value(samples, "nihil_votes_total", checkpoint=cp, decision="approve") == 1
        assert value(samples, "nihil_votes_total", checkpoint=cp, decision="reject") == 1
        assert value(samples, "nihil_reminders_total", checkpoint=cp) == 1
        assert value(samples, "nihil_escalations_total", checkpoint=cp) == 1
        assert value(samples, "nihil_sla_breaches_total", checkpoint=cp, priority="medium") == 1
        assert value(samples, "nihil_webhook_deliveries_total", result="http_error") == 1
        assert value(samples, "nihil_webhook_deliveries_total", result="success") == 12
        assert (
            value(samples, "nihil_webhook_delivery_duration_seconds_count", result="success") == 12
        )
        # HTTP latency, from both servers' files: submits went to A, votes to B.
        http = "nihil_http_request_duration_seconds_count"
        assert value(samples, http, view="api:proposal-list", method="POST", status="2xx") == 5
        assert value(samples, http, view="api:proposal-votes", method="POST", status="2xx") == 2
