"""The online adapter's files, and `python -m hub online push|status`.

`serving.online` learns an adapter from ratings and flags while the app runs and keeps it under
`FLYWHEEL_HOME/online/<task>/`:

    online/tweet/
      state.json                     counters, baseline, probe scores, rollbacks: this module's `OnlineState`
      checkpoints/update-000120/     a PEFT LoRA folder (adapter_config.json, adapter_model.safetensors)

`state.serving` names the checkpoint the app serves (the last one that passed the probe, so the
one to publish) and `state.latest` the newest weights (written at shutdown, where training
resumes). Everything a model card needs is in `state.json`, so publishing needs no model:

    python -m hub online push --task tweet                  # <user>/flywheel-tweet-online, or a folder
    python -m hub online status --task tweet
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hub.commands import command_group
from hub.errors import FlywheelError
from hub.paths import flywheel_home
from hub.publish import AdapterCard, DatasetRef, default_repo, push_adapter
from tasks import SLUGS, get_task

STATE_FILE = "state.json"
CHECKPOINTS = "checkpoints"
METHOD = "online"
HISTORY = 200
"""Probe scores, reward summaries and rollbacks kept in `state.json` (the newest)."""


def online_home(task: str, *, root: Path | None = None) -> Path:
    """`FLYWHEEL_HOME/online/<task>`: where one task's online adapter lives."""
    return (root or flywheel_home() / "online") / get_task(task).slug


def checkpoint_name(update: int) -> str:
    """The folder name of the checkpoint taken after `update` updates."""
    return f"update-{update:06d}"


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class OnlineState:
    """Everything about one task's online adapter except its weights (`state.json`)."""

    task: str
    base_model: str
    """The base model id the adapter was trained on (written into its card)."""
    updates: int = 0
    """Optimizer steps taken in all; the count goes on across rollbacks and restarts."""
    feedback: int = 0
    """Ratings and flags learned from."""
    baseline: dict[str, float] = field(default_factory=dict)
    """The running reward baseline (`serving.online_policy.RunningBaseline` fields)."""
    serving: str | None = None
    """Checkpoint folder the app serves: the newest that passed the probe (what `push` publishes)."""
    serving_update: int = 0
    """`updates` when `serving` was taken (served-by shows "online, update N")."""
    latest: str | None = None
    """Checkpoint of the newest weights (written at shutdown); training resumes from it."""
    judge: str | None = None
    """What scores the probe set."""
    good_score: float | None = None
    """Probe score of `serving`: a later checkpoint scoring `margin` below it is rolled back."""
    probes: list[dict[str, Any]] = field(default_factory=list)
    """`{"update", "score", "accepted", "at"}` per probe, newest last."""
    rollbacks: list[dict[str, Any]] = field(default_factory=list)
    """`{"update", "to_update", "score", "good_score", "at"}` per rollback, newest last."""
    rewards: list[dict[str, Any]] = field(default_factory=list)
    """`{"update", "mean_reward", "count"}`: the rewards received between two probes."""
    config: dict[str, Any] = field(default_factory=dict)
    """The learner's settings (learning rate, KL coefficient, K, margin, LoRA rank...)."""
    version: int = 1

    def checkpoint(self, name: str | None, *, home: Path) -> Path | None:
        return home / CHECKPOINTS / name if name else None

    def append(self, history: str, entry: dict[str, Any]) -> None:
        """Add `entry` (stamped with the time) to `probes`, `rollbacks` or `rewards`, keeping the newest."""
        rows = getattr(self, history)
        rows.append({**entry, "at": utc_now()})
        del rows[:-HISTORY]

    def describe(self) -> str:
        score = "unscored" if self.good_score is None else f"probe score {self.good_score:.4g} ({self.judge})"
        return (f"{self.task}: {self.updates} updates from {self.feedback} ratings/flags; serving update "
                f"{self.serving_update} ({score}); {len(self.rollbacks)} rollback(s)")


def read_state(home: Path) -> OnlineState | None:
    """The state in `home`, or None when there is none yet; `FlywheelError` for a damaged file."""
    path = home / STATE_FILE
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        known = {f.name for f in fields(OnlineState)}
        return OnlineState(**{key: value for key, value in data.items() if key in known})
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError) as error:
        raise FlywheelError(f"{path} is not a valid online-learning state ({error}).") from error


def write_state(state: OnlineState, home: Path) -> None:
    """Replace `home/state.json` atomically (a crash leaves the old file or the new one)."""
    home.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(prefix=".state-", suffix=".json", dir=home)
    with os.fdopen(handle, "w", encoding="utf-8") as file:
        json.dump(asdict(state), file, indent=2, allow_nan=False)
        file.flush()
        os.fsync(file.fileno())
    os.replace(staging, home / STATE_FILE)


def adapter_card(state: OnlineState) -> AdapterCard:
    """The model card of the served online adapter, from its state alone."""
    first = next((probe["score"] for probe in state.probes if probe.get("score") is not None), None)
    rows = ["| update | probe score | result |", "|---|---|---|"]
    rows += [f"| {p['update']} | {_score(p.get('score'))} | {'kept' if p.get('accepted') else 'rolled back'} |"
             for p in state.probes[-20:]]
    notes = [f"Learned online while the demo ran: {state.updates} policy-gradient updates from "
             f"{state.feedback} ratings and flags; this is the checkpoint after update {state.serving_update}, "
             "the newest that passed the probe.",
             f"Rollbacks: {len(state.rollbacks)}" + "".join(
                 f"; update {r['update']} scored {_score(r.get('score'))} < {_score(r.get('good_score'))}, back to "
                 f"update {r['to_update']}" for r in state.rollbacks[-5:]) + "."]
    if state.rewards:
        recent = state.rewards[-1]
        notes.append(f"Mean reward of the last {recent['count']} ratings/flags before update {recent['update']}: "
                     f"{recent['mean_reward']:.4f}.")
    judged = state.judge is not None and state.good_score is not None
    return AdapterCard(
        base_model=state.base_model, task=state.task, method=METHOD,
        datasets=[DatasetRef(ref=f"./online/{state.task}", rows=state.feedback, kind="feedback")],
        recipe=state.config, evaluation_table="\n".join(rows) if state.probes else None,
        metrics_before={"probe_score": first} if judged and first is not None else None,
        metrics_after={"probe_score": state.good_score} if judged else None,
        main_metric=f"probe_score ({state.judge})" if judged else None, plot=None, notes=notes)


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def served_checkpoint(task: str, *, root: Path | None = None) -> tuple[OnlineState, Path]:
    """The state and the served checkpoint folder of `task`'s online adapter (`FlywheelError` if none)."""
    home = online_home(task, root=root)
    state = read_state(home)
    folder = state.checkpoint(state.serving, home=home) if state else None
    if state is None or folder is None or not folder.is_dir():
        raise FlywheelError(f"No online adapter for {task} in {home}: run `python -m demos --online {task}` "
                            "and rate some outputs first.")
    return state, folder


# -- python -m hub online ----------------------------------------------------------------------------

def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `online push` and `online status` to the `python -m hub` dispatcher."""
    actions = command_group(subparsers, "online", actions=("push", "status"),
                            help="Publish or inspect an online-learned adapter.",
                            description="The adapters `python -m demos --online TASK` learns while it runs.")
    push = actions.add_parser("push", help="Publish the served online adapter with a model card.",
                              description="Publish the online adapter the app serves (the newest checkpoint "
                                          "that passed its probe) with a model card, like a trainer's --push.")
    push.add_argument("--task", required=True, choices=SLUGS)
    push.add_argument("--repo", help="Hub model repo or local folder (default: <user>/flywheel-<task>-online "
                                     "with a Hub token, else a folder under FLYWHEEL_HOME/published).")
    push.add_argument("--public", action="store_true", help="Create the Hub repo as public (default private).")
    push.set_defaults(func=run_push)
    status = actions.add_parser("status", help="Show updates, probe scores and rollbacks.")
    status.add_argument("--task", required=True, choices=SLUGS)
    status.set_defaults(func=run_status)
    return push


def run_push(args: argparse.Namespace) -> int:
    state, folder = served_checkpoint(args.task)
    repo = args.repo or default_repo(args.task, METHOD)
    result = push_adapter(folder, repo=repo, card=adapter_card(state), private=not args.public,
                          commit_message=f"Flywheel: online adapter, update {state.serving_update}")
    print(f"Published {args.task} online adapter (update {state.serving_update}) to {result.repo} "
          f"at {result.revision[:12]}: {result.url}")
    return 0


def run_status(args: argparse.Namespace) -> int:
    state, _ = served_checkpoint(args.task)
    lines = [state.describe()]
    lines += [f"  rollback at update {r['update']} ({r['at']}): probe {_score(r.get('score'))} below "
              f"{_score(r.get('good_score'))}, back to update {r['to_update']}" for r in state.rollbacks]
    print("\n".join(lines))
    return 0
