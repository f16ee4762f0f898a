"""Email: new-work digests (at most one mail per reviewer per window) and the instant mails
(reminders, escalations, SLA breaches, decisions), each to the right people only."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
import time_machine
from django.conf import settings
from django.core import mail
from django.test import Client
from django.utils import timezone
from guardian.shortcuts import assign_perm

from notifications import emails, relay, tasks
from notifications.models import DigestLog, EmailNotice, OutboxEvent
from proposals import services, sweeps
from proposals.models import Proposal
from proposals.permissions import REVIEW_ESCALATED, SUBMIT
from tests.factories import GroupFactory, UserFactory, submit

pytestmark = pytest.mark.django_db

LINK = re.compile(re.escape(settings.HITL_PUBLIC_URL) + r"(/email/act/[^/\s\"<]+/)")


def mails_to(address: str) -> list[Any]:
    return [m for m in mail.outbox if m.to == [address]]


def recipients() -> list[str]:
    return sorted(address for m in mail.outbox for address in m.to)


def html_of(message: Any) -> str:
    (html, mimetype), *_ = message.alternatives
    assert mimetype == "text/html"
    return str(html)


def links_in(text: str) -> list[str]:
    return LINK.findall(text)


def action_of(url: str) -> tuple[str, str]:
    link = emails.read_action_token(url.rstrip("/").rsplit("/", 1)[1])
    return link.proposal_id, link.action


def event_id(proposal: Proposal, topic: str) -> str:
    return str(OutboxEvent.objects.get(proposal=proposal, topic=topic).pk)


def phase(name: str) -> sweeps.Phase:
    return next(p for p in sweeps.PHASES if p.name == name)


@pytest.fixture(autouse=True)
def empty_outbox() -> None:
    mail.outbox = []


# --- digests -------------------------------------------------------------------------------


def test_new_work_is_noted_for_each_eligible_reviewer(world):
    for title in ("First", "Second"):
        submit(world.submitter, world.checkpoint, title=title)
    relay.relay_all()
    noted = set(EmailNotice.objects.values_list("user__username", "proposal__title"))
    # Not the manager, olga (another checkpoint's reviewer), otto, nor the agent.
    assert noted == {("rita", "First"), ("rita", "Second"), ("raj", "First"), ("raj", "Second")}
    assert not EmailNotice.objects.filter(sent_at__isnull=False).exists()
    # Relaying again notes nothing twice.
    OutboxEvent.objects.update(dispatched_at=None)
    relay.relay_all()
    assert EmailNotice.objects.count() == 4


def test_a_notice_waits_once_per_reviewer_until_its_digest_is_sent(world):
    proposal = submit(world.submitter, world.checkpoint)
    reviewers = [world.reviewer.pk, world.reviewer2.pk]
    assert emails.queue_new_work([(proposal, reviewers)]) == 2
    emails.queue_new_work([(proposal, [world.reviewer.pk])])  # already waiting: kept as is
    waiting = EmailNotice.objects.filter(sent_at__isnull=True)
    assert sorted(waiting.values_list("user_id", flat=True)) == sorted(reviewers)
    waiting.filter(user=world.reviewer).update(sent_at=timezone.now())
    emails.queue_new_work([(proposal, reviewers)])  # new work again for rita's next digest
    assert sorted(waiting.values_list("user_id", flat=True)) == sorted(reviewers)
    assert EmailNotice.objects.count() == 3
    assert emails.queue_new_work([]) == 0


def test_one_digest_per_reviewer_with_text_html_and_working_links(world):
    first = submit(world.submitter, world.checkpoint, title="Inspect the boiler")
    second = submit(world.submitter, world.checkpoint, title="Replace the valve")
    relay.relay_all()

    assert emails.send_due_digests() == 2
    assert recipients() == ["raj@example.test", "rita@example.test"]
    (to_rita,) = mails_to("rita@example.test")
    assert to_rita.subject == "2 proposal(s) waiting for your review"
    for part in (to_rita.body, html_of(to_rita)):
        assert "Inspect the boiler" in part and "Replace the valve" in part
    text_links, html_links = links_in(to_rita.body), links_in(html_of(to_rita))
    assert len(text_links) == 6  # approve, reject, request changes, for each of 2
    assert text_links == html_links  # the same tokens in both parts

    # Every notice is now sent; running again sends nothing.
    assert not EmailNotice.objects.filter(sent_at__isnull=True).exists()
    assert emails.send_due_digests() == 0
    assert len(mail.outbox) == 2

    # The links work: GET confirms, POST acts, as the mail's recipient.
    approve_first = text_links[0]
    assert Client().get(approve_first).status_code == 200
    assert Client().post(approve_first).status_code == 200
    first.refresh_from_db()
    assert (first.status, first.votes.get().reviewer) == ("approved", world.reviewer)

    (to_raj,) = mails_to("raj@example.test")
    raj_links = links_in(to_raj.body)
    reject_second = next(u for u in raj_links if action_of(u) == (str(second.pk), "reject"))
    assert Client().post(reject_second, {"comment": "valve is fine"}).status_code == 200
    second.refresh_from_db()
    assert (second.status, second.votes.get().reviewer) == ("rejected", world.reviewer2)


def test_work_arriving_inside_the_window_waits_for_the_next_digest(world):
    submit(world.submitter, world.checkpoint, title="Early")
    relay.relay_all()
    start = timezone.now()
    with time_machine.travel(start, tick=False):
        assert emails.send_due_digests() == 2

    window = timedelta(minutes=settings.HITL_EMAIL_DIGEST_MINUTES)
    with time_machine.travel(start + window / 2, tick=False):
        submit(world.submitter, world.checkpoint, title="Late")
        submit(world.submitter, world.checkpoint, title="Later")
        relay.relay_all()
        assert emails.send_due_digests() == 0
        assert len(mail.outbox) == 2
        assert EmailNotice.objects.filter(sent_at__isnull=True).count() == 4

    with time_machine.travel(start + window - timedelta(seconds=1), tick=False):
        assert emails.send_due_digests() == 0

    with time_machine.travel(start + window + timedelta(seconds=1), tick=False):
        assert emails.send_due_digests() == 2
        assert emails.send_due_digests() == 0
    later = mail.outbox[2:]
    assert sorted(m.to[0] for m in later) == ["raj@example.test", "rita@example.test"]
    for message in later:
        assert "Late" in message.body and "Later" in message.body and "Early" not in message.body
        assert message.subject.startswith("2 proposal(s)")
    assert not EmailNotice.objects.filter(sent_at__isnull=True).exists()


def test_a_digest_never_lists_work_that_is_already_decided(world):
    decided = submit(world.submitter, world.checkpoint, title="Decided meanwhile")
    open_ = submit(world.submitter, world.checkpoint, title="Still open")
    relay.relay_all()
    services.vote_cast(
        proposal_id=decided.pk, reviewer=world.reviewer2, decision="approve", revision=1
    )
    assert emails.send_due_digests() == 2
    for message in mail.outbox:
        assert "Still open" in message.body
        assert "Decided meanwhile" not in message.body
        assert message.subject.startswith("1 proposal(s)")
    assert open_.status == "pending"


def test_a_digest_that_sends_nothing_does_not_hold_back_the_next(world):
    """Flood guard: at most one mail per window. When every noted proposal was decided before
    the digest ran, no mail goes out, so the window must not start: new work arriving next
    should be mailed on the next run, not a whole window later."""
    decided = submit(world.submitter, world.checkpoint, title="Decided before the digest")
    relay.relay_all()
    services.vote_cast(
        proposal_id=decided.pk, reviewer=world.reviewer2, decision="approve", revision=1
    )
    assert emails.send_due_digests() == 0
    assert mail.outbox == []

    submit(world.submitter, world.checkpoint, title="Real new work")
    relay.relay_all()
    sent = emails.send_due_digests()
    logged = sorted(DigestLog.objects.values_list("user__username", flat=True))
    assert sent == 2, (
        f"no digest was ever mailed, yet the flood guard (DigestLog for {logged}) holds the "
        f"new work back for {settings.HITL_EMAIL_DIGEST_MINUTES} minutes"
    )


def test_reviewers_without_an_address_are_skipped(world):
    world.reviewer.email = ""
    world.reviewer.save(update_fields=["email"])
    submit(world.submitter, world.checkpoint)
    relay.relay_all()
    emails.send_due_digests()
    assert recipients() == ["raj@example.test"]


# --- instant mails -------------------------------------------------------------------------


def test_reminders_go_to_eligible_reviewers_who_have_not_voted(world):
    world.checkpoint.quorum_rule = "count"
    world.checkpoint.quorum_count = 2
    world.checkpoint.remind_after_seconds = 60
    world.checkpoint.save()
    proposal = submit(world.submitter, world.checkpoint, title="Needs two")
    services.vote_cast(
        proposal_id=proposal.pk, reviewer=world.reviewer, decision="approve", revision=1
    )
    assert sweeps.run_phase(phase("reminder"), now=timezone.now() + timedelta(seconds=61)) == 1

    tasks.send_event_email(event_id(proposal, "proposal.reminder"))
    assert recipients() == ["raj@example.test"]
    (message,) = mail.outbox
    assert message.subject == "Reminder: Needs two"
    assert len(message.alternatives) == 1

    approve = links_in(message.body)[0]
    assert Client().post(approve).status_code == 200
    proposal.refresh_from_db()
    assert proposal.status == "approved"

    # Decided since: a late-running reminder task mails nobody.
    mail.outbox = []
    tasks.send_event_email(event_id(proposal, "proposal.reminder"))
    assert mail.outbox == []


def test_escalations_go_to_the_escalation_holders(world):
    escalation = GroupFactory(name="night-shift")
    eve = UserFactory(username="eve")
    eve.groups.add(escalation)
    assign_perm(REVIEW_ESCALATED, escalation, world.checkpoint)
    world.checkpoint.escalate_after_seconds = 120
    world.checkpoint.save()
    proposal = submit(world.submitter, world.checkpoint, title="Stuck")

    assert sweeps.run_phase(phase("escalation"), now=timezone.now() + timedelta(seconds=121)) == 1
    tasks.send_event_email(event_id(proposal, "proposal.escalated"))
    assert recipients() == ["eve@example.test"]
    (message,) = mail.outbox
    assert message.subject == "Escalated to you: Stuck"

    # Escalated, eve may now act on it from the mail.
    reject = next(u for u in links_in(message.body) if action_of(u)[1] == "reject")
    assert Client().post(reject, {"comment": "not tonight"}).status_code == 200
    proposal.refresh_from_db()
    assert (proposal.status, proposal.votes.get().reviewer) == ("rejected", eve)


def test_sla_breaches_go_to_the_managers(world):
    proposal = submit(world.submitter, world.checkpoint, title="Slow", priority="critical")
    later = proposal.sla_due_at + timedelta(seconds=1)
    assert sweeps.run_phase(phase("sla"), now=later) == 1
    tasks.send_event_email(event_id(proposal, "proposal.sla_breached"))
    assert recipients() == ["mona@example.test"]
    assert mail.outbox[0].subject == "SLA breached: Slow"
    assert links_in(mail.outbox[0].body) == []  # managers open it; no one-click votes


@pytest.mark.parametrize(
    ("decision", "comment", "topic"),
    [
        ("approve", "", "proposal.approved"),
        ("reject", "no", "proposal.rejected"),
        ("request_changes", "smaller please", "proposal.changes_requested"),
    ],
)
def test_decisions_are_mailed_to_human_submitters_only(world, decision, comment, topic):
    hugo = UserFactory(username="hugo")
    assign_perm(SUBMIT, hugo, world.checkpoint)
    world.submitter.email = "agent-smith@example.test"  # an address, so silence means policy
    world.submitter.save(update_fields=["email"])
    by_human = submit(hugo, world.checkpoint, title="Human's")
    by_agent = submit(world.submitter, world.checkpoint, title="Agent's")
    for proposal in (by_human, by_agent):
        services.vote_cast(
            proposal_id=proposal.pk,
            reviewer=world.reviewer,
            decision=decision,
            revision=1,
            comment=comment,
        )
        tasks.send_event_email(event_id(proposal, topic))

    assert recipients() == ["hugo@example.test"]
    status = topic.split(".")[1].replace("_", " ")
    assert mail.outbox[0].subject == f"Human's: {status}"


def test_cancellations_and_revocations_reach_the_human_submitter(world):
    hugo = UserFactory(username="hugo")
    assign_perm(SUBMIT, hugo, world.checkpoint)
    cancelled = submit(hugo, world.checkpoint, title="Withdrawn")
    services.proposal_cancel(proposal_id=cancelled.pk, actor=hugo, reason="not needed")
    revoked = submit(hugo, world.checkpoint, title="Second thoughts")
    services.vote_cast(
        proposal_id=revoked.pk, reviewer=world.reviewer, decision="approve", revision=1
    )
    services.proposal_revoke(proposal_id=revoked.pk, actor=world.manager, reason="wrong site")
    tasks.send_event_email(event_id(cancelled, "proposal.cancelled"))
    tasks.send_event_email(event_id(revoked, "proposal.revoked"))
    assert [m.subject for m in mail.outbox] == ["Withdrawn: cancelled", "Second thoughts: rejected"]
    assert recipients() == ["hugo@example.test"] * 2


def test_event_mail_tasks_ignore_unknown_ids(world):
    tasks.send_event_email("00000000-0000-0000-0000-000000000000")
    assert mail.outbox == []
