"""Celery tasks. Each is idempotent: safe to run twice, which acks_late may do."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from celery import shared_task
from celery.signals import worker_ready
from django.conf import settings
from django.utils import timezone

from hitl import heartbeat
from hitl.models import IdempotencyRecord
from proposals import sweeps

logger = logging.getLogger(__name__)


@shared_task(name="hitl.tasks.sweep", ignore_result=True)
def sweep() -> dict[str, int]:
    """Every timer, once: timeouts, escalations, reminders, SLA breaches, expired claims and
    bypasses. Concurrent runs split the due rows (SKIP LOCKED) instead of repeating them."""
    return sweeps.run_all().counts


@shared_task(name="hitl.tasks.heartbeat", bind=True, ignore_result=True)
def heartbeat_task(self: Any) -> None:
    heartbeat.worker_alive(self.request.hostname)


@shared_task(name="hitl.tasks.purge_idempotency_records", ignore_result=True)
def purge_idempotency_records() -> int:
    cutoff = timezone.now() - timedelta(hours=settings.HITL_IDEMPOTENCY_TTL_HOURS)
    deleted, _ = IdempotencyRecord.objects.filter(created_at__lt=cutoff).delete()
    return deleted


@worker_ready.connect
def _heartbeat_on_start(sender: Any = None, **kwargs: Any) -> None:
    """A worker is alive from its first second, not from beat's first heartbeat tick."""
    try:
        heartbeat.worker_alive(getattr(sender, "hostname", None))
    except Exception:  # Redis not up yet: the periodic heartbeat will record it
        logger.warning("could not record the worker heartbeat at start", exc_info=True)
