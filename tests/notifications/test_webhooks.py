"""Standard Webhooks delivery against a real HTTP receiver on loopback.

The receiver (tests/notifications/conftest.py) is a ThreadingHTTPServer on 127.0.0.1 that
answers from a script of statuses; signatures are checked with the `standardwebhooks`
reference library, never with our own code. Only loopback is ever contacted: private and
link-local targets are refused by check_target before any connection, and the tests that
prove it hand `deliver` an HTTP client that fails the test if it is ever used.
"""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest
import time_machine
from django.db import connection
from django.test import override_settings
from django.utils import timezone
from guardian.shortcuts import assign_perm
from standardwebhooks import Webhook, WebhookVerificationError

from notifications import relay, webhooks
from notifications.crypto import encrypt, new_webhook_secret
from notifications.models import (
    DeliveryAttempt,
    DeliveryStatus,
    WebhookDelivery,
    WebhookEndpoint,
)
from proposals.permissions import SUBMIT
from tests.factories import UserFactory, submit
from tests.notifications.conftest import LOOPBACK, Receiver

pytestmark = pytest.mark.django_db


def allow_loopback() -> override_settings:
    """A fresh override each time: one override_settings object must not be entered twice."""
    return override_settings(HITL_WEBHOOK_ALLOWED_NETWORKS=LOOPBACK)


def make_endpoint(recv: Receiver, **fields: Any) -> webhooks.CreatedEndpoint:
    with allow_loopback():
        return webhooks.endpoint_create(name=fields.pop("name", "hook"), url=recv.url, **fields)


def deliveries_for(endpoint: WebhookEndpoint | None = None, **filters: Any) -> list[Any]:
    qs = WebhookDelivery.objects.select_related("event").order_by("created_at", "event__topic")
    if endpoint is not None:
        qs = qs.filter(endpoint=endpoint)
    return list(qs.filter(**filters))


def submitted_delivery(world: Any, endpoint: WebhookEndpoint, **fields: Any) -> WebhookDelivery:
    """Submit a proposal, relay its `proposal.submitted` event, return the delivery planned
    for `endpoint`."""
    proposal = submit(world.submitter, world.checkpoint, **fields)
    relay.relay_all()
    return WebhookDelivery.objects.select_related("event").get(
        endpoint=endpoint, event__proposal=proposal, event__topic="proposal.submitted"
    )


def make_due(delivery: WebhookDelivery) -> None:
    WebhookDelivery.objects.filter(pk=delivery.pk).update(next_attempt_at=timezone.now())


class NoTraffic(httpx.BaseTransport):
    """An httpx transport that fails the test if a request ever gets this far."""

    def __init__(self) -> None:
        self.calls: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.calls.append(request)
        raise AssertionError(f"webhook traffic reached {request.url}: check_target let it pass")


# --- signatures ----------------------------------------------------------------------------


def test_signature_verifies_and_tampering_is_detected(world, receiver):
    recv = receiver()
    created = make_endpoint(recv)
    delivery = submitted_delivery(world, created.endpoint)

    with allow_loopback():
        assert webhooks.deliver(delivery.pk) == DeliveryStatus.DELIVERED

    (request,) = recv.requests
    assert request.path == "/hook"
    assert request.headers["content-type"] == "application/json"
    assert request.webhook_id == str(delivery.event_id)
    assert created.secret.startswith("whsec_")
    body = Webhook(created.secret).verify(request.body, request.headers)
    assert body["type"] == "proposal.submitted"
    assert body["data"]["proposal_id"] == str(delivery.event.proposal_id)
    assert body["data"]["status"] == "pending"

    tampered = request.body.replace(b'"pending"', b'"approved"')
    assert tampered != request.body
    with pytest.raises(WebhookVerificationError):
        Webhook(created.secret).verify(tampered, request.headers)

    with pytest.raises(WebhookVerificationError):
        Webhook(new_webhook_secret()).verify(request.body, request.headers)

    # The id is signed too: replaying the body under another event's id fails.
    other_id = {**request.headers, "webhook-id": str(uuid.uuid4())}
    with pytest.raises(WebhookVerificationError):
        Webhook(created.secret).verify(request.body, other_id)


def test_stale_timestamp_is_refused_by_the_receiver(world, receiver):
    recv = receiver()
    created = make_endpoint(recv)
    delivery = submitted_delivery(world, created.endpoint)
    body = webhooks.message_body(delivery.event)
    stale = webhooks.signed_headers(
        str(delivery.event_id), created.secret, body, timezone.now() - timedelta(minutes=10)
    )
    httpx.post(recv.url, content=body.encode(), headers=stale, timeout=5)

    (request,) = recv.requests
    assert int(request.headers["webhook-timestamp"]) < timezone.now().timestamp() - 590
    with pytest.raises(WebhookVerificationError, match="too old"):
        Webhook(created.secret).verify(request.body, request.headers)
    # The same body signed now is fine: only the timestamp was wrong.
    fresh = webhooks.signed_headers(str(delivery.event_id), created.secret, body, timezone.now())
    Webhook(created.secret).verify(body, fresh)


def test_callback_url_is_signed_with_the_submitters_service_account_secret(world, receiver):
    hook, callback = receiver(), receiver()
    created = make_endpoint(hook)
    proposal = submit(world.submitter, world.checkpoint, callback_url=callback.url)
    relay.relay_all()
    to_callback = WebhookDelivery.objects.get(event__proposal=proposal, endpoint=None)
    to_endpoint = WebhookDelivery.objects.get(event__proposal=proposal, endpoint=created.endpoint)
    assert to_callback.url == callback.url

    with allow_loopback():
        assert webhooks.deliver(to_callback.pk) == DeliveryStatus.DELIVERED
        assert webhooks.deliver(to_endpoint.pk) == DeliveryStatus.DELIVERED

    (request,) = callback.requests
    account_secret = world.submitter.service_account.signing_secret
    assert account_secret.startswith("whsec_")
    Webhook(account_secret).verify(request.body, request.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(created.secret).verify(request.body, request.headers)
    # One event, one webhook-id, whichever target receives it.
    assert request.webhook_id == hook.requests[0].webhook_id == str(to_callback.event_id)


def test_callback_of_a_human_submitter_is_never_sent_unsigned(world, receiver):
    callback = receiver()
    human = UserFactory(username="hugo")
    assign_perm(SUBMIT, human, world.checkpoint)
    proposal = submit(human, world.checkpoint, callback_url=callback.url)
    relay.relay_all()
    delivery = WebhookDelivery.objects.get(event__proposal=proposal, endpoint=None)

    with allow_loopback():
        assert webhooks.deliver(delivery.pk) == DeliveryStatus.PENDING

    assert callback.requests == []
    attempt = DeliveryAttempt.objects.get(delivery=delivery)
    assert attempt.status_code is None
    assert attempt.error.startswith("refused: no signing secret")


# --- retries -------------------------------------------------------------------------------


def test_retries_keep_the_id_change_the_timestamp_and_dedupe_to_one_effect(world, receiver):
    recv = receiver([500, 503, 502])  # then 200
    created = make_endpoint(recv)
    delivery = submitted_delivery(world, created.endpoint)
    verifier = Webhook(created.secret)
    start = timezone.now()
    outcomes = []

    with allow_loopback():
        for attempt in range(4):
            # Far enough ahead that the previous attempt's backoff (at most 1.2 times 120 s) has
            # passed; `tick=False` pins the clock the signature and the receiver both read.
            with time_machine.travel(start + timedelta(minutes=10 * attempt), tick=False):
                now = timezone.now()
                outcomes.append(webhooks.deliver(delivery.pk))
                verifier.verify(recv.requests[-1].body, recv.requests[-1].headers)
                delivery.refresh_from_db()
                if attempt < 3:
                    base = webhooks.BACKOFF_SECONDS[attempt]
                    wait = (delivery.next_attempt_at - now).total_seconds()
                    assert 0.8 * base - 0.01 <= wait <= 1.2 * base + 0.01, (attempt, wait)
                    # Not due yet: a second call does nothing, the receiver sees nothing.
                    assert webhooks.deliver(delivery.pk) is None
                    assert len(recv.requests) == attempt + 1

    assert outcomes == ["pending", "pending", "pending", "delivered"]
    assert delivery.status == DeliveryStatus.DELIVERED
    assert delivery.attempts == 4
    assert delivery.last_status_code == 200
    assert delivery.delivered_at is not None

    ids = [r.webhook_id for r in recv.requests]
    stamps = [r.headers["webhook-timestamp"] for r in recv.requests]
    assert ids == [str(delivery.event_id)] * 4
    assert len(set(stamps)) == 4
    assert stamps == sorted(stamps, key=int)
    assert len({r.headers["webhook-signature"] for r in recv.requests}) == 4
    assert len({r.body for r in recv.requests}) == 1  # same message, re-signed
    assert len(recv.effects) == 1

    attempts = list(DeliveryAttempt.objects.filter(delivery=delivery))
    assert [a.number for a in attempts] == [1, 2, 3, 4]
    assert [a.status_code for a in attempts] == [500, 503, 502, 200]
    assert all(a.duration_ms >= 0 and a.error == "" for a in attempts)
    assert [a.started_at for a in attempts] == sorted(a.started_at for a in attempts)

    # Delivered is final; the admin's "redeliver" sends the same id again, still one effect.
    assert webhooks.deliver(delivery.pk) is None
    webhooks.redeliver(delivery)
    with allow_loopback():
        assert webhooks.deliver(delivery.pk) == DeliveryStatus.DELIVERED
    assert [r.webhook_id for r in recv.requests] == [str(delivery.event_id)] * 5
    assert len(recv.effects) == 1


@override_settings(HITL_WEBHOOK_MAX_ATTEMPTS=3)
def test_gives_up_after_the_last_attempt(world, receiver):
    recv = receiver([500, 500, 500, 500])
    created = make_endpoint(recv)
    delivery = submitted_delivery(world, created.endpoint)
    with allow_loopback():
        results = []
        for _ in range(3):
            make_due(delivery)
            results.append(webhooks.deliver(delivery.pk))
        make_due(delivery)
        assert webhooks.deliver(delivery.pk) is None
    assert results == ["pending", "pending", "failed"]
    assert len(recv.requests) == 3


def test_410_disables_the_endpoint_and_cancels_its_queue(world, receiver):
    gone, callback = receiver([410]), receiver()
    created = make_endpoint(gone)
    first = submit(world.submitter, world.checkpoint, callback_url=callback.url)
    second = submit(world.submitter, world.checkpoint, callback_url=callback.url)
    relay.relay_all()
    d1, d2 = (
        WebhookDelivery.objects.get(endpoint=created.endpoint, event__proposal=p)
        for p in (first, second)
    )

    with allow_loopback():
        assert webhooks.deliver(d1.pk) == DeliveryStatus.CANCELLED
        assert webhooks.deliver(d2.pk) is None

    endpoint = WebhookEndpoint.objects.get(pk=created.endpoint.pk)
    assert endpoint.active is False
    assert endpoint.disabled_reason.startswith("410 Gone")
    d2.refresh_from_db()
    assert d2.status == DeliveryStatus.CANCELLED
    assert d2.last_error == "endpoint disabled (410)"
    assert len(gone.requests) == 1

    # Callbacks are not the endpoint's: they stay queued and go out.
    callbacks = WebhookDelivery.objects.filter(endpoint=None)
    assert {d.status for d in callbacks} == {DeliveryStatus.PENDING}
    with allow_loopback():
        assert {webhooks.deliver(d.pk) for d in callbacks} == {DeliveryStatus.DELIVERED}

    # And a disabled endpoint gets nothing new.
    submit(world.submitter, world.checkpoint)
    relay.relay_all()
    assert WebhookDelivery.objects.filter(endpoint=endpoint).count() == 2


def test_410_from_a_callback_url_fails_that_delivery(world, receiver):
    callback = receiver([410])
    proposal = submit(world.submitter, world.checkpoint, callback_url=callback.url)
    relay.relay_all()
    delivery = WebhookDelivery.objects.get(event__proposal=proposal)
    with allow_loopback():
        assert webhooks.deliver(delivery.pk) == DeliveryStatus.FAILED
        make_due(delivery)
        assert webhooks.deliver(delivery.pk) is None
    assert len(callback.requests) == 1


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("120", 120),
        ("http-date+300", 300),
    ],
)
@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_sets_the_next_attempt(world, receiver, header, seconds, status):
    recv = receiver()
    created = make_endpoint(recv)
    delivery = submitted_delivery(world, created.endpoint)
    if header.startswith("http-date"):
        header = format_datetime(timezone.now() + timedelta(seconds=seconds), usegmt=True)
    recv.script.append((status, {"Retry-After": header}))

    with allow_loopback():
        before = timezone.now()
        assert webhooks.deliver(delivery.pk) == DeliveryStatus.PENDING
        after = timezone.now()

    delivery.refresh_from_db()
    assert delivery.last_status_code == status
    # HTTP dates have one-second resolution.
    assert before + timedelta(seconds=seconds - 2) <= delivery.next_attempt_at
    assert delivery.next_attempt_at <= after + timedelta(seconds=seconds + 1)


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_redirects_are_not_followed(world, receiver, status):
    recv = receiver()
    created = make_endpoint(recv)
    delivery = submitted_delivery(world, created.endpoint)
    recv.script.append((status, {"Location": f"{recv.base()}/elsewhere"}))

    with allow_loopback():
        assert webhooks.deliver(delivery.pk) == DeliveryStatus.PENDING

    assert [(r.headers[":method"], r.path) for r in recv.requests] == [("POST", "/hook")]
    assert recv.on("/elsewhere") == []
    delivery.refresh_from_db()
    assert delivery.last_status_code == status
    assert delivery.delivered_at is None


# --- private addresses ---------------------------------------------------------------------

PRIVATE_TARGETS = [
    "http://10.0.0.1/hook",
    "http://169.254.169.254/latest/meta-data/",
    "http://192.168.1.20:8080/",
    "http://172.16.0.5/",
    "http://127.0.0.1/hook",
    "http://127.0.0.1:9/hook",
    "http://localhost/hook",
    "http://[::1]/hook",
    "http://0.0.0.0/",
    "http://[fe80::1]/",
    "http://224.0.0.1/",
]


@pytest.mark.parametrize("url", PRIVATE_TARGETS)
def test_private_targets_are_refused_at_registration(world, url):
    with pytest.raises(webhooks.UnsafeTarget):
        webhooks.endpoint_create(name="internal", url=url)
    assert not WebhookEndpoint.objects.exists()


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/", "file:///etc/passwd", "/relative", "http://"])
def test_non_http_urls_are_refused(world, url):
    with allow_loopback(), pytest.raises(webhooks.UnsafeTarget):
        webhooks.endpoint_create(name="odd", url=url)


@pytest.mark.parametrize(
    "url", ["http://10.0.0.1/hook", "http://169.254.169.254/latest/meta-data/", "http://[::1]/"]
)
def test_allowing_loopback_allows_nothing_else(world, url):
    with allow_loopback(), pytest.raises(webhooks.UnsafeTarget):
        webhooks.endpoint_create(name="internal", url=url)


def test_the_api_refuses_a_private_webhook_url(world, client_for):
    response = client_for(world.manager).post(
        "/api/v1/webhooks/",
        {
            "name": "metadata",
            "url": "http://169.254.169.254/latest/",
            "checkpoint": "inspection-schedule",
        },
        format="json",
    )
    assert response.status_code == 400, response.json()
    assert "url" in response.json()["error"]["details"]
    assert not WebhookEndpoint.objects.exists()


@pytest.mark.parametrize(
    "url", ["http://10.0.0.1/hook", "http://169.254.169.254/latest/meta-data/"]
)
def test_private_targets_are_refused_again_before_each_attempt(world, url):
    """A row that points inside (the DNS changed, or it predates the rule): refused and
    recorded, and no request leaves this process."""
    endpoint = WebhookEndpoint.objects.create(
        name="inside", url=url, secret_encrypted=encrypt(new_webhook_secret())
    )
    delivery = submitted_delivery(world, endpoint)
    transport = NoTraffic()
    with allow_loopback(), httpx.Client(transport=transport) as client:
        assert webhooks.deliver(delivery.pk, client=client) == DeliveryStatus.PENDING

    assert transport.calls == []
    attempt = DeliveryAttempt.objects.get(delivery=delivery)
    assert attempt.status_code is None
    assert attempt.error.startswith("refused: ")
    assert "non-public address" in attempt.error
    delivery.refresh_from_db()
    assert delivery.last_error.startswith("refused: ")
    assert delivery.next_attempt_at > timezone.now()  # retried on the normal schedule


def test_loopback_endpoint_is_refused_once_the_allowance_is_withdrawn(world, receiver):
    recv = receiver()
    created = make_endpoint(recv)
    delivery = submitted_delivery(world, created.endpoint)
    with override_settings(HITL_WEBHOOK_ALLOWED_NETWORKS=[]):
        assert webhooks.deliver(delivery.pk) == DeliveryStatus.PENDING
    assert recv.requests == []
    assert DeliveryAttempt.objects.get(delivery=delivery).error.startswith("refused: ")


# --- the schedule --------------------------------------------------------------------------


def test_backoff_schedule_spans_about_three_days_with_bounded_jitter(settings):
    total = sum(webhooks.BACKOFF_SECONDS)
    assert 2.5 * 86400 <= total <= 4 * 86400, total / 86400
    # One wait after each failed attempt but the last.
    assert len(webhooks.BACKOFF_SECONDS) == settings.HITL_WEBHOOK_MAX_ATTEMPTS - 1
    assert list(webhooks.BACKOFF_SECONDS) == sorted(webhooks.BACKOFF_SECONDS)

    for attempt, base in enumerate(webhooks.BACKOFF_SECONDS, start=1):
        samples = [webhooks.backoff(attempt) for _ in range(300)]
        assert min(samples) >= 0.8 * base
        assert max(samples) <= 1.2 * base
        assert max(samples) - min(samples) > 0.2 * base  # it does jitter
    beyond = webhooks.backoff(len(webhooks.BACKOFF_SECONDS) + 5)
    assert 0.8 * webhooks.BACKOFF_SECONDS[-1] <= beyond <= 1.2 * webhooks.BACKOFF_SECONDS[-1]


# --- two workers, one attempt --------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_concurrent_workers_send_once(world, receiver, monkeypatch):
    """Eight workers handed the same delivery at once: one sends, the others find it
    claimed (SKIP LOCKED, then the lease) and do nothing."""
    from notifications import tasks

    monkeypatch.setattr(tasks, "enqueue", lambda task, *args: True)  # no broker traffic
    recv = receiver()
    created = make_endpoint(recv)
    delivery = submitted_delivery(world, created.endpoint)
    barrier = threading.Barrier(8)
    results: list[Any] = []

    def work() -> None:
        try:
            barrier.wait(10)
            results.append(webhooks.deliver(delivery.pk))
        finally:
            connection.close()

    threads = [threading.Thread(target=work) for _ in range(8)]
    with allow_loopback():  # settings are process-wide: the threads see it
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    assert len(results) == 8
    assert results.count("delivered") == 1
    assert results.count(None) == 7
    assert len(recv.requests) == 1
    assert DeliveryAttempt.objects.filter(delivery=delivery).count() == 1
