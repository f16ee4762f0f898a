"""The relay kick after a commit, off the request's path in web processes.

A commit that wrote outbox events asks a worker to relay them (notifications.tasks.kick_relay:
a Redis round trip, and a publish when no run is already on its way). In a web process that
round trip came after the commit and before the answer, on every write. There the commit only
raises a flag, and one thread per process kicks for every commit that raised it meanwhile: the
answer goes out at once, and a burst of commits costs one kick, not one each. The guarantee is
the kick's own: events are relayed by the run it queues, or by the beat's periodic relay if
the kick fails or the process ends before it ran. Everywhere else (workers, commands, tests)
the kick runs right after the commit, as before.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from django.conf import settings

logger = logging.getLogger(__name__)


class BackgroundKicks:
    """One daemon thread that runs `kick` once for every batch of requests: a request made
    while a kick runs is served by another kick after it (nothing asked is left unkicked)."""

    def __init__(self, kick: Callable[[], None]) -> None:
        self._kick = kick
        self._wanted = threading.Event()
        self._started = threading.Lock()
        self._thread: threading.Thread | None = None

    def request(self) -> None:
        self._wanted.set()
        if self._thread is None:  # started on first use: never before a fork
            with self._started:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name="relay-kicks", daemon=True
                    )
                    self._thread.start()

    def _run(self) -> None:
        while True:
            self._wanted.wait()
            self._wanted.clear()
            try:
                self._kick()
            except Exception:  # kick_relay logs its own failures; this is a last resort
                logger.exception("relay kick failed; the periodic relay will pick the events up")


_background: BackgroundKicks | None = None


def kick_in_background() -> None:
    """Make this process's kicks background ones (the web processes' ASGI app calls it),
    unless settings.HITL_RELAY_KICKS_IN_BACKGROUND is off (the test process)."""
    global _background
    if _background is None and settings.HITL_RELAY_KICKS_IN_BACKGROUND:
        _background = BackgroundKicks(_kick_now)


def after_commit() -> None:
    """The on-commit callback of a transaction that wrote outbox events."""
    if _background is not None:
        _background.request()
    else:
        _kick_now()


def _kick_now() -> None:
    from notifications import tasks

    tasks.kick_relay()  # looked up at call time: tests replace it
