"""`python -m hub`: one argparse dispatcher; each command lives in its own module.

A command module exposes `register(subparsers) -> argparse.ArgumentParser`, which adds its
parser and sets `func` (the handler: `args -> exit code`). Add the module's name to
`COMMAND_MODULES` to make it appear. Bad input always ends in one `error: ...` line on
stderr and exit code 2, whether argparse or the handler finds it.

Example:
    >>> main(["feedback", "stats", "--repo", "/no/such/folder"])
    2
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import NoReturn

from hub.errors import FlywheelError
from tasks import InvalidInput

COMMAND_MODULES = ("hub.feedback.cli", "hub.space", "hub.arena", "hub.online")


class OneLineParser(argparse.ArgumentParser):
    """Reports usage errors as one line (and exit code 2) instead of the usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The `python -m hub` parser with every command of `COMMAND_MODULES` registered."""
    parser = OneLineParser(prog="python -m hub", description="Flywheel's Hub tools.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns its exit code (2 with one line on stderr for bad input)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        return int(args.func(args) or 0)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 2
    except (FlywheelError, InvalidInput) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
