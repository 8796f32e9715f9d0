"""The ledger of an adapter repo: one JSON line per training round of `trainers/loop.py`, and its plot.

A round appends one row whatever it decided, so the repo says how its serving adapter came to be:

    {"round": 3, "task": "tweet", "method": "reward+ppo", "main_metric": "reward", "higher_is_better": true,
     "rows": {"new": 40, "bound": 120, "signals": {"rating": 120}, "new_signals": {"rating": 40},
              "trained_on": 96, "feedback_revision": "..."},
     "champion": {"adapter": "me/flywheel-tweet-loop@3f2a...", "revision": "3f2a...", "metrics": {...}},
     "challenger": {"revision": "9c01...", "metrics": {...}, "evaluated_on": 32},
     "margin": 0.01, "decision": "promoted", "reason": "...", "seconds": 912.4, ...}

The champion's revision is the repo's (a Hub commit, or a folder's content hash); the challenger's
is the content hash of its weights, so the commit a promotion made is the next round's champion.

`decision` is `promoted` (the challenger now serves), `kept` (the champion stays), `failed`
(training stopped; `reason` says why) or `pending` (waiting for arena votes; a second row of the
same round, `"stage": "arena"`, decides it). `ledger.png` plots the main metric of both sides per round.

Example:
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> paths = write_ledger([{"round": 1, "main_metric": "rougeL", "higher_is_better": True,
    ...                        "champion": {"metrics": {"rougeL": 0.2}}, "challenger": {"metrics": {"rougeL": 0.3}},
    ...                        "decision": "promoted"}], folder)
    >>> [p.name for p in paths], len(read_ledger(str(folder)))
    (['ledger.jsonl', 'ledger.png'], 1)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hub.errors import FlywheelError, first_line
from hub.publish import LEDGER_FILE, LEDGER_PLOT
from hub.repos import HUB_ERRORS, is_local_ref

DECISIONS = ("promoted", "kept", "failed", "pending")
Round = dict[str, Any]


def read_ledger(repo: str) -> list[Round]:
    """The rounds recorded in `repo` (Hub model repo id or local folder); [] for a repo not made yet.

    Raises:
        FlywheelError: the Hub cannot be reached, or the ledger holds a line that is not JSON.
    """
    if is_local_ref(repo):
        path = Path(repo).expanduser() / LEDGER_FILE
        return _parse(path.read_text(encoding="utf-8"), repo) if path.is_file() else []
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        path = hf_hub_download(repo, LEDGER_FILE, repo_type="model")
    except (EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError):
        return []
    except HUB_ERRORS as error:
        raise FlywheelError(f"The ledger of {repo} could not be read: {first_line(error)}") from None
    return _parse(Path(path).read_text(encoding="utf-8"), repo)


def _parse(text: str, repo: str) -> list[Round]:
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except ValueError:
                raise FlywheelError(f"{repo}/{LEDGER_FILE} line {number} is not JSON; fix or remove it.") from None
    return rows


def write_ledger(rows: list[Round], folder: Path) -> list[Path]:
    """Write `ledger.jsonl` and `ledger.png` for `rows` into `folder`; return both paths."""
    folder.mkdir(parents=True, exist_ok=True)
    ledger = folder / LEDGER_FILE
    ledger.write_text("".join(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n" for row in rows),
                      encoding="utf-8")
    return [ledger, plot_ledger(rows, folder / LEDGER_PLOT)]


def decided(rows: list[Round]) -> list[Round]:
    """The last row of each round (an arena decision replaces its pending row)."""
    return list({row["round"]: row for row in rows}.values())


def main_metric_of(row: Round, side: str) -> float | None:
    """The main metric the round measured for `side` (`champion` or `challenger`), or None."""
    value = ((row.get(side) or {}).get("metrics") or {}).get(row.get("main_metric") or "")
    return float(value) if isinstance(value, int | float) else None


def plot_ledger(rows: list[Round], path: Path) -> Path:
    """The main metric of champion and challenger per round; promoted rounds are starred."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = decided(rows)
    figure, axis = plt.subplots(figsize=(6.4, 3.4))
    for side, style in (("champion", "o-"), ("challenger", "s--")):
        points = [(row["round"], value) for row in rows if (value := main_metric_of(row, side)) is not None]
        if points:
            axis.plot(*zip(*points, strict=True), style, label=side, markersize=4)
    promoted = [(row["round"], value) for row in rows
                if row.get("decision") == "promoted" and (value := main_metric_of(row, "challenger")) is not None]
    if promoted:
        axis.plot(*zip(*promoted, strict=True), "*", markersize=13, label="promoted")
    metric = next((row["main_metric"] for row in reversed(rows) if row.get("main_metric")), "main metric")
    direction = next((row["higher_is_better"] for row in reversed(rows) if "higher_is_better" in row), True)
    axis.set_xlabel("round")
    axis.set_ylabel(f"{metric} ({'higher' if direction else 'lower'} is better)")
    axis.set_title("Held-out main metric across rounds")
    axis.grid(alpha=0.3)
    if axis.get_legend_handles_labels()[0]:
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def rounds_section(rows: list[Round], *, last: int = 10) -> str:
    """Markdown for the model card: the plot and the last `last` rounds as a table."""
    lines = [f"![main metric across rounds]({LEDGER_PLOT})", "",
             f"Every round is one line of `{LEDGER_FILE}` in this repo.", "",
             "| round | method | rows | champion | challenger | decision | revision |", "|---|---|---|---|---|---|---|"]
    for row in decided(rows)[-last:]:
        cells = [_number(main_metric_of(row, side)) for side in ("champion", "challenger")]
        trained = (row.get("rows") or {}).get("trained_on", "")
        lines.append(f"| {row.get('round')} | {row.get('method', '')} | {trained} | {cells[0]} | {cells[1]} | "
                     f"{row.get('decision', '')} | {(row.get('revision') or '')[:12]} |")
    return "\n".join(lines)


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
