"""The list read as a UNION ALL of the visibility rule's disjoint arms
(proposals.selectors.proposal_page): the same rows as the rule (`Access.may_view`, and the OR
filter it replaced) for every kind of user and filter, a keyset walk that interleaves the
arms, and the `permissions` of each row and of the detail from `allowed_actions`."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from guardian.shortcuts import assign_perm

from hitl.api import rows
from proposals import selectors, services
from proposals.models import Proposal, Status
from proposals.permissions import (
    REVIEW_ESCALATED,
    SUBMIT,
    access_for,
    allowed_actions,
    reviewable_proposals_arms,
)
from tests.factories import UserFactory, make_service_account, submit

pytestmark = pytest.mark.django_db

LIST = "/api/v1/proposals/"


@pytest.fixture
def crowd(world: Any) -> dict[str, Any]:
    """Every way of seeing a proposal, with rows in each arm: a reviewer who also submits
    (mine on a checkpoint I review, mine elsewhere), an escalation-only reviewer (escalated
    and not), the manager, the agent, decided rows, and rows nobody here may see."""
    escalator = UserFactory(username="esme")
    assign_perm(REVIEW_ESCALATED, escalator, world.checkpoint)
    assign_perm(SUBMIT, world.reviewer, world.checkpoint)
    assign_perm(SUBMIT, world.reviewer, world.other_checkpoint)
    assign_perm(SUBMIT, escalator, world.other_checkpoint)
    other_agent = make_service_account("agent-other", world.other_checkpoint)
    made = [
        submit(world.submitter, world.checkpoint, title=f"agent {i}", priority=p)
        for i, p in enumerate(["low", "critical", "high", "medium", "low", "critical"])
    ]
    made += [
        submit(world.reviewer, world.checkpoint, title="rita's own, reviewed here"),
        submit(world.reviewer, world.other_checkpoint, title="rita's own, elsewhere"),
        submit(escalator, world.other_checkpoint, title="esme's own, elsewhere"),
        submit(other_agent, world.other_checkpoint, title="hidden from rita"),
    ]
    Proposal.objects.filter(pk__in=[made[1].pk, made[3].pk]).update(escalated_at=timezone.now())
    services.proposal_cancel(proposal_id=made[4].pk, actor=world.submitter, reason="dup")
    # Deadlines that interleave the arms, with a tie across two of them.
    now = timezone.now()
    for offset, proposal in zip([5, 1, 3, 2, 4, 1, 1, 2, 6, 7], made, strict=True):
        Proposal.objects.filter(pk=proposal.pk).update(sla_due_at=now + timedelta(hours=offset))
    return {"escalator": escalator, "other_agent": other_agent, "made": made}


def _users(world: Any, crowd: dict[str, Any]) -> list[Any]:
    return [
        world.reviewer,
        world.reviewer2,
        world.manager,
        world.submitter,
        world.other_reviewer,
        world.outsider,
        crowd["escalator"],
        crowd["other_agent"],
    ]


FILTERS = [
    selectors.ProposalFilters(),
    selectors.ProposalFilters(status=[Status.PENDING]),
    selectors.ProposalFilters(status=[Status.PENDING, Status.CANCELLED]),
    selectors.ProposalFilters(reviewable_by_me=True),
    selectors.ProposalFilters(submitted_by_me=True),
    selectors.ProposalFilters(status=[Status.PENDING], checkpoint="elsewhere"),
    selectors.ProposalFilters(priority=["critical", "low"]),
]


def _key(proposal: Proposal) -> tuple[Any, Any]:
    return (proposal.sla_due_at, proposal.pk)


def test_the_arms_read_exactly_the_rule_for_every_user_and_filter(world, crowd):
    everything = sorted(Proposal.objects.select_related("checkpoint"), key=_key)
    for user in _users(world, crowd):
        access = access_for(user)
        for filters in FILTERS:
            page = selectors.proposal_page(access, filters, size=100)
            listed = list(selectors.proposal_list(access, filters))
            assert [p.pk for p in page] == [p.pk for p in listed], (user, filters)
            if filters == selectors.ProposalFilters():
                # The object permission, row by row: no IDOR gap between list and detail.
                assert [p.pk for p in page] == [p.pk for p in everything if access.may_view(p)]
    # The crowd really fills every arm.
    rita = access_for(world.reviewer)
    mine = selectors.proposal_page(rita, selectors.ProposalFilters(submitted_by_me=True), size=9)
    assert len(mine) == 2
    esme = access_for(crowd["escalator"])
    assert {p.title for p in selectors.proposal_page(esme, FILTERS[0], size=9)} == {
        "agent 1",
        "agent 3",
        "esme's own, elsewhere",
    }


# Beyond FILTERS: every parameter the compiled pages stand in for, repeated values, a
# checkpoint that exists and one that does not, and labels (their JSON parameter is not stood
# in for: such pages stay with the ORM).
COMPILED_FILTERS = [
    *FILTERS,
    selectors.ProposalFilters(status=[Status.PENDING, Status.PENDING, Status.CANCELLED]),
    selectors.ProposalFilters(checkpoint="inspection-schedule", priority=["low", "low"]),
    selectors.ProposalFilters(checkpoint="nowhere"),
    selectors.ProposalFilters(region="eu", external_id="x-1", reviewable_by_me=True),
    selectors.ProposalFilters(submitted_by_me=True, status=[Status.PENDING]),
    selectors.ProposalFilters(labels={"team": "ops"}),
]


def _zones(page: list[dict[str, Any]]) -> list[list[Any]]:
    return [[v.tzinfo for v in row.values() if isinstance(v, datetime)] for row in page]


def test_compiled_pages_read_exactly_what_the_orm_builds(world, crowd):
    """`.values()` pages run SQL compiled once per query shape with the values put in its
    parameters: for every user, filter and cursor the rows are the ORM's, in order."""
    Proposal.objects.filter(title="agent 2").update(
        region="eu", external_id="x-1", labels={"team": "ops"}
    )
    selectors._compiled_pages.clear()
    for user in _users(world, crowd):
        access = access_for(user)
        for filters in COMPILED_FILTERS:
            inputs = selectors._PageInputs(access, filters, selectors._checkpoint_id(filters), None)
            walk = selectors._run_orm(
                selectors._page_query(inputs, 100, rows.proposal_rows, "default")
            )
            for after in [None, *((r["sla_due_at"], r["id"]) for r in walk)]:
                inputs = selectors._PageInputs(
                    access, filters, selectors._checkpoint_id(filters), after
                )
                for size in (1, 3):
                    orm = selectors._run_orm(
                        selectors._page_query(inputs, size, rows.proposal_rows, "default")
                    )
                    page = selectors.proposal_page(
                        access, filters, size=size, after=after, shape=rows.proposal_rows
                    )
                    assert page == orm, (user, filters, after, size)
                    # The same datetimes, to their time zone (loaded by psycopg's own loader).
                    assert _zones(page) == _zones(orm)
                    compiled = selectors.compiled_page(inputs, size, rows.proposal_rows, "default")
                    # Left to the ORM only with a JSON parameter or no SQL to run at all.
                    no_sql = filters.checkpoint == "nowhere" or (
                        filters.reviewable_by_me and not reviewable_proposals_arms(access)
                    )
                    assert (compiled is None) == bool(filters.labels or no_sql)
    # Shared by users alike (as many checkpoints per right, the same filters).
    assert len(selectors._compiled_pages) < len(_users(world, crowd)) * len(COMPILED_FILTERS) * 4


def test_a_compiled_page_is_one_statement(world, crowd):
    access = access_for(world.reviewer)
    filters = selectors.ProposalFilters(status=[Status.PENDING])
    selectors.proposal_page(access, filters, size=5, shape=rows.proposal_rows)
    with CaptureQueriesContext(connection) as queries:
        selectors.proposal_page(access, filters, size=5, shape=rows.proposal_rows)
    assert len(queries) == 1
    assert " UNION ALL " in queries[0]["sql"]


def test_a_keyset_walk_interleaves_the_arms_in_order(world, crowd, client_for):
    client = client_for(world.reviewer)
    seen: list[str] = []
    url: str | None = f"{LIST}?page_size=2"
    while url:
        body = client.get(url).json()
        seen += [row["id"] for row in body["results"]]
        url = body["next"]
    access = access_for(world.reviewer)
    expected = sorted(
        (p for p in Proposal.objects.select_related("checkpoint") if access.may_view(p)), key=_key
    )
    assert seen == [str(p.pk) for p in expected]
    # Both arms in the walk, and not one after the other.
    owners = [p.submitted_by_id == world.reviewer.pk for p in expected]
    assert owners.count(True) == 2 and owners.index(True) < len(owners) - 2


def test_the_page_is_one_union_all_of_the_arms(world, crowd, client_for):
    client = client_for(world.reviewer)
    client.get(LIST)  # warm-up: the key's first use
    with CaptureQueriesContext(connection) as captured:
        client.get(f"{LIST}?status=pending")
    [sql] = [q["sql"] for q in captured.captured_queries if "proposals_proposal" in q["sql"]]
    assert sql.count("UNION ALL") == 1, sql  # mine, and others' on checkpoints I review
    assert " OR " not in sql.split("UNION ALL")[0], sql


def _permissions(access: Any, proposal: Proposal) -> dict[str, bool]:
    votes = list(proposal.votes.all())
    return allowed_actions(access, proposal, votes=votes, now=timezone.now()).as_dict()


def test_list_and_detail_permissions_are_allowed_actions(world, crowd, client_for):
    # An approved proposal inside its revocation window: its approver may revoke it.
    world.checkpoint.revocation_window_seconds = 3600
    world.checkpoint.save()
    approved = submit(world.submitter, world.checkpoint, title="approved")
    services.vote_cast(
        proposal_id=approved.pk, reviewer=world.reviewer, decision="approve", revision=1
    )
    assert Proposal.objects.get(pk=approved.pk).status == Status.APPROVED
    keys = {"vote", "revise", "cancel", "revoke", "claim", "manage"}
    shown_revoke = False
    for user in (world.reviewer, world.reviewer2, world.manager, world.submitter):
        client = client_for(user)
        access = access_for(user)
        rows = client.get(f"{LIST}?page_size=200").json()["results"]
        assert rows
        for row in rows:
            proposal = Proposal.objects.select_related("checkpoint").get(pk=row["id"])
            expected = _permissions(access, proposal)
            assert set(expected) == keys
            assert row["permissions"] == expected, (user, proposal.title)
            detail = client.get(f"{LIST}{row['id']}/").json()
            assert detail["permissions"] == expected
            shown_revoke |= expected["revoke"] and user == world.reviewer
    assert shown_revoke
    approved_row = next(
        r
        for r in client_for(world.reviewer).get(f"{LIST}?page_size=200").json()["results"]
        if r["id"] == str(approved.pk)
    )
    assert approved_row["permissions"]["revoke"] is True
    assert approved_row["permissions"]["vote"] is False


def test_permissions_on_list_rows_cost_no_query_per_row(world, crowd, client_for):
    client = client_for(world.manager)
    client.get(LIST)
    with CaptureQueriesContext(connection) as few:
        client.get(f"{LIST}?status=pending")
    for i in range(8):
        submit(world.submitter, world.checkpoint, title=f"more {i}")
    with CaptureQueriesContext(connection) as many:
        body = client.get(f"{LIST}?status=pending").json()
    assert all("permissions" in row for row in body["results"])
    assert len(few.captured_queries) == len(many.captured_queries)
