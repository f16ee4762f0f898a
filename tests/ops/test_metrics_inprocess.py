"""/metrics in this process: who may read it, and counters that count committed work once."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import transaction
from django.test import Client, override_settings
from prometheus_client import REGISTRY

from hitl.ops import metrics
from notifications import relay, tasks
from proposals import services
from tests.factories import submit

pytestmark = pytest.mark.django_db

TOKEN = "scrape-token-0123456789abcdef"


@pytest.mark.parametrize(
    ("token", "networks", "header", "expected"),
    [
        ("", [], f"Bearer {TOKEN}", 404),  # not configured: off, and says nothing
        (TOKEN, [], "", 401),
        (TOKEN, [], "Bearer wrong", 401),
        (TOKEN, [], f"Basic {TOKEN}", 401),
        (TOKEN, [], f"Bearer {TOKEN}", 200),
        ("", ["10.0.0.0/8"], "", 403),  # the test client comes from 127.0.0.1
        ("", ["127.0.0.0/8"], "", 200),
        (TOKEN, ["10.0.0.0/8"], f"Bearer {TOKEN}", 200),
        (TOKEN, ["127.0.0.0/8"], "", 200),
    ],
)
def test_metrics_refuses_without_the_token_or_an_allowed_address(
    client: Client, token: str, networks: list[str], header: str, expected: int
) -> None:
    with override_settings(HITL_METRICS_TOKEN=token, HITL_METRICS_ALLOWED_NETWORKS=networks):
        response = client.get("/metrics", HTTP_AUTHORIZATION=header)
    assert response.status_code == expected
    if expected == 200:
        assert b"nihil_outbox_backlog" in response.content
    else:
        assert b"nihil_" not in response.content
    if expected == 401:
        assert response["WWW-Authenticate"].startswith("Bearer")


def votes(world: Any, decision: str) -> float:
    labels = {"checkpoint": world.checkpoint.slug, "decision": decision}
    return REGISTRY.get_sample_value("nihil_votes_total", labels) or 0.0


class Boom(Exception):
    pass


@pytest.mark.django_db(transaction=True)
def test_a_rolled_back_relay_counts_nothing_and_the_next_counts_once(
    world: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tasks, "enqueue", lambda task, *args: True)
    monkeypatch.setattr(relay.live, "broadcast", lambda messages: True)
    proposal = submit(world.submitter, world.checkpoint)
    services.vote_cast(
        proposal_id=proposal.pk, reviewer=world.reviewer, decision="approve", revision=1
    )
    before = votes(world, "approve")
    with pytest.raises(Boom), transaction.atomic():
        assert relay.relay_batch() == 3
        raise Boom
    assert votes(world, "approve") == before
    assert relay.relay_batch() == 3
    assert votes(world, "approve") == before + 1
    assert relay.relay_batch() == 0
    assert votes(world, "approve") == before + 1


def test_http_latency_is_labelled_by_view_not_path(client: Client) -> None:
    labels = {"view": "healthz", "method": "GET", "status": "2xx"}
    before = REGISTRY.get_sample_value("nihil_http_request_duration_seconds_count", labels) or 0
    client.get("/healthz")
    client.get("/healthz")
    after = REGISTRY.get_sample_value("nihil_http_request_duration_seconds_count", labels)
    assert after == before + 2
    client.get("/no/such/page/123")
    unmatched = {"view": "unmatched", "method": "GET", "status": "4xx"}
    assert REGISTRY.get_sample_value("nihil_http_request_duration_seconds_count", unmatched)


def test_a_metrics_failure_never_fails_the_request(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full_disk(*args: Any, **kwargs: Any) -> Any:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(metrics.HTTP_DURATION, "labels", full_disk)
    monkeypatch.setattr(metrics.WEBHOOK_DELIVERIES, "labels", full_disk)
    assert client.get("/healthz").status_code == 200
    metrics.webhook_attempt(200, "", 12)  # a delivery's bookkeeping goes on too
