"""`manage.py bench`: the benchmark harness in bench/ (README "Benchmarks")."""

from __future__ import annotations

import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser


class Command(BaseCommand):
    help = (
        "Start the product as production runs it, and a bare baseline, and measure both in "
        "one run (bench/). --quick: tiny sizes, checks that every path runs."
    )
    requires_system_checks: list[str] = []  # the product's processes run their own checks

    def add_arguments(self, parser: CommandParser) -> None:
        # Everything is bench/cli.py's to parse: one definition of the options.
        parser.add_argument("bench_args", nargs="*", help="see bench/run --help")

    def run_from_argv(self, argv: list[str]) -> None:
        # Options like --quick belong to bench's own parser, not Django's.
        from bench.cli import main

        code = main(argv[2:])
        if code:
            sys.exit(code)

    def handle(self, *args: Any, **options: Any) -> None:  # pragma: no cover (run_from_argv)
        raise CommandError("run through manage.py bench")
