"""`nihil_obstat.verify_webhook` against a real signed delivery: the relay plans it, the
delivery code signs and POSTs it to a loopback receiver, the client verifies what arrived."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import override_settings
from nihil_obstat import DECISION_EVENTS, WebhookVerificationError, verify_webhook

from notifications import relay, webhooks
from notifications.models import DeliveryStatus, WebhookDelivery
from proposals import services
from tests.factories import submit
from tests.notifications.conftest import LOOPBACK, receiver  # noqa: F401 - the fixture

pytestmark = pytest.mark.django_db


def test_verify_webhook_accepts_a_real_delivery_and_refuses_tampering(
    world: Any,
    receiver: Any,  # noqa: F811
) -> None:
    recv = receiver()
    with override_settings(HITL_WEBHOOK_ALLOWED_NETWORKS=LOOPBACK):
        created = webhooks.endpoint_create(name="agent", url=recv.url)
    proposal = submit(world.submitter, world.checkpoint, payload={"cost": 250})
    services.vote_cast(
        proposal_id=proposal.pk,
        reviewer=world.reviewer,
        decision="approve",
        revision=1,
        comment="ok",
    )
    relay.relay_all()
    delivery = WebhookDelivery.objects.get(  # (the package's live tests add other events)
        endpoint=created.endpoint, event__topic="proposal.approved", event__proposal=proposal
    )
    with override_settings(HITL_WEBHOOK_ALLOWED_NETWORKS=LOOPBACK):
        assert webhooks.deliver(delivery.pk) == DeliveryStatus.DELIVERED

    (request,) = recv.requests
    event = verify_webhook(request.headers, request.body, created.secret)
    assert event["type"] == "proposal.approved" and event["type"] in DECISION_EVENTS
    assert event["data"]["proposal_id"] == str(proposal.pk)

    with pytest.raises(WebhookVerificationError):
        verify_webhook(
            request.headers, request.body.replace(b"approved", b"rejected"), created.secret
        )
    with pytest.raises(WebhookVerificationError):
        verify_webhook({**request.headers, "webhook-id": "msg_other"}, request.body, created.secret)
