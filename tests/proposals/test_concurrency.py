"""Races on the write paths, with real threads and real PostgreSQL transactions.

Every test starts its workers behind a `threading.Barrier` so the interesting statements are
issued together, runs with `transaction=True` (each thread commits on its own connection, as
production's workers do) and closes its connection when the thread ends. Concurrent
connections stay around 20: PostgreSQL's max_connections is 100 and other suites share it.

Run with `-s` to see the figures (wins per side, wall times).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter, defaultdict
from typing import Any

import pytest
from guardian.shortcuts import assign_perm
from rest_framework.test import APIClient

from audit.models import AuditEvent
from hitl.models import IdempotencyRecord
from proposals import services
from proposals.errors import InvalidTransition
from proposals.models import Decision, Proposal, Resolution, Status, Vote
from proposals.permissions import REVIEW, access_for
from tests.concurrency import run_in_threads
from tests.factories import (
    CheckpointFactory,
    GroupFactory,
    UserFactory,
    make_service_account,
    submit,
    token_for,
)

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

TERMINAL_VERBS = ("proposal.approved", "proposal.rejected")


def assert_votes_closed(exc: BaseException, status: str) -> None:
    """The loser of a race: 409 invalid_transition, naming the status it found."""
    assert isinstance(exc, InvalidTransition), repr(exc)
    assert exc.status_code == 409
    assert exc.code == "invalid_transition"
    assert exc.details == {"status": status}


# --- 1. idempotent submit ------------------------------------------------------------------


def test_parallel_identical_submits_create_one_proposal(
    world: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="django.request")  # 87 "Conflict" lines are noise
    requests, workers = 100, 20
    key = "agent-retry-7f3a"
    body = {
        "checkpoint": world.checkpoint.slug,
        "title": "Inspect pump 4",
        "payload": {"pump": 4, "frequency": "weekly"},
        "region": "north",
    }
    token = token_for(world.submitter)
    results: list[tuple[int, dict[str, Any], bool]] = []

    def work(index: int, barrier: threading.Barrier) -> None:
        client = APIClient()  # one per thread: test clients keep per-instance state
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
        barrier.wait(timeout=30)
        for _ in range(index, requests, workers):
            response = client.post(
                "/api/v1/proposals/", body, format="json", HTTP_IDEMPOTENCY_KEY=key
            )
            replayed = response.headers.get("Idempotent-Replayed") == "true"
            results.append((response.status_code, response.json(), replayed))

    started = time.perf_counter()
    run_in_threads(workers, work)
    elapsed = time.perf_counter() - started

    assert len(results) == requests
    statuses = Counter(code for code, _, _ in results)
    assert set(statuses) <= {201, 409}, statuses
    conflicts = [data for code, data, _ in results if code == 409]
    assert all(data["error"]["code"] == "idempotency_in_flight" for data in conflicts), conflicts
    created = [(data, replayed) for code, data, replayed in results if code == 201]
    assert created, "no request succeeded"
    originals = [data for data, replayed in created if not replayed]
    assert len(originals) == 1, f"{len(originals)} responses claim to have done the work"
    assert all(data == originals[0] for data, _ in created), "a replay differs from the original"

    proposal = Proposal.objects.get()  # exactly one, whoever won
    assert proposal.idempotency_key == key
    assert proposal.submitted_by_id == world.submitter.pk
    assert originals[0]["id"] == str(proposal.pk)
    assert IdempotencyRecord.objects.filter(owner=world.submitter, key=key).count() == 1
    assert list(AuditEvent.objects.filter(proposal=proposal).values_list("verb", flat=True)) == [
        "proposal.submitted"
    ]
    print(
        f"\nidempotent submit: {requests} requests on {workers} threads in {elapsed:.2f}s: "
        f"1 created, {len(created) - 1} replayed, {len(conflicts)} in flight (409)"
    )


# --- 2. approve vs reject ------------------------------------------------------------------


def test_approve_and_reject_race_ends_in_one_decision(world: Any) -> None:
    runs = 200
    checkpoint = world.checkpoint
    assert (checkpoint.quorum_rule, checkpoint.veto) == ("any", True)
    proposals = [submit(world.submitter, checkpoint, title=f"run {n}") for n in range(runs)]
    assert {p.status for p in proposals} == {Status.PENDING}
    assert {p.quorum_required for p in proposals} == {1}
    sides = {
        "approve": (world.reviewer, Decision.APPROVE, ""),
        "reject": (world.reviewer2, Decision.REJECT, "the schedule clashes with the outage"),
    }
    names = list(sides)
    # outcomes[run][side] = the status the side's call returned, or the exception it raised
    outcomes: list[dict[str, str | BaseException]] = [{} for _ in range(runs)]

    def work(index: int, barrier: threading.Barrier) -> None:
        side = names[index]
        reviewer, decision, comment = sides[side]
        access = access_for(reviewer)  # once: grants don't change during the test
        for run, proposal in enumerate(proposals):
            barrier.wait(timeout=30)
            try:
                result, _ = services.vote_cast(
                    proposal_id=proposal.pk,
                    reviewer=reviewer,
                    decision=decision,
                    revision=1,
                    comment=comment,
                    access=access,
                )
                outcomes[run][side] = result.status
            except InvalidTransition as exc:
                outcomes[run][side] = exc

    started = time.perf_counter()
    run_in_threads(len(sides), work)
    elapsed = time.perf_counter() - started

    ids = [p.pk for p in proposals]
    status_of = dict(Proposal.objects.filter(pk__in=ids).values_list("pk", "status"))
    resolution_of = dict(Proposal.objects.filter(pk__in=ids).values_list("pk", "resolution"))
    votes: dict[Any, list[tuple[int, str]]] = defaultdict(list)
    for pid, reviewer_id, decision in Vote.objects.filter(proposal_id__in=ids).values_list(
        "proposal_id", "reviewer_id", "decision"
    ):
        votes[pid].append((reviewer_id, decision))
    terminal: dict[Any, list[str]] = defaultdict(list)
    for pid, verb in AuditEvent.objects.filter(
        proposal_id__in=ids, verb__in=TERMINAL_VERBS
    ).values_list("proposal_id", "verb"):
        terminal[pid].append(verb)

    wins: Counter[str] = Counter()
    for run, proposal in enumerate(proposals):
        outcome = outcomes[run]
        won = [side for side in names if isinstance(outcome.get(side), str)]
        assert len(won) == 1, f"run {run}: {outcome}"
        winner = won[0]
        (loser,) = [side for side in names if side != winner]
        reviewer, decision, _ = sides[winner]
        final = Status.APPROVED if decision == Decision.APPROVE else Status.REJECTED
        wins[winner] += 1

        assert outcome[winner] == final, f"run {run}: {outcome}"
        assert status_of[proposal.pk] == final, f"run {run}"
        assert resolution_of[proposal.pk] == Resolution.REVIEWERS
        assert votes[proposal.pk] == [(reviewer.pk, decision)], f"run {run}"
        assert terminal[proposal.pk] == [f"proposal.{final}"], f"run {run}"
        loss = outcome[loser]
        assert isinstance(loss, BaseException), f"run {run}: {outcome}"
        assert_votes_closed(loss, final)

    print(
        f"\napprove vs reject: {runs} runs in {elapsed:.2f}s: "
        f"approve won {wins['approve']}, reject won {wins['reject']}"
    )
    assert wins["approve"] >= 1 and wins["reject"] >= 1, f"one side never won: {dict(wins)}"


# --- 3. quorum of three among fifty ---------------------------------------------------------


def test_fifty_approvers_on_ten_proposals_reach_quorum_once_each() -> None:
    approver_count, proposal_count, required, workers = 50, 10, 3, 20
    checkpoint: Any = CheckpointFactory(
        slug="three-keys", quorum_rule="count", quorum_count=required, veto=True
    )
    group: Any = GroupFactory(name="three-keys-approvers")
    assign_perm(REVIEW, group, checkpoint)
    approvers = UserFactory.create_batch(approver_count)
    group.user_set.add(*approvers)
    agent = make_service_account("agent-quorum", checkpoint)
    proposals = [submit(agent, checkpoint, title=f"q{n}") for n in range(proposal_count)]
    assert {(p.status, p.quorum_required) for p in proposals} == {(Status.PENDING, required)}
    assert {p.eligible_reviewers for p in proposals} == {approver_count}

    seed = random.randrange(2**32)
    rng = random.Random(seed)
    ballots = {a.pk: rng.sample(proposals, k=proposal_count) for a in approvers}
    # Worker w casts the votes of approvers w, w+20, w+40, each on all ten proposals in that
    # approver's own shuffled order, interleaving its approvers.
    results: list[tuple[Any, int, BaseException | None]] = []

    def work(index: int, barrier: threading.Barrier) -> None:
        mine = [(a, access_for(a)) for a in approvers[index::workers]]
        barrier.wait(timeout=30)
        for slot in range(proposal_count):
            for approver, access in mine:
                proposal = ballots[approver.pk][slot]
                try:
                    services.vote_cast(
                        proposal_id=proposal.pk,
                        reviewer=approver,
                        decision=Decision.APPROVE,
                        revision=1,
                        access=access,
                    )
                    results.append((proposal.pk, approver.pk, None))
                except InvalidTransition as exc:
                    results.append((proposal.pk, approver.pk, exc))

    started = time.perf_counter()
    run_in_threads(workers, work)
    elapsed = time.perf_counter() - started

    assert len(results) == approver_count * proposal_count
    assert len({(pid, aid) for pid, aid, _ in results}) == len(results)
    for proposal in proposals:
        mine = [(aid, exc) for pid, aid, exc in results if pid == proposal.pk]
        succeeded = sorted(aid for aid, exc in mine if exc is None)
        proposal.refresh_from_db()
        assert proposal.status == Status.APPROVED
        assert proposal.resolution == Resolution.REVIEWERS
        # Votes serialize on the row lock: the third approval decides, the rest find it closed.
        assert len(succeeded) == required, f"{proposal.title}: {len(succeeded)} votes counted"
        recorded = sorted(
            Vote.objects.filter(proposal=proposal).values_list("reviewer_id", flat=True)
        )
        assert recorded == succeeded, f"{proposal.title}: votes lost or double-counted"
        for _, exc in mine:
            if exc is not None:
                assert_votes_closed(exc, Status.APPROVED)
        verbs = Counter(AuditEvent.objects.filter(proposal=proposal).values_list("verb", flat=True))
        assert verbs["proposal.approved"] == 1
        assert verbs["proposal.rejected"] == 0
        assert verbs["proposal.vote_cast"] == required

    print(
        f"\nquorum count {required}: {approver_count} approvers x {proposal_count} proposals "
        f"on {workers} threads in {elapsed:.2f}s (seed {seed}): "
        f"{sum(exc is None for *_, exc in results)} votes counted, "
        f"{sum(exc is not None for *_, exc in results)} refused with 409"
    )
