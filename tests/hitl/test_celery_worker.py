"""A real Celery worker (with beat embedded) on Redis against this run's test database.

The worker runs as a subprocess with DATABASE_URL pointing at the database pytest-django created
for this process, and REDIS_URL at a Redis database of its own (claimed for the test and
flushed afterwards), so it never picks up another run's messages. Every subprocess is stopped in
a `finally`. Run with `-s` to see the figures.
"""

from __future__ import annotations

import json
import re
import signal
from datetime import timedelta
from io import StringIO
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pytest
from django.conf import settings
from django.core.management import call_command
from django.db import connection
from django.test import override_settings
from django.utils import timezone

from audit.models import AuditEvent
from audit.services import AUDIT_LOCK_CLASS, chain_of
from hitl import heartbeat
from notifications.models import OutboxEvent
from proposals.models import Proposal, Resolution, Status
from tests.factories import submit
from tests.processes import (
    private_redis_db,
    send,
    start_worker,
    subprocess_env,
    wait_until,
)

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

# --- a proposal times out with nobody watching ---------------------------------------------


def test_a_proposal_times_out_on_its_own(world: Any, tmp_path: Path) -> None:
    world.checkpoint.timeout_seconds = 2
    world.checkpoint.save()
    with private_redis_db() as redis_url:
        env = subprocess_env(redis_url, HITL_SWEEP_INTERVAL_SECONDS="1")
        worker, node = start_worker(
            tmp_path,
            env,
            "-B",
            "--concurrency",
            "2",
            "--schedule-filename",
            str(tmp_path / "celerybeat-schedule"),
        )
        try:
            worker.wait_for(r"beat: leading", timeout=30)
            proposal = submit(world.submitter, world.checkpoint)
            assert proposal.status == Status.PENDING
            assert proposal.due_at == proposal.created_at + timedelta(seconds=2)

            def decided() -> Proposal | None:
                row = Proposal.objects.get(pk=proposal.pk)
                return row if row.status != Status.PENDING else None

            row = wait_until(decided, 20, "the beat-driven sweep to time the proposal out")
            seen_at = timezone.now()
            assert (row.status, row.resolution) == (Status.REJECTED, Resolution.TIMEOUT)
            events = AuditEvent.objects.filter(proposal=proposal, verb="proposal.rejected")
            assert [(e.actor_label, e.data["resolution"]) for e in events] == [
                ("system", "timeout")
            ]
            latency = (row.decided_at - row.due_at).total_seconds()
            print(
                f"\nworker timeout: decided {latency:.2f}s after due_at "
                f"(seen {(seen_at - row.due_at).total_seconds():.2f}s after; sweep every 1s)"
            )
            assert 0 <= latency < 15

            # Heartbeats: beat writes its own on every tick; the worker's comes from the
            # heartbeat task, which beat schedules every 30 s. Send one now rather than wait.
            send(redis_url, "hitl.tasks.heartbeat")
            caches = {"default": {**settings.CACHES["default"], "LOCATION": redis_url}}
            with override_settings(CACHES=caches):
                wait_until(
                    lambda: all(not b.stale for b in heartbeat.read()), 20, "fresh heartbeats"
                )
                out = StringIO()
                call_command("hitl_status", "--json", stdout=out)  # exit code 0: no SystemExit
            status = json.loads(out.getvalue())
            assert status["healthy"] is True
            assert status["heartbeats"]["worker"]["host"] == node
            assert status["heartbeats"]["worker"]["stale"] is False
            assert status["heartbeats"]["beat"]["stale"] is False
            assert status["heartbeats"]["beat"]["age_seconds"] < 10
            assert not re.search(r"Task hitl\.tasks\.\w+\[[^\]]+\] raised", worker.output())
        finally:
            worker.stop()


# --- a worker killed mid-task --------------------------------------------------------------


def _advisory_waiters(conn: psycopg.Connection[Any], chain: int) -> list[int]:
    """Backends of this database waiting for the lock of one audit chain."""
    rows = conn.execute(
        """
        SELECT l.pid FROM pg_locks l
        JOIN pg_database d ON d.oid = l.database
        WHERE l.locktype = 'advisory' AND NOT l.granted
          AND l.classid = %s AND l.objid = %s AND d.datname = current_database()
        """,
        [AUDIT_LOCK_CLASS, chain],
    ).fetchall()
    return [pid for (pid,) in rows]


def _backend_alive(conn: psycopg.Connection[Any], pid: int) -> bool:
    row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", [pid]).fetchone()
    return bool(row and row[0])


def test_a_task_killed_mid_run_runs_again_without_a_duplicate_effect(
    world: Any, tmp_path: Path
) -> None:
    """acks_late + task_reject_on_worker_lost: the pool child running the sweep is SIGKILLed
    while it waits inside audit_record (row locked, status updated, nothing committed); the
    worker requeues the message, a fresh child runs it again, and the proposal is rejected by
    the timeout exactly once."""
    proposal = submit(world.submitter, world.checkpoint)
    Proposal.objects.filter(pk=proposal.pk).update(due_at=timezone.now() - timedelta(minutes=1))
    chain = chain_of(proposal.pk)
    db = connection.settings_dict
    blocker = psycopg.connect(
        host=db["HOST"] or "127.0.0.1",
        port=db["PORT"] or 5432,
        user=db["USER"],
        password=db["PASSWORD"] or None,
        dbname=db["NAME"],
        autocommit=True,
    )
    with private_redis_db() as redis_url:
        worker, _ = start_worker(
            tmp_path,
            subprocess_env(redis_url),
            "--pool",
            "prefork",
            "--concurrency",
            "1",
        )
        parent = psutil.Process(worker.pid)
        stopped = False
        try:
            # Hold the proposal's audit chain lock so the sweep blocks appending its event.
            blocker.execute("SELECT pg_advisory_lock(%s, %s)", [AUDIT_LOCK_CLASS, chain])
            task_id = send(redis_url, "hitl.tasks.sweep")
            first = wait_until(lambda: _advisory_waiters(blocker, chain), 30, "the sweep to block")
            assert len(first) == 1
            (child,) = parent.children()

            # Freeze the worker's main process while its child dies, so the requeued message
            # is not picked up before the orphaned database session (which still holds the
            # proposal's row lock) is gone; otherwise SKIP LOCKED would rightly skip the row.
            parent.suspend()
            stopped = True
            child.send_signal(signal.SIGKILL)
            # A zombie until its (frozen) parent reaps it.
            wait_until(lambda: child.status() == psutil.STATUS_ZOMBIE, 10, "the child to die")
            blocker.execute("SELECT pg_terminate_backend(%s)", [first[0]])
            wait_until(lambda: not _backend_alive(blocker, first[0]), 10, "the orphan to end")
            proposal.refresh_from_db()
            assert proposal.status == Status.PENDING  # the killed attempt left nothing
            parent.resume()
            stopped = False

            # The redelivered task runs in a new child and reaches the same point again.
            second = wait_until(
                lambda: _advisory_waiters(blocker, chain), 30, "the redelivered run"
            )
            assert second != first
            assert [p.pid for p in parent.children()] != [child.pid]
            blocker.execute("SELECT pg_advisory_unlock(%s, %s)", [AUDIT_LOCK_CLASS, chain])

            def decided() -> bool:
                return Proposal.objects.filter(pk=proposal.pk, status=Status.REJECTED).exists()

            wait_until(decided, 30, "the redelivered sweep to finish")
            worker.wait_for(rf"Task hitl\.tasks\.sweep\[{task_id}\] succeeded", timeout=30)
        finally:
            if stopped:
                parent.resume()
            blocker.close()
            worker.stop()

    output = worker.output()
    assert "signal 9 (SIGKILL)" in output, output[-4000:]
    assert output.count(f"Task hitl.tasks.sweep[{task_id}] received") == 2, output[-4000:]
    proposal.refresh_from_db()
    assert (proposal.status, proposal.resolution) == (Status.REJECTED, Resolution.TIMEOUT)
    assert AuditEvent.objects.filter(proposal=proposal, verb="proposal.rejected").count() == 1
    assert OutboxEvent.objects.filter(proposal=proposal, topic="proposal.rejected").count() == 1
    assert proposal.history.filter(status=Status.REJECTED).count() == 1
