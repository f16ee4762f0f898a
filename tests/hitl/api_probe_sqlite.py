"""Run by tests/hitl/test_api_sqlite_debug.py in a subprocess: the embedded mode's database
(SQLite) with DEBUG on, as `up` runs it. Prints one JSON line per probe:
{"name", "status", "content_type", "body"}."""

from __future__ import annotations

import base64
import json
import sys
from typing import Any

import django

django.setup()

from django.core.management import call_command  # noqa: E402
from django.test import Client  # noqa: E402
from django.test.utils import setup_test_environment  # noqa: E402

call_command("migrate", verbosity=0)
setup_test_environment()  # the test client's host name, nothing else

from hitl.api import views  # noqa: E402
from proposals.models import Checkpoint  # noqa: E402
from tests.factories import CheckpointFactory, make_service_account, submit, token_for  # noqa: E402

checkpoint: Checkpoint = CheckpointFactory(slug="inspection-schedule")  # type: ignore[assignment]
agent = make_service_account("agent-sqlite", checkpoint)
leather = submit(agent, checkpoint, title="Leather", labels={"sector": "leather", "n": "5"})
submit(agent, checkpoint, title="Steel", labels={"sector": "steel"})
client = Client(raise_request_exception=False, HTTP_AUTHORIZATION=f"Bearer {token_for(agent)}")


def cursor(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


UUID = "00000000-0000-4000-8000-000000000000"
FAR_PAST = cursor(["0001-01-01T00:00:00+14:00", UUID])
FAR_FUTURE = cursor(["9999-12-31T23:59:59-14:00", UUID])
PROBES: list[tuple[str, str, str]] = [
    ("cursor-year-1-plus-14", "GET", f"/api/v1/proposals/?cursor={FAR_PAST}"),
    ("cursor-year-9999-minus-14", "GET", f"/api/v1/proposals/?cursor={FAR_FUTURE}"),
    ("label-filter", "GET", "/api/v1/proposals/?label=sector:leather"),
    ("label-filter-two", "GET", "/api/v1/proposals/?label=sector:leather&label=n:5"),
    ("label-filter-none", "GET", "/api/v1/proposals/?label=sector:wood"),
    ("unknown-api-path", "GET", "/api/v1/nope/"),
    ("unknown-api-path-post", "POST", "/api/v1/nope"),
    ("unknown-api-root", "GET", "/api/"),
    ("unicode-digit-webhook", "GET", "/api/v1/webhooks/%C2%B9/"),
    ("unicode-digit-proposal", "GET", "/api/v1/proposals/%C2%B9/"),
    ("method-not-allowed", "DELETE", "/api/v1/checkpoints/"),
]


def record(name: str, response: Any) -> None:
    try:
        body = response.json()
    except ValueError:
        body = response.content[:300].decode(errors="replace")
    content_type = response.get("Content-Type", "")
    print(
        json.dumps({"name": name, "status": response.status_code, "ct": content_type, "body": body})
    )


for name, method, path in PROBES:
    record(name, client.generic(method, path))
record("unauthenticated", Client(raise_request_exception=False).get("/api/v1/checkpoints/"))

# A bulk submit on SQLite (the portable path: bulk_create and bulk_history_create), one item
# refused: what it wrote, and whether the audit chain still verifies event by event.
bulk = client.post(
    "/api/v1/proposals/bulk/",
    {
        "proposals": [
            {"checkpoint": checkpoint.slug, "title": f"bulk {n}", "payload": {"n": n}}
            for n in range(3)
        ]
        + [{"checkpoint": "nowhere", "title": "refused", "payload": {}}]
    },
    content_type="application/json",
)
record("bulk", bulk)


def _written(proposal_id: str) -> dict[str, Any]:
    from audit.models import AuditEvent
    from proposals.models import Proposal, Revision

    revision = Revision.objects.get(proposal_id=proposal_id)
    return {
        "history": Proposal.history.filter(id=proposal_id).count(),  # type: ignore[attr-defined]
        "revision_history": Revision.history.filter(id=revision.pk).count(),  # type: ignore[attr-defined]
        "events": list(
            AuditEvent.objects.filter(proposal_id=proposal_id).values_list("verb", flat=True)
        ),
    }


from audit.services import audit_verify  # noqa: E402

created = [r["proposal"]["id"] for r in bulk.json()["results"] if r["status"] == 201]
checked, broken = audit_verify()
print(
    json.dumps(
        {
            "name": "bulk-written",
            "rows": [_written(proposal_id) for proposal_id in created],
            "verified": checked,
            "broken": broken is not None,
        }
    )
)


def boom(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError("a bug")


views.selectors.checkpoint_list = boom  # type: ignore[assignment]  # an unhandled exception
record("unhandled-exception", client.get("/api/v1/checkpoints/"))
print(json.dumps({"name": "leather-id", "id": str(leather.pk)}))
sys.stdout.flush()
