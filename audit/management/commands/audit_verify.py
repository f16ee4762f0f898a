from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from audit.models import AuditEvent
from audit.services import BrokenLink, ChainWalk
from hitl.management.progress import Progress, add_progress_argument, progress_enabled


class Command(BaseCommand):
    help = (
        "Walk every audit hash chain and its anchors and report every broken link (chain, "
        "position, row); exit 1 if there is any. "
        "Streams: constant memory however long the chain or the list of breaks; a progress "
        "bar on standard error when it is a terminal. Exit codes: 0 intact, 1 broken."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--json",
            action="store_true",
            help='one JSON object: {"problems": [{"seq", "event_id", "problem", "chain", '
            '"position"}, ...], '
            '"checked", "broken", "intact"}',
        )
        add_progress_argument(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        walk = ChainWalk()
        total = AuditEvent.objects.count() if progress_enabled(self, options) else None
        with Progress(self, options, total=total, desc="audit events") as bar:
            self._report(_polled(walk, bar), walk, options)
        if walk.broken:
            sys.exit(1)

    def _report(self, problems: Iterator[BrokenLink], walk: ChainWalk, options: Any) -> None:
        if options["json"]:
            # Written as it goes rather than built in memory: a chain re-hashed from the start
            # has as many problems as rows.
            self.stdout.write('{"problems": [', ending="")
            for n, problem in enumerate(problems):
                line = json.dumps(asdict(problem))
                self.stdout.write(("," if n else "") + "\n  " + line, ending="")
            self.stdout.write(
                f'\n], "checked": {walk.checked}, "broken": {walk.broken}, '
                f'"intact": {json.dumps(walk.broken == 0)}}}'
            )
        else:
            for problem in problems:
                self.stderr.write(
                    f"chain {problem.chain} position {problem.position}, seq {problem.seq} "
                    f"(row id {problem.event_id}): {problem.problem}"
                )
            if walk.broken == 0:
                self.stdout.write(
                    self.style.SUCCESS(f"Audit chain intact: {walk.checked} events verified.")
                )
            else:
                self.stderr.write(
                    f"Audit chain broken: {walk.broken} problem(s) in {walk.checked} events."
                )


def _polled(walk: ChainWalk, bar: Progress) -> Iterator[BrokenLink]:
    """The walk's problems, while a thread moves the bar to `walk.checked` twice a second (the
    walk yields only problems, so there is nothing to count between them)."""
    if not bar.enabled:
        yield from walk
        return
    stop = threading.Event()

    def poll() -> None:
        seen = 0
        while not stop.wait(0.5):
            bar.update(walk.checked - seen)
            seen = walk.checked

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield from walk
    finally:
        stop.set()
        thread.join()
        bar.update(walk.checked - _shown(bar))


def _shown(bar: Progress) -> int:
    return int(bar._bar.n) if bar._bar is not None else 0
