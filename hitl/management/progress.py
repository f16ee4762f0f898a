"""What every management command shares: the progress bar, `--no-progress`, and exit codes.

Exit codes (README, "Ops commands"): 0 done and nothing wrong; 1 the command ran and found (or
left) a problem: a broken audit chain, proposals it could not decide, an unhealthy install;
2 it refused to run: bad arguments, an unknown user or checkpoint, a guard such as the
production check of seed_demo. argparse already exits 2 on unknown options.

The progress bar goes to standard error (standard output carries the data: JSON Lines, CSV)
and only when standard error is a terminal, so pipes, cron mails and CI logs stay clean.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import Any, TextIO, TypeVar

from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

T = TypeVar("T")

EXIT_OK = 0
EXIT_PROBLEM = 1
EXIT_REFUSED = 2


def refuse(message: str) -> CommandError:
    """A CommandError that exits 2: the command did not run (usage, unknown names, guards)."""
    return CommandError(message, returncode=EXIT_REFUSED)


def problem(message: str) -> CommandError:
    """A CommandError that exits 1: the command ran and found or left a problem."""
    return CommandError(message, returncode=EXIT_PROBLEM)


def add_progress_argument(parser: CommandParser) -> None:
    parser.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bar (it is drawn on standard error, and only when that is a terminal)",
    )


def _stream_of(command: BaseCommand) -> TextIO:
    # Django's OutputWrapper appends a newline to every write, which would turn tqdm's
    # carriage-return redraws into one line per update: draw on the stream it wraps.
    return getattr(command.stderr, "_out", sys.stderr)


def progress_enabled(command: BaseCommand, options: dict[str, Any]) -> bool:
    stream = _stream_of(command)
    isatty = getattr(stream, "isatty", None)
    return not options.get("no_progress") and callable(isatty) and bool(isatty())


class Progress:
    """A tqdm bar (or nothing) that commands update by hand or wrap an iterable with."""

    def __init__(
        self, command: BaseCommand, options: dict[str, Any], *, total: int | None, desc: str
    ) -> None:
        self.enabled = progress_enabled(command, options)
        self._bar: tqdm[Any] | None = None
        if self.enabled:
            self._bar = tqdm(
                total=total,
                desc=desc,
                file=_stream_of(command),
                unit=" rows",
                unit_scale=False,
                mininterval=0.5,
                dynamic_ncols=True,
                leave=True,
            )

    def update(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def wrap(self, items: Iterable[T]) -> Iterator[T]:
        for item in items:
            yield item
            self.update()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
