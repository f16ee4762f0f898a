"""Factories for the domain. Proposals are made through the real service, never by hand, so
every test row has its revision, audit event and outbox row like production's."""

from __future__ import annotations

from typing import Any

import factory
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from guardian.shortcuts import assign_perm

from hitl.keys import api_key_create, service_account_create
from proposals import services
from proposals.models import Checkpoint, Proposal
from proposals.permissions import REVIEW, SUBMIT

User = get_user_model()


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = User
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda o: f"{o.username}@example.test")
    password = factory.django.Password("pw-for-tests-123")


class GroupFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Group

    name = factory.Sequence(lambda n: f"group{n}")


class CheckpointFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Checkpoint

    slug = factory.Sequence(lambda n: f"checkpoint-{n}")
    name = factory.LazyAttribute(lambda o: o.slug.replace("-", " ").title())


def make_service_account(username: str | None = None, *checkpoints: Checkpoint) -> Any:
    user = service_account_create(username=username or f"agent-{UserFactory._meta.next_sequence()}")
    for checkpoint in checkpoints:
        assign_perm(SUBMIT, user, checkpoint)
    return user


def grant_review(group: Group, checkpoint: Checkpoint) -> None:
    assign_perm(REVIEW, group, checkpoint)


def token_for(user: Any) -> str:
    return api_key_create(user=user, name="test").token


def submit(
    submitter: Any, checkpoint: Checkpoint, *, payload: dict[str, Any] | None = None, **fields: Any
) -> Proposal:
    fields.setdefault("title", "A proposal")
    data = services.ProposalInput(payload=payload if payload is not None else {"x": 1}, **fields)
    return services.proposal_submit(submitter=submitter, checkpoint=checkpoint, data=data)
