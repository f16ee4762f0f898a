"""Real threads behind one barrier, for race tests (each thread closes its own connection)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from django.db import connection


def run_in_threads(
    workers: int, work: Callable[[int, threading.Barrier], Any], *, timeout: float = 120
) -> list[Any]:
    """Run `work(index, barrier)` in threads sharing one barrier; return their results in
    order, re-raise the first exception."""
    barrier = threading.Barrier(workers)
    results: list[Any] = [None] * workers
    errors: list[BaseException] = []

    def body(index: int) -> None:
        try:
            results[index] = work(index, barrier)
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()  # nobody waits forever for a thread that died
        finally:
            connection.close()  # this thread's connection, not the test's

    threads = [threading.Thread(target=body, args=(i,), name=f"timer-{i}") for i in range(workers)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "a worker thread hung"
    if errors:
        raise errors[0]
    return results
