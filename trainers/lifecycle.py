"""What every trainer does around training: evaluate before, then evaluate after, compare, gate,
write the model card and push.

    before = evaluate_before(config, loaded=loaded, task=task, examples=data.eval_examples)
    trainer.train()
    outcome = finish(config, method="sft", task=task, loaded=loaded, model=trainer.model,
                     log_history=trainer.state.log_history, data=data, before=before, out=out)

Only the main process (rank 0) evaluates, writes the card and pushes; the other ranks return
None from both functions. `finish` raises `FlywheelError` (exit code 2 on the CLI) when
`--push` is refused because the adapter scores worse than the base model and `--force` is off;
the adapter and its card are saved locally either way.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hub.errors import FlywheelError
from hub.publish import AdapterCard, PushResult, default_repo, push_adapter, write_card
from serving.models import LoadedModel
from tasks import Task
from trainers.common import CommonArgs, is_main_process, save_metrics
from trainers.data import MIN_ROWS, TrainingData

logger = logging.getLogger("flywheel.trainers")


@dataclass
class TrainerArgs(CommonArgs):
    """Common options plus those of the evaluation and data checks every TRL-based trainer shares."""

    min_rows: int = field(default=MIN_ROWS, metadata={
        "help": "Refuse to train on fewer rows than this (after the held-out evaluation split)."})
    eval_reward: str | None = field(default=None, metadata={
        "help": "Reward spec scored during evaluation (see trainers/reward_functions.py), e.g. "
                "`reward_model=<folder or repo>` for arena or `ratings` for tweet; needed when the "
                "task's main metric is a reward."})
    eval_max_new_tokens: int | None = field(default=None, metadata={
        "help": "Tokens generated per evaluation example (default: a per-task length)."})
    eval_batch_size: int = field(default=8, metadata={"help": "Examples generated together in evaluation."})


@dataclass
class Outcome:
    """What `finish` did: where the adapter is, its scores, the gate's verdict, the push."""

    adapter_dir: Path
    before: Any | None
    after: Any | None
    better: bool | None
    """True/False: the adapter beats / does not beat the base on the main metric; None: not measured."""
    verdict: str
    pushed: PushResult | None = None
    plot: Path | None = None


def evaluation_reward(config: TrainerArgs) -> Any | None:
    """The reward callable `--eval-reward` names, or None."""
    spec = getattr(config, "eval_reward", None)
    if not spec:
        return None
    from trainers.reward_functions import build_reward

    return build_reward(spec)


def evaluate_before(config: CommonArgs, *, loaded: LoadedModel, task: Task, examples: list[Any],
                    reward_fn: Any | None = None) -> Any | None:
    """Score the base model on the held-out examples (rank 0 only; None elsewhere or with no examples)."""
    if not is_main_process() or not examples or config.eval_limit <= 0:
        return None
    return _evaluate(config, loaded=loaded, task=task, examples=examples, adapter=None, reward_fn=reward_fn)


def finish(config: CommonArgs, *, method: str, task: Task, loaded: LoadedModel, model: Any,
           log_history: list[dict[str, Any]], data: TrainingData, before: Any | None, out: Path,
           reward_fn: Any | None = None, curve_keys: tuple[str, ...] = ("loss",),
           pipeline_tag: str = "text-generation") -> Outcome | None:
    """Save the adapter, evaluate it, compare with `before`, write the card, push if asked.

    Args:
        model: the trained PEFT model (its LoRA layers are removed from `loaded.model` afterwards,
            so `loaded` is the plain base model again).
        log_history: the trainer's `state.log_history`, plotted into `training_curves.png`.
        curve_keys: logged values to plot, one panel each.

    Raises:
        FlywheelError: `--push` refused (worse than the base model, or the main metric could not
            be measured) without `--force`, or the push itself failed.
    """
    if not is_main_process():
        return None
    model.save_pretrained(str(out), safe_serialization=True)
    plot = save_metrics(log_history, out, keys=curve_keys)
    _unload(model)
    after = None
    if before is not None:
        after = _evaluate(config, loaded=loaded, task=task, examples=data.eval_examples, adapter=str(out),
                          reward_fn=reward_fn)
        before.to_json(out / "eval_before.json")
        after.to_json(out / "eval_after.json")
    better, verdict = compare(before, after, task=task)
    logger.info(verdict)
    table = _table(before, after)
    if table:
        print(table, flush=True)
    notes = [verdict]
    if config.push and better is not True and config.force:
        notes.append("Published with --force although it does not beat the base model.")
    card = AdapterCard(base_model=loaded.base_id, task=task.slug, method=method, datasets=data.sources,
                       recipe=recipe_of(config), evaluation_table=table,
                       metrics_before=before.metrics if before else None,
                       metrics_after=after.metrics if after else None, main_metric=task.main_metric,
                       plot=plot.name, notes=notes, pipeline_tag=pipeline_tag)
    write_card(out, card)
    outcome = Outcome(adapter_dir=out, before=before, after=after, better=better, verdict=verdict, plot=plot)
    if not config.push:
        print(f"Adapter saved in {out} (not pushed; add --push to publish).", flush=True)
        return outcome
    if better is not True and not config.force:
        raise FlywheelError(f"Not pushing: {verdict} The adapter is saved in {out}; "
                            "pass --force to push it anyway.")
    repo = config.hub_repo or default_repo(task.slug, method)
    outcome.pushed = push_adapter(out, repo=repo, card=card, private=config.private,
                                  commit_message=f"Flywheel {method} adapter for {task.slug}")
    print(f"Pushed adapter to {outcome.pushed.repo} (revision {outcome.pushed.revision[:12]}): "
          f"{outcome.pushed.url}", flush=True)
    return outcome


def compare(before: Any | None, after: Any | None, *, task: Task) -> tuple[bool | None, str]:
    """(adapter beats base?, one sentence why) on `task.main_metric` in `task.higher_is_better` direction."""
    metric = task.main_metric
    if before is None or after is None:
        return None, f"The adapter was not evaluated, so its {metric} is unknown."
    old, new = before.metrics.get(metric), after.metrics.get(metric)
    if not _number(old) or not _number(new):
        hint = (" (give --eval-reward)" if "reward" in metric
                else " (evaluation examples need references: give --eval-data or --seed-data)")
        return None, f"The main metric {metric} could not be measured{hint}."
    direction = "higher" if task.higher_is_better else "lower"
    improved = new > old if task.higher_is_better else new < old
    if improved:
        return True, (f"The adapter beats the base model on {metric} "
                      f"({new:.4f} vs {old:.4f}; {direction} is better).")
    word = "ties" if math.isclose(new, old, abs_tol=1e-12) else "scores worse than"
    return False, (f"The adapter {word} the base model on {metric} "
                   f"({new:.4f} vs {old:.4f}; {direction} is better).")


def recipe_of(config: Any) -> dict[str, Any]:
    """The config as a plain dict for the card (None values dropped)."""
    values = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(vars(config))
    return {k: v for k, v in values.items() if v is not None}


def _evaluate(config: CommonArgs, *, loaded: LoadedModel, task: Task, examples: list[Any],
              adapter: str | None, reward_fn: Any | None) -> Any:
    from trainers.evaluation import default_settings, evaluate

    settings = default_settings(task, max_new_tokens=getattr(config, "eval_max_new_tokens", None))
    report = evaluate(loaded=loaded, task=task, examples=examples[:config.eval_limit], adapter=adapter,
                      settings=settings, batch_size=getattr(config, "eval_batch_size", 8),
                      reward_fn=reward_fn)
    print(report.table(), flush=True)
    return report


def _table(before: Any | None, after: Any | None) -> str | None:
    if before is None or after is None:
        return None
    from trainers.eval_report import compare_table

    return compare_table(before, after)


def _unload(model: Any) -> None:
    """Take the LoRA layers out of the shared base model, so evaluation can apply the saved adapter."""
    if hasattr(model, "unload"):
        model.unload()
    model.eval()


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not math.isnan(value)
