"""The transactional outbox and its relay: rows written with the change, relayed once, planned
once per target, and one relay kick per committed transaction."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest
from django.core import mail
from django.db import connection, transaction
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from guardian.shortcuts import assign_perm

from notifications import kicks, relay, tasks, webhooks
from notifications.models import EmailNotice, OutboxEvent, WebhookDelivery, WebhookEndpoint
from notifications.services import outbox_emit, outbox_emit_many
from proposals import services
from proposals.models import Proposal
from proposals.permissions import REVIEW, SUBMIT
from tests.factories import CheckpointFactory, UserFactory, submit
from tests.notifications.conftest import LOOPBACK

pytestmark = pytest.mark.django_db


class Boom(Exception):
    pass


def loopback_endpoint(name: str, **fields: Any) -> Any:
    # The URL is never contacted here: these tests only plan deliveries.
    with override_settings(HITL_WEBHOOK_ALLOWED_NETWORKS=LOOPBACK):
        return webhooks.endpoint_create(
            name=name, url=f"http://127.0.0.1:9/{name}", **fields
        ).endpoint


def approve(world: Any, proposal: Proposal) -> Proposal:
    proposal, _ = services.vote_cast(
        proposal_id=proposal.pk, reviewer=world.reviewer, decision="approve", revision=1
    )
    return proposal


def test_outbox_rows_commit_and_roll_back_with_the_change(world):
    with pytest.raises(Boom), transaction.atomic():
        proposal = submit(world.submitter, world.checkpoint)
        assert OutboxEvent.objects.filter(proposal=proposal).count() == 1
        raise Boom
    assert not Proposal.objects.exists()
    assert not OutboxEvent.objects.exists()

    proposal = submit(world.submitter, world.checkpoint)
    with pytest.raises(Boom), transaction.atomic():
        approve(world, proposal)
        raise Boom
    assert list(OutboxEvent.objects.values_list("topic", flat=True)) == ["proposal.submitted"]

    approve(world, proposal)
    assert list(OutboxEvent.objects.values_list("topic", "payload__status")) == [
        ("proposal.submitted", "pending"),
        ("proposal.vote_cast", "pending"),
        ("proposal.approved", "approved"),
    ]


def test_event_payload_names_the_proposal_and_its_state(world):
    proposal = submit(world.submitter, world.checkpoint)
    event = OutboxEvent.objects.get(proposal=proposal)
    assert event.topic == "proposal.submitted"
    assert event.checkpoint_id == world.checkpoint.pk
    assert event.dispatched_at is None
    assert event.payload["type"] == "proposal.submitted"
    assert event.payload["proposal_id"] == str(proposal.pk)
    assert event.payload["checkpoint"] == "inspection-schedule"
    assert event.payload["status"] == "pending"
    assert event.payload["revision"] == 1


def test_relay_marks_events_dispatched_and_plans_per_interested_endpoint(world):
    loopback_endpoint("everything")
    decisions = loopback_endpoint("decisions", events=["proposal.approved", "proposal.rejected"])
    loopback_endpoint("this", checkpoint=world.checkpoint)
    other_checkpoint = loopback_endpoint("other", checkpoint=world.other_checkpoint)
    inactive = loopback_endpoint("inactive")
    inactive.active = False
    inactive.save(update_fields=["active"])

    proposal = submit(world.submitter, world.checkpoint, callback_url="http://127.0.0.1:9/cb")
    approve(world, proposal)
    events = {e.topic: e for e in OutboxEvent.objects.all()}
    assert set(events) == {"proposal.submitted", "proposal.vote_cast", "proposal.approved"}

    assert relay.relay_batch() == 3
    assert not OutboxEvent.objects.filter(dispatched_at__isnull=True).exists()

    planned = {
        (d.event.topic, d.endpoint.name if d.endpoint else "callback")
        for d in WebhookDelivery.objects.select_related("event", "endpoint")
    }
    expected = {(topic, "everything") for topic in events}
    expected |= {(topic, "this") for topic in events}
    expected |= {(topic, "callback") for topic in events}
    expected |= {("proposal.approved", "decisions")}
    assert planned == expected
    assert WebhookDelivery.objects.count() == len(expected) == 10
    assert not WebhookDelivery.objects.filter(endpoint__in=[other_checkpoint, inactive]).exists()
    assert {d.url for d in WebhookDelivery.objects.filter(endpoint=None)} == {
        "http://127.0.0.1:9/cb"
    }
    assert {d.status for d in WebhookDelivery.objects.all()} == {"pending"}
    assert WebhookDelivery.objects.get(endpoint=decisions).event.topic == "proposal.approved"

    # Nothing left: a second pass finds no work.
    assert relay.relay_batch() == 0


def test_checkpoint_events_reach_global_and_matching_endpoints(world):
    everything = loopback_endpoint("everything")
    other = loopback_endpoint("other", checkpoint=world.other_checkpoint)
    services.checkpoint_bypass_start(
        checkpoint_id=world.checkpoint.pk,
        actor=world.manager,
        until=timezone.now() + timedelta(hours=1),
        reason="incident 42",
    )
    relay.relay_all()
    (delivery,) = WebhookDelivery.objects.select_related("event")
    assert delivery.endpoint_id == everything.pk
    assert delivery.event.topic == "checkpoint.bypassed"
    assert delivery.event.proposal_id is None
    assert not WebhookDelivery.objects.filter(endpoint=other).exists()


def test_active_endpoints_read_as_the_orm_reads_them(world):
    loopback_endpoint("b-decisions", events=["proposal.approved"], checkpoint=world.checkpoint)
    loopback_endpoint("a-everything")
    inactive = loopback_endpoint("c-inactive")
    inactive.active = False
    inactive.save(update_fields=["active"])

    def fields(endpoint: WebhookEndpoint) -> dict[str, Any]:
        return {f.attname: getattr(endpoint, f.attname) for f in endpoint._meta.concrete_fields}

    read = webhooks.active_endpoints()
    expected = list(WebhookEndpoint.objects.filter(active=True))
    assert [e.name for e in read] == ["a-everything", "b-decisions"]
    assert [fields(e) for e in read] == [fields(e) for e in expected]
    assert read[1].events == ["proposal.approved"]  # JSON decoded, as the field decodes it
    assert all(e._state.db == "default" and not e._state.adding for e in read)


def test_relaying_again_plans_nothing_new(world):
    loopback_endpoint("everything")
    proposal = submit(world.submitter, world.checkpoint, callback_url="http://127.0.0.1:9/cb")
    approve(world, proposal)
    relay.relay_all()
    before = set(WebhookDelivery.objects.values_list("pk", flat=True))
    assert len(before) == 6

    # A relay that crashed after planning but before marking: the events come round again.
    OutboxEvent.objects.update(dispatched_at=None)
    assert relay.relay_all() == 3
    assert set(WebhookDelivery.objects.values_list("pk", flat=True)) == before

    # And planning directly is a no-op too (the unique constraints hold the line).
    endpoints = list(webhooks.WebhookEndpoint.objects.all())
    assert webhooks.plan_deliveries(list(OutboxEvent.objects.all()), endpoints) == []
    assert WebhookDelivery.objects.count() == 6


def test_relay_queues_new_work_only_for_pending_proposals(world):
    """A proposal approved by policy in its own submit transaction never waited for anyone:
    no reviewer should have it queued as new work (its `proposal.submitted` event was written
    before routing, so the payload still says `pending`)."""
    auto = CheckpointFactory(slug="auto", auto_approve_at=0.5)
    assign_perm(SUBMIT, world.submitter, auto)
    assign_perm(REVIEW, world.reviewer, auto)
    submit(world.submitter, auto, confidence=0.9)  # approved by policy: nobody to ask
    pending = submit(world.submitter, world.checkpoint)
    relay.relay_all()
    assert set(EmailNotice.objects.values_list("user__username", "proposal_id")) == {
        ("rita", pending.pk),
        ("raj", pending.pk),
    }


def test_relay_remembers_reviewers_while_the_rights_version_holds(world, private_rights_version):
    """A relay run per burst of submits asks the grants once, not once per run; any change to
    who may review is seen by the next run."""
    from django.core.cache import cache

    from notifications import live

    cache.set(live.RIGHTS_VERSION_KEY, "v1")

    def notified(proposal: Proposal) -> set[str]:
        rows = EmailNotice.objects.filter(proposal=proposal).values_list("user__username")
        return {username for (username,) in rows}

    first = submit(world.submitter, world.checkpoint)
    relay.relay_all()
    assert notified(first) == {"rita", "raj"}
    second = submit(world.submitter, world.checkpoint)
    with CaptureQueriesContext(connection) as queries:
        relay.relay_all()
    assert not [q for q in queries.captured_queries if "guardian" in q["sql"]]
    assert notified(second) == {"rita", "raj"}
    world.reviewer2.groups.clear()  # raj may review no more
    third = submit(world.submitter, world.checkpoint)
    relay.relay_all()
    assert notified(third) == {"rita"}
    cache.set(live.RIGHTS_VERSION_KEY, "v2")  # another process changed rights: asked again
    fourth = submit(world.submitter, world.checkpoint)
    with CaptureQueriesContext(connection) as queries:
        relay.relay_all()
    assert [q for q in queries.captured_queries if "guardian" in q["sql"]]
    assert notified(fourth) == {"rita"}


def test_claimed_events_are_the_rows_the_orm_reads(world):
    """The claim builds its instances without Model.__init__ (relay._loaded): they must hold
    what the ORM would, load deferred columns on access, and no model involved may have
    init signal receivers that such a build would skip."""
    from django.db.models.signals import post_init, pre_init

    for model in (OutboxEvent, Proposal):
        assert not pre_init.has_listeners(model) and not post_init.has_listeners(model)
    proposal = submit(world.submitter, world.checkpoint, title="Read me")
    with transaction.atomic():
        (claimed,) = relay._claim(10, timezone.now())
        event = claimed.event
        stored = OutboxEvent.objects.select_related("proposal").get(pk=event.pk)
        for field in OutboxEvent._meta.concrete_fields:
            if field.attname != "dispatched_at":
                assert getattr(event, field.attname) == getattr(stored, field.attname)
        assert event.dispatched_at is not None and not event._state.adding
        assert event.proposal.pk == proposal.pk and event.proposal.status == "pending"
        assert event.proposal.created_at == stored.proposal.created_at
        with CaptureQueriesContext(connection) as queries:
            assert event.proposal.title == "Read me"  # deferred: read when asked
        assert len(queries) == 1
        transaction.set_rollback(True)


def test_relay_batches_split_large_backlogs(world, monkeypatch):
    monkeypatch.setattr(relay, "BATCH_SIZE", 4)
    for _ in range(5):
        submit(world.submitter, world.checkpoint)
    assert relay.relay_batch(limit=4) == 4
    assert OutboxEvent.objects.filter(dispatched_at__isnull=True).count() == 1
    assert relay.relay_all() == 1


# --- the kick on commit --------------------------------------------------------------------


def _kicks() -> int:
    return sum(1 for entry in connection.run_on_commit if entry[1] is kicks.after_commit)


@pytest.mark.django_db(transaction=True)
def test_one_kick_per_committed_transaction(world, monkeypatch):
    sent: list[str] = []
    # What a kick then publishes, at most one queued run at a time: test_relay_coalescing.
    monkeypatch.setattr(tasks, "kick_relay", lambda: sent.append("kick"))

    proposal = submit(world.submitter, world.checkpoint)
    assert sent == ["kick"]
    sent.clear()

    # A vote that decides writes two events (vote_cast, approved): one transaction, one kick.
    with transaction.atomic():
        approve(world, proposal)
        assert OutboxEvent.objects.filter(proposal=proposal).count() == 3
        assert _kicks() == 1
        assert sent == []  # nothing before commit
    assert sent == ["kick"]
    sent.clear()

    # Several services in one transaction: still one kick.
    with transaction.atomic():
        for _ in range(3):
            submit(world.submitter, world.checkpoint)
        assert _kicks() == 1
    assert sent == ["kick"]
    sent.clear()

    # A rolled-back transaction kicks nothing.
    with pytest.raises(Boom), transaction.atomic():
        submit(world.submitter, world.checkpoint)
        raise Boom
    assert sent == []

    # A kick registered inside a savepoint that rolls back goes with it; the next event in
    # the same transaction registers it again.
    with transaction.atomic():
        with pytest.raises(Boom), transaction.atomic():
            submit(world.submitter, world.checkpoint)
            raise Boom
        assert _kicks() == 0
        submit(world.submitter, world.checkpoint)
        assert _kicks() == 1
    assert sent == ["kick"]


@pytest.mark.django_db(transaction=True)
def test_the_relay_hands_deliveries_and_mail_to_tasks_after_commit(world, monkeypatch):
    sent: list[tuple[str, tuple[Any, ...]]] = []
    monkeypatch.setattr(
        tasks, "enqueue", lambda task, *args: sent.append((task.name, args)) or True
    )
    broadcasts: list[Any] = []
    monkeypatch.setattr(relay.live, "broadcast", lambda messages: broadcasts.extend(messages))

    loopback_endpoint("everything")
    proposal = submit(world.submitter, world.checkpoint)
    approve(world, proposal)
    sent.clear()

    assert relay.relay_all() == 3
    deliveries = {str(pk) for pk in WebhookDelivery.objects.values_list("pk", flat=True)}
    assert {args[0] for name, args in sent if name == "notifications.tasks.deliver_webhook"} == (
        deliveries
    )
    # The submitter is a service account: a decision has no one to mail, so no mail task.
    assert [args for name, args in sent if name == "notifications.tasks.send_event_email"] == []
    # Each event to the checkpoint's group, the submitter's and the proposal's.
    assert {group for group, _ in broadcasts} == {
        f"checkpoint.{world.checkpoint.pk}",
        f"user.{world.submitter.pk}",
        f"proposal.{proposal.pk}",
    }
    assert len(broadcasts) == 9
    assert {m["id"] for _, m in broadcasts} == {
        str(pk) for pk in OutboxEvent.objects.values_list("pk", flat=True)
    }


@pytest.mark.django_db(transaction=True)
def test_a_decision_with_a_person_to_tell_gets_exactly_its_mail(world, monkeypatch):
    sent: list[tuple[str, tuple[Any, ...]]] = []
    monkeypatch.setattr(
        tasks, "enqueue", lambda task, *args: sent.append((task.name, args)) or True
    )
    monkeypatch.setattr(relay.live, "broadcast", lambda messages: True)
    hugo = UserFactory(username="hugo")
    nemo = UserFactory(username="nemo", email="")  # a person, but no address to write to
    for person in (hugo, nemo):
        assign_perm(SUBMIT, person, world.checkpoint)
    for submitter in (hugo, nemo, world.submitter):
        approve(world, submit(submitter, world.checkpoint, title=f"{submitter.username}'s"))
    sent.clear()

    assert relay.relay_all() == 9
    hugos = OutboxEvent.objects.get(topic="proposal.approved", proposal__submitted_by=hugo)
    mail_tasks = [args for name, args in sent if name == "notifications.tasks.send_event_email"]
    assert mail_tasks == [(str(hugos.pk),)]
    tasks.send_event_email(*mail_tasks[0])
    assert [(m.to, m.subject) for m in mail.outbox] == [(["hugo@example.test"], "hugo's: approved")]


@pytest.mark.django_db(transaction=True)
def test_concurrent_relays_split_the_backlog(world, monkeypatch):
    """Four relays at once (the on-commit kicks of four transactions, or a kick and beat's
    safety net): SKIP LOCKED splits the events; each is relayed and planned exactly once."""
    monkeypatch.setattr(tasks, "enqueue", lambda task, *args: True)
    monkeypatch.setattr(relay.live, "broadcast", lambda messages: True)
    loopback_endpoint("everything")
    for _ in range(40):
        submit(world.submitter, world.checkpoint)
    barrier = threading.Barrier(4)
    counts: list[int] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            barrier.wait(10)
            done = 0
            while n := relay.relay_batch(limit=3):
                done += n
            counts.append(done)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert sum(counts) == 40, counts
    assert not OutboxEvent.objects.filter(dispatched_at__isnull=True).exists()
    assert WebhookDelivery.objects.count() == 40


@pytest.mark.django_db(transaction=True)
def test_a_chunks_outbox_rows_are_copied_and_relayed_in_the_order_written(world, monkeypatch):
    """outbox_emit_many (a sweep chunk, one COPY) writes what outbox_emit writes, and the relay
    announces the chunk's events in the order they were written, not in the ids' order."""
    proposals = [submit(world.submitter, world.checkpoint, title=f"p{n}") for n in range(8)]
    monkeypatch.setattr(relay.live, "broadcast", lambda messages: True)
    relay.relay_all()  # the submits
    broadcasts: list[Any] = []
    monkeypatch.setattr(relay.live, "broadcast", lambda messages: broadcasts.extend(messages))
    written = proposals[::-1]
    with transaction.atomic():
        outbox_emit_many([("proposal.expired", p, {"reason": "timeout"}) for p in written])
        single = outbox_emit("proposal.expired", proposal=proposals[0], data={"reason": "x"})

    copied = OutboxEvent.objects.filter(topic="proposal.expired").exclude(pk=single.pk)
    first = copied.get(proposal=proposals[0])
    assert first.checkpoint_id == single.checkpoint_id == world.checkpoint.pk
    assert first.payload == {**single.payload, "reason": "timeout"}
    assert first.dispatched_at is None

    assert relay.relay_all() == 9
    announced = [m["proposal"] for group, m in broadcasts if group.startswith("checkpoint.")]
    assert announced == [str(p.pk) for p in written] + [str(proposals[0].pk)]
