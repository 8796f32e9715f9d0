"""Argparse pieces shared by the `python -m hub` commands (`hub.cli` registers the commands).

Example:
    >>> import argparse
    >>> parser = argparse.ArgumentParser(prog="python -m hub")
    >>> actions = command_group(parser.add_subparsers(), "feedback", actions=("stats",),
    ...                         help="Inspect the feedback dataset.", description="Inspect it.")
    >>> stats = actions.add_parser("stats")
    >>> add_feedback_source(stats)
    >>> stats.parse_args(["--repo", "me/feedback"]).repo
    'me/feedback'
"""

from __future__ import annotations

import argparse


def command_group(subparsers: argparse._SubParsersAction, name: str, *, actions: tuple[str, ...], help: str,
                  description: str) -> argparse._SubParsersAction:
    """Add command `name` and return the subparsers its `actions` are added to (one of them required)."""
    group = subparsers.add_parser(name, help=help, description=description)
    metavar = actions[0] if len(actions) == 1 else "{" + ",".join(actions) + "}"
    return group.add_subparsers(dest=f"{name}_command", required=True, metavar=metavar)


def add_feedback_source(parser: argparse.ArgumentParser) -> None:
    """`--repo` and `--revision`: the feedback folder or Hub dataset repo a command reads."""
    parser.add_argument("--repo", metavar="REPO_OR_FOLDER",
                        help="Feedback: Hub dataset repo id or local folder (default: the local feedback home).")
    parser.add_argument("--revision", help="Hub revision (branch, tag or commit) to read.")
