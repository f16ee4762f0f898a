"""The relay kick after a commit (notifications.kicks): in a web process one background thread
kicks for every commit that asked meanwhile, so no request waits for the kick's Redis round
trip; every commit is still followed by a kick that starts after it."""

from __future__ import annotations

import threading
import time

import pytest
from django.db import transaction

from notifications import kicks, tasks
from tests.factories import submit


def _wait_for(condition, seconds: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_a_request_during_a_kick_gets_a_kick_after_it():
    started, release = threading.Event(), threading.Event()
    runs: list[int] = []

    def kick() -> None:
        runs.append(len(runs))
        if len(runs) == 1:
            started.set()
            release.wait(5)

    background = kicks.BackgroundKicks(kick)
    background.request()
    assert started.wait(5)
    for _ in range(10):  # commits while the first kick runs: one kick after it serves them all
        background.request()
    release.set()
    _wait_for(lambda: len(runs) == 2)
    time.sleep(0.05)
    assert runs == [0, 1]


def test_a_failing_kick_does_not_stop_later_ones():
    calls: list[str] = []

    def kick() -> None:
        calls.append("kick")
        if len(calls) == 1:
            raise RuntimeError("broker down")

    background = kicks.BackgroundKicks(kick)
    background.request()
    _wait_for(lambda: len(calls) == 1)
    background.request()
    _wait_for(lambda: len(calls) == 2)


@pytest.mark.django_db(transaction=True)
def test_a_web_process_commit_returns_before_its_kick(world, monkeypatch, settings):
    settings.HITL_RELAY_KICKS_IN_BACKGROUND = True
    monkeypatch.setattr(kicks, "_background", None)
    kicks.kick_in_background()
    committer = threading.get_ident()
    release = threading.Event()
    kicked: list[int] = []

    def slow_kick() -> None:
        release.wait(5)
        kicked.append(threading.get_ident())

    monkeypatch.setattr(tasks, "kick_relay", slow_kick)
    try:
        with transaction.atomic():
            submit(world.submitter, world.checkpoint)
        assert kicked == []  # the commit did not wait for the kick
        release.set()
        _wait_for(lambda: len(kicked) == 1)
        assert kicked[0] != committer
    finally:
        release.set()


@pytest.mark.django_db(transaction=True)
def test_elsewhere_the_kick_runs_at_commit(world, monkeypatch):
    monkeypatch.setattr(kicks, "_background", None)
    kicks.kick_in_background()  # the test settings keep kicks in the committing thread
    kicked: list[int] = []
    monkeypatch.setattr(tasks, "kick_relay", lambda: kicked.append(threading.get_ident()))
    submit(world.submitter, world.checkpoint)
    assert kicked == [threading.get_ident()]
