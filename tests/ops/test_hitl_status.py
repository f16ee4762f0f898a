"""`hitl_status` shows what /readyz checks and the override-rate alerts."""

from __future__ import annotations

import json
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.utils import timezone

from hitl.ops.models import OverrideAlert

pytestmark = pytest.mark.django_db


def run(*args: str) -> tuple[str, int]:
    out = StringIO()
    try:
        call_command("hitl_status", *args, stdout=out)
    except SystemExit as exc:  # exit 1: no worker or beat heartbeat in this test
        return out.getvalue(), int(exc.code or 0)
    return out.getvalue(), 0


def test_hitl_status_reports_readiness_checks_and_override_alerts(world: Any) -> None:
    OverrideAlert.objects.create(
        checkpoint=world.checkpoint,
        threshold=0.2,
        active=True,
        rate=0.3,
        decisions=40,
        overrides=12,
        evaluated_at=timezone.now(),
        changed_at=timezone.now(),
    )
    output, _ = run("--json")
    status = json.loads(output)
    readiness = status["readiness"]
    assert readiness["ready"] is True
    assert set(readiness["checks"]) == {"database", "redis", "migrations"}
    assert all(check["ok"] and check["latency_ms"] >= 0 for check in readiness["checks"].values())
    (alert,) = status["override_alerts"]
    assert alert["checkpoint"] == world.checkpoint.slug
    assert (alert["active"], alert["rate"], alert["threshold"]) == (True, 0.3, 0.2)
    assert (alert["decisions"], alert["overrides"]) == (40, 12)

    text, _ = run()
    assert f"override rate HIGH on {world.checkpoint.slug}: 30.0 %" in text
    assert "ready: database ok" in text
