"""Shared fixtures: named personas around one checkpoint, and API clients that authenticate
the way integrators and reviewers do (bearer keys)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import pytest
from guardian.shortcuts import assign_perm
from rest_framework.test import APIClient

from proposals.models import Checkpoint
from proposals.permissions import MANAGE, REVIEW
from tests.factories import (
    CheckpointFactory,
    GroupFactory,
    UserFactory,
    make_service_account,
    token_for,
)


@dataclass
class World:
    checkpoint: Checkpoint
    other_checkpoint: Checkpoint
    submitter: Any  # service account with submit on `checkpoint`
    reviewer: Any  # in the approver group of `checkpoint`
    reviewer2: Any  # in the approver group of `checkpoint`
    other_reviewer: Any  # reviews `other_checkpoint` only: non-eligible here
    manager: Any  # manage_checkpoint on `checkpoint`
    outsider: Any  # authenticated, no grants at all


@pytest.fixture
def world(db: None) -> World:
    checkpoint = CheckpointFactory(slug="inspection-schedule")
    other = CheckpointFactory(slug="elsewhere")
    approvers = GroupFactory(name="approvers")
    other_approvers = GroupFactory(name="other-approvers")
    assign_perm(REVIEW, approvers, checkpoint)
    assign_perm(REVIEW, other_approvers, other)
    reviewer = UserFactory(username="rita")
    reviewer2 = UserFactory(username="raj")
    reviewer.groups.add(approvers)
    reviewer2.groups.add(approvers)
    other_reviewer = UserFactory(username="olga")
    other_reviewer.groups.add(other_approvers)
    manager = UserFactory(username="mona")
    assign_perm(MANAGE, manager, checkpoint)
    return World(
        checkpoint=checkpoint,
        other_checkpoint=other,
        submitter=make_service_account("agent-smith", checkpoint),
        reviewer=reviewer,
        reviewer2=reviewer2,
        other_reviewer=other_reviewer,
        manager=manager,
        outsider=UserFactory(username="otto"),
    )


@pytest.fixture
def client_for() -> Any:
    """client_for(user) -> an APIClient sending that user's fresh bearer key."""

    def make(user: Any | None) -> APIClient:
        client = APIClient()
        if user is not None:
            client.credentials(HTTP_AUTHORIZATION=f"Bearer {token_for(user)}")
        return client

    return make


@pytest.fixture
def private_rights_version(monkeypatch: pytest.MonkeyPatch) -> Any:
    """A rights version of this test's own, and the process's rights caches empty before and
    after: other processes on the shared Redis move the real version at any moment, and the
    reload of the caller's rights that follows would blur a test's statement counts."""
    from notifications import live
    from proposals.permissions import forget_rights

    monkeypatch.setattr(live, "RIGHTS_VERSION_KEY", f"test-rights-{uuid.uuid4().hex}")
    forget_rights()
    yield
    forget_rights()


@pytest.fixture
def psycopg_commands(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """What psycopg sends on its own (BEGIN, COMMIT, ROLLBACK), outside any statement."""
    import psycopg

    sent: list[bytes] = []
    real = psycopg.Connection._exec_command

    def spy(self: Any, command: Any, *args: Any, **kwargs: Any) -> Any:
        sent.append(bytes(command) if isinstance(command, bytes | bytearray) else b"?")
        return real(self, command, *args, **kwargs)

    monkeypatch.setattr(psycopg.Connection, "_exec_command", spy)
    return sent


@pytest.fixture(scope="session", autouse=True)
def _end_stray_database_sessions(django_db_setup: None, django_db_blocker: Any) -> Any:
    """Subprocess tests (workers killed mid-task, servers) can leave a session on the test
    database for a moment; end them before pytest-django drops it, or the drop fails and the
    database is left behind."""
    yield
    from django.db import connection

    with django_db_blocker.unblock(), connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup: None, django_db_blocker: Any) -> None:
    """The test database commits without waiting for its WAL flush. Durability after a crash
    means nothing for a database dropped at the end of the run, and the suite makes tens of
    thousands of commits (subprocess servers and workers included: the setting is the
    database's default, so every new connection takes it)."""
    from django.db import connection

    with django_db_blocker.unblock(), connection.cursor() as cursor:
        name = connection.settings_dict["NAME"]
        cursor.execute(f'ALTER DATABASE "{name}" SET synchronous_commit TO off')
        cursor.execute("SET synchronous_commit TO off")
