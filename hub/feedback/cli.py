"""`python -m hub feedback stats`: how much feedback a folder or a Hub repo holds, per task and kind,
and how this machine's sync of it to the Hub is doing (last push, rows waiting, last error).

Example:
    >>> import tempfile
    >>> print(render_counts(feedback_counts(tempfile.mkdtemp())).splitlines()[1])
    task                  flag  rating  preference  edit  total
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hub.commands import add_feedback_source, command_group
from hub.feedback.loading import FeedbackCounts, feedback_counts
from hub.feedback.records import KINDS
from hub.feedback.sync_state import SyncState
from hub.paths import feedback_home
from tasks import SLUGS, get_task


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `feedback stats` to the `python -m hub` dispatcher."""
    actions = command_group(subparsers, "feedback", actions=("stats",), help="Inspect the feedback dataset.",
                            description="Inspect the feedback dataset (local folder or Hub repo).")
    stats = actions.add_parser("stats", help="Count feedback rows per task and kind.",
                               description="Count valid, deduplicated feedback rows per task and kind, and "
                                           "show the health of this machine's sync to the Hub.")
    add_feedback_source(stats)
    stats.set_defaults(func=run_stats)
    return stats


def run_stats(args: argparse.Namespace) -> int:
    """Print the table, then a sync health line per Hub repo; errors propagate to `hub.cli.main`,
    which prints one line and returns 2."""
    counts = feedback_counts(args.repo, revision=args.revision)
    # A folder: every repo it syncs to. A Hub repo: how this machine's feedback home syncs to it.
    folder, repo_id = (Path(counts.source), None) if Path(counts.source).is_dir() else (feedback_home(), counts.source)
    print("\n".join([render_counts(counts), *sync_health_lines(folder, repo_id=repo_id)]))
    return 0


def sync_health_lines(folder: Path, *, repo_id: str | None = None) -> list[str]:
    """One line per Hub repo that `folder` syncs to (only `repo_id`'s, if given); none if it never did."""
    return [f"Hub sync of {folder} to {state.health().describe()}" for state in SyncState.all_in(folder)
            if repo_id in (None, state.repo_id)]


def render_counts(counts: FeedbackCounts) -> str:
    """A plain-text table: one row per task, one column per kind (`-`: the task takes no such kind)."""
    width = max(len(slug) for slug in (*SLUGS, "total"))
    header = f"{'task':<{width}}" + "".join(f"  {kind:>{len(kind)}}" for kind in KINDS) + "  total"
    lines = [f"Feedback in {counts.source} (revision {counts.revision})", header]
    totals = dict.fromkeys(KINDS, 0)
    for slug in SLUGS:
        task, row = get_task(slug), counts.counts.get(slug, {})
        cells = []
        for kind in KINDS:
            totals[kind] += row.get(kind, 0)
            value = str(row.get(kind, 0)) if kind in task.feedback_kinds or row.get(kind) else "-"
            cells.append(f"  {value:>{len(kind)}}")
        lines.append(f"{slug:<{width}}" + "".join(cells) + f"  {sum(row.values()):>5}")
    lines.append(f"{'total':<{width}}" + "".join(f"  {totals[k]:>{len(k)}}" for k in KINDS)
                 + f"  {sum(totals.values()):>5}")
    if counts.skipped:
        lines.append(f"Skipped {counts.skipped} malformed row(s).")
    return "\n".join(lines)
