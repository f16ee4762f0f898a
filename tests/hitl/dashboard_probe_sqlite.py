"""Run by tests/hitl/test_dashboard.py in a subprocess: the dashboard's summary on the embedded
mode's database (SQLite), over the hand-computed overrides fixture. Prints it as JSON."""

from __future__ import annotations

import json
from typing import Any

import django

django.setup()

from django.core.management import call_command  # noqa: E402
from django.core.serializers.json import DjangoJSONEncoder  # noqa: E402
from guardian.shortcuts import assign_perm  # noqa: E402

from hitl import dashboard  # noqa: E402
from proposals.models import Checkpoint  # noqa: E402
from proposals.permissions import REVIEW  # noqa: E402
from tests.factories import (  # noqa: E402
    CheckpointFactory,
    GroupFactory,
    UserFactory,
    make_service_account,
)
from tests.hitl.test_dashboard import overrides_fixture  # noqa: E402

call_command("migrate", verbosity=0)
checkpoint: Checkpoint = CheckpointFactory(slug="inspection-schedule")  # type: ignore[assignment]
approvers = GroupFactory(name="approvers")
assign_perm(REVIEW, approvers, checkpoint)
reviewer: Any = UserFactory(username="rita")
reviewer.groups.add(approvers)
overrides_fixture(make_service_account("agent-sqlite", checkpoint), checkpoint, reviewer)
data = dashboard.summary([checkpoint], dashboard.Window.from_params({"period": "24h"}))
print(json.dumps(data, cls=DjangoJSONEncoder))
