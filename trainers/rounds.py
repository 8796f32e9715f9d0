"""One training round of `trainers/loop.py`: what came in, which method fits it, and training the challenger.

What came in is counted per *signal* over the feedback rows bound to real outputs (`is_bound`): a
good flag, a bad flag, an edit, a rating, a vote. The method follows from the new signals
(`choose_method`):

| task or new signals          | method                                                          |
|------------------------------|-----------------------------------------------------------------|
| detox                        | `ppo` on the toxicity reward, over the prompts people flagged   |
| ratings                      | `reward+ppo`: a reward model on the ratings, then PPO against it |
| votes (with or without edits)| `dpo`                                                           |
| bad flags                    | `kto` (good flags and edits are its desirable examples)         |
| edits and good flags only    | `sft`                                                           |

`train_challenger` runs the method's own `main` in this process, starting from the champion
adapter (`--init-adapter`) so that the lifecycle scores champion and challenger on the same
held-out examples and gates the challenger by the margin (`trainers.lifecycle.compare`); DPO, KTO
and PPO also measure their KL term against the champion (frozen), not the base model.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hub.errors import FlywheelError
from hub.feedback.loading import load_feedback_snapshot
from tasks import Task
from trainers.lifecycle import Outcome

SIGNALS = ("good flag", "bad flag", "edit", "rating", "vote")
METHODS = ("sft", "kto", "dpo", "ppo", "reward+ppo")


def is_bound(record: dict[str, Any]) -> bool:
    """A row the server accepted for an output it produced: its provenance came from a valid ticket.

    The demos store a record only with a valid ticket and copy the served model from it
    (`demos.handlers.Suite.record`); rows written without one (seed imports, old schema-1 rows)
    carry no model and do not count towards a round.
    """
    return bool(record.get("model")) and record.get("source") in ("person", "guard", "simulated")


def signal_of(record: dict[str, Any], task: Task) -> str:
    """What one feedback row says, as one of `SIGNALS` (a guard's withheld output is a bad flag)."""
    kind = record["kind"]
    if kind == "flag":
        good = record["label"] in task.good_flags and record.get("source") != "guard"
        return "good flag" if good else "bad flag"
    return {"edit": "edit", "rating": "rating", "preference": "vote"}[kind]


@dataclass(frozen=True)
class Intake:
    """The bound feedback of one task at one revision, counted per signal."""

    source: str
    revision: str
    signals: dict[str, int]

    @property
    def rows(self) -> int:
        return sum(self.signals.values())

    def since(self, previous: dict[str, int]) -> dict[str, int]:
        """Signals that arrived after a round that counted `previous`."""
        return {name: count - previous.get(name, 0) for name, count in self.signals.items()
                if count > previous.get(name, 0)}


def take_in(feedback_repo: str | None, task: Task) -> Intake:
    """Count the bound feedback rows of `task` per signal (the trainers read the same snapshot)."""
    snapshot = load_feedback_snapshot(feedback_repo, task=task.slug)
    counts = Counter(signal_of(record, task) for record in snapshot.dataset if is_bound(record))
    return Intake(source=snapshot.source, revision=snapshot.revision,
                  signals={name: counts[name] for name in SIGNALS if counts[name]})


def choose_method(task: Task, new: dict[str, int]) -> str:
    """The method that fits the signals that came in (see the table in the module docstring)."""
    if task.slug == "detox":
        return "ppo"
    if new.get("rating"):
        return "reward+ppo"
    if new.get("vote"):
        return "dpo"
    if new.get("bad flag"):
        return "kto"
    return "sft"


@dataclass
class Challenger:
    """What training a round produced: the lifecycle's outcome, and the reward model it used (if any)."""

    method: str
    outcome: Outcome
    reward_model: Outcome | None = None


def train_challenger(method: str, *, options: dict[str, Any], folder: Path, champion: str | None,
                     reward_spec: str = "toxicity") -> Challenger:
    """Train `method` into `folder/<method>` from `champion` (None: a fresh LoRA), gated by `options["margin"]`.

    Args:
        options: trainer options shared by every method (task, model, feedback_repo, max_steps, ...);
            each method takes those its config class has.
        reward_spec: PPO's reward when no reward model is trained this round (detox: `toxicity`).

    Raises:
        InvalidInput, FlywheelError: the rows cannot train `method`, or a model cannot be loaded.
    """
    from trainers import dpo, kto, ppo, reward, sft

    mains = {"sft": (sft.main, sft.SFTArgs), "kto": (kto.main, kto.KTOArgs), "dpo": (dpo.main, dpo.DPOArgs),
             "ppo": (ppo.main, ppo.PPOArgs)}
    start = {"init_adapter": champion}
    if method != "reward+ppo":
        main, config_class = mains[method]
        extra = {"reward": reward_spec} if method == "ppo" else {}
        return Challenger(method, main(configure(config_class, options, folder / method, **start, **extra)))
    # Ratings teach a reward model first (fresh each round, on every rating so far); PPO then optimises it.
    judged = reward.main(configure(reward.RewardArgs, options, folder / "reward", ties="both", margin=0.0))
    if judged is None or judged.better is not True:
        verdict = judged.verdict if judged else "It was not evaluated."
        raise FlywheelError(f"The reward model trained on the ratings does not beat chance on held-out pairs, so "
                            f"PPO against it would chase noise. {verdict}")
    policy = ppo.main(configure(ppo.PPOArgs, options, folder / "ppo", reward=f"reward_model={judged.adapter_dir}",
                                **start))  # PPO reports the reward it trains on, for champion and challenger
    return Challenger(method, policy, reward_model=judged)


def configure(config_class: type, options: dict[str, Any], out: Path, **specific: Any) -> Any:
    """`config_class` built from the options it has, writing into `out`, never pushing by itself."""
    names = {f.name for f in dataclasses.fields(config_class)}
    values = {**{k: v for k, v in options.items() if k in names and v is not None}, **specific}
    return config_class(**values, output_dir=str(out), push=False)


def metrics_of(outcome: Outcome | None, report: str, keep: Sequence[str] = ()) -> dict[str, float]:
    """The aggregate metrics of one side (all of them, or those in `keep`), rounded for the ledger."""
    evaluated = getattr(outcome, report) if outcome else None
    if evaluated is None:
        return {}
    return {k: round(float(v), 6) for k, v in evaluated.metrics.items()
            if isinstance(v, int | float) and (not keep or k in keep)}
