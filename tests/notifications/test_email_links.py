"""One-click email links: signed, bound to recipient + proposal + revision + action, expiring,
single-use; GET only shows a confirmation page, POST acts (as the recipient)."""

from __future__ import annotations

import zlib
from datetime import timedelta
from typing import Any

import pytest
import time_machine
from django.conf import settings
from django.core import signing
from django.test import Client
from django.utils import timezone

from audit.models import AuditEvent
from notifications.emails import LINK_SALT, make_action_token, read_action_token
from notifications.models import OutboxEvent, UsedEmailLink
from proposals import services
from proposals.models import Proposal, Vote
from tests.factories import submit

pytestmark = pytest.mark.django_db


def link(token: str) -> str:
    return f"/email/act/{token}/"


def token(
    user: Any, proposal: Proposal, action: str = "approve", revision: int | None = None
) -> str:
    return make_action_token(
        user.pk, proposal.pk, proposal.revision if revision is None else revision, action
    )


def counts() -> tuple[int, int, int, int]:
    return (
        Vote.objects.count(),
        UsedEmailLink.objects.count(),
        AuditEvent.objects.count(),
        OutboxEvent.objects.count(),
    )


def logged_in(user: Any) -> Client:
    client = Client()
    # Fresh from the database: factories.UserFactory sets the password after saving and does
    # not save again, so the in-memory hash (which force_login signs the session with)
    # differs from the stored one.
    client.force_login(type(user).objects.get(pk=user.pk))
    return client


def resign_with_other_action(value: str, action: str) -> str:
    """Rewrite the action inside a token while keeping its signature, as an attacker who
    edits the link would: the payload changes, the signature does not."""
    payload, timestamp, signature = value.rsplit(":", 2)
    assert payload.startswith(".")  # compressed
    raw = zlib.decompress(signing.b64_decode(payload[1:].encode())).decode()
    assert '"a":"approve"' in raw
    forged = raw.replace('"a":"approve"', f'"a":"{action}"')
    forged_payload = "." + signing.b64_encode(zlib.compress(forged.encode())).decode()
    return f"{forged_payload}:{timestamp}:{signature}"


@pytest.fixture
def pending(world: Any) -> Proposal:
    return submit(world.submitter, world.checkpoint, title="Inspect the north wing")


def test_get_shows_a_confirmation_and_changes_nothing(world, pending):
    token_value = token(world.reviewer, pending)
    before = counts()
    for _ in range(3):  # mail scanners follow links, sometimes more than once
        response = Client().get(link(token_value))
        assert response.status_code == 200
        assert b"Inspect the north wing" in response.content
        assert b'method="post"' in response.content
    assert counts() == before
    pending.refresh_from_db()
    assert pending.status == "pending"
    # Looking did not use the link up.
    assert Client().post(link(token_value)).status_code == 200


def test_post_votes_as_the_recipient(world, pending):
    value = token(world.reviewer, pending)
    assert Client().get(link(value)).status_code == 200
    response = Client().post(link(value))
    assert response.status_code == 200, response.content
    assert b"approved" in response.content

    pending.refresh_from_db()
    assert pending.status == "approved"
    assert pending.resolution == "reviewers"
    vote = Vote.objects.get(proposal=pending)
    assert (vote.reviewer, vote.decision, vote.revision) == (world.reviewer, "approve", 1)
    verbs = dict(AuditEvent.objects.filter(proposal=pending).values_list("verb", "actor_id"))
    assert verbs["proposal.vote_cast"] == world.reviewer.pk
    assert verbs["proposal.approved"] == world.reviewer.pk
    assert UsedEmailLink.objects.get().user == world.reviewer


def test_post_by_the_logged_in_recipient_is_fine(world, pending):
    client = logged_in(world.reviewer)
    assert client.post(link(token(world.reviewer, pending))).status_code == 200
    pending.refresh_from_db()
    assert pending.status == "approved"


def test_a_link_works_once(world, pending):
    value = token(world.reviewer, pending, "reject")
    assert Client().post(link(value), {"comment": "too risky"}).status_code == 200
    before = counts()
    again = Client().post(link(value), {"comment": "too risky"})
    assert again.status_code == 409
    assert b"already been used" in again.content
    assert Client().get(link(value)).status_code == 409
    assert counts() == before


def test_an_expired_link_is_refused(world, pending):
    value = token(world.reviewer, pending)
    max_age = timedelta(hours=settings.HITL_EMAIL_LINK_MAX_AGE_HOURS)
    with time_machine.travel(timezone.now() + max_age + timedelta(minutes=1)):
        before = counts()
        assert Client().get(link(value)).status_code == 410
        response = Client().post(link(value))
        assert response.status_code == 410
        assert b"expired" in response.content
        assert counts() == before
    # Just inside the window it still works.
    with time_machine.travel(timezone.now() + max_age - timedelta(minutes=5)):
        assert Client().get(link(value)).status_code == 200


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t[:-2] + ("AA" if not t.endswith("AA") else "BB"),
        lambda t: t.replace(":", ";", 1),
        lambda t: signing.dumps({"u": 1, "p": "x", "r": 1, "a": "approve", "n": "n"}),  # no salt
        lambda t: signing.dumps({"u": 1}, salt=LINK_SALT),  # signed, but not a link
        lambda t: "garbage",
    ],
)
def test_a_tampered_link_is_refused(world, pending, mangle):
    bad = mangle(token(world.reviewer, pending))
    before = counts()
    assert Client().get(link(bad)).status_code == 400
    assert Client().post(link(bad)).status_code == 400
    assert counts() == before


def test_the_action_cannot_be_changed(world, pending):
    value = token(world.reviewer, pending, "approve")
    forged = resign_with_other_action(value, "reject")
    with pytest.raises(signing.BadSignature, match="does not match"):
        read_action_token(forged)
    before = counts()
    response = Client().post(link(forged), {"comment": "nope"})
    assert response.status_code == 400
    assert counts() == before
    pending.refresh_from_db()
    assert pending.status == "pending"
    # The genuine link is untouched by the attempt.
    assert Client().post(link(value)).status_code == 200


def test_another_logged_in_user_cannot_use_it(world, pending):
    value = token(world.reviewer, pending)
    for intruder in (world.reviewer2, world.manager, world.outsider):
        client = logged_in(intruder)
        before = counts()
        assert client.get(link(value)).status_code == 403
        assert client.post(link(value)).status_code == 403
        assert counts() == before
    assert Client().post(link(value)).status_code == 200  # still the recipient's


def test_a_link_for_someone_who_may_not_review_does_nothing(world, pending):
    before = counts()
    response = Client().post(link(token(world.other_reviewer, pending)))
    assert response.status_code == 404
    assert counts() == before


def test_the_submitters_own_link_cannot_approve(world, pending):
    before = counts()
    response = Client().post(link(token(world.submitter, pending)))
    assert response.status_code == 403
    assert counts() == before
    pending.refresh_from_db()
    assert pending.status == "pending"


def test_already_decided_is_a_conflict_and_does_not_burn_the_link(world, pending):
    value = token(world.reviewer, pending)
    services.vote_cast(
        proposal_id=pending.pk, reviewer=world.reviewer2, decision="approve", revision=1
    )
    before = counts()
    response = Client().post(link(value))
    assert response.status_code == 409
    assert b"votes are closed" in response.content
    assert counts() == before  # no vote, and the nonce insert was rolled back
    assert not UsedEmailLink.objects.exists()


def test_a_link_for_a_superseded_revision_is_refused(world, pending):
    value = token(world.reviewer, pending, "approve")
    services.vote_cast(
        proposal_id=pending.pk,
        reviewer=world.reviewer2,
        decision="request_changes",
        revision=1,
        comment="use the east entrance",
    )
    services.proposal_revise(
        proposal_id=pending.pk, actor=world.submitter, payload={"x": 2, "entrance": "east"}
    )
    pending.refresh_from_db()
    assert (pending.status, pending.revision) == ("pending", 2)

    before = counts()
    response = Client().post(link(value))
    assert response.status_code == 409
    assert b"the current revision is 2" in response.content
    assert counts() == before
    pending.refresh_from_db()
    assert pending.status == "pending"
    # A link for the current revision works.
    assert Client().post(link(token(world.reviewer, pending, "approve"))).status_code == 200


def test_a_reason_is_required_to_reject_and_the_link_survives_without_one(world, pending):
    value = token(world.reviewer, pending, "reject")
    page = Client().get(link(value))
    assert b"(required)" in page.content

    before = counts()
    response = Client().post(link(value), {"comment": "  "})
    assert response.status_code == 422
    assert counts() == before

    done = Client().post(link(value), {"comment": "wrong building"})
    assert done.status_code == 200
    pending.refresh_from_db()
    assert pending.status == "rejected"
    assert Vote.objects.get().comment == "wrong building"


def test_a_link_for_an_unknown_proposal_or_user_is_refused(world, pending):
    ghost = make_action_token(
        world.reviewer.pk, "00000000-0000-0000-0000-000000000000", 1, "approve"
    )
    assert Client().get(link(ghost)).status_code == 400
    world.reviewer.is_active = False
    world.reviewer.save(update_fields=["is_active"])
    assert Client().post(link(token(world.reviewer, pending))).status_code == 400
    assert not Vote.objects.exists()


def test_only_get_and_post(world, pending):
    value = token(world.reviewer, pending)
    assert Client().put(link(value)).status_code == 405
    assert Client().delete(link(value)).status_code == 405
    assert not Vote.objects.exists()


def test_unknown_actions_cannot_be_minted(world, pending):
    with pytest.raises(ValueError):
        make_action_token(world.reviewer.pk, pending.pk, 1, "cancel")


def test_the_confirmation_form_works_with_csrf_enforced(world, pending):
    """As a browser does it: the page carries the CSRF token its POST needs."""
    client = Client(enforce_csrf_checks=True)
    value = token(world.reviewer, pending)
    page = client.get(link(value)).content.decode()
    assert client.post(link(value)).status_code == 403  # no token: CSRF refuses
    assert not Vote.objects.exists()
    csrf = page.split('name="csrfmiddlewaretoken" value="', 1)[1].split('"', 1)[0]
    response = client.post(link(value), {"csrfmiddlewaretoken": csrf})
    assert response.status_code == 200
    pending.refresh_from_db()
    assert pending.status == "approved"
