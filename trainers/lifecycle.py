"""The one path every trainer takes: evaluate before, train, save, evaluate after, gate, card, push.

    training = TrainingRun(config=config, method="reward", task=task, base_model=base_id, out=out,
                           sources=data.sources, evaluator=PairEvaluator(...))
    evaluate_before(training)               # the reference: the base model, or chance for a reward model
    outcome = train_and_finish(training, trainer)

A trainer says how its model is scored by handing over an `Evaluator` (text-writing policies use
`trainers.evaluation.GenerationEvaluator`, built by `prepare_policy` / `policy_run`; the reward
model scores held-out preference pairs); the lifecycle does the rest the same way for all.
Only the main process (rank 0) evaluates, writes the card and pushes; the other ranks get None.
`finish` raises `FlywheelError` (exit code 2 on the CLI) when `--push` is refused because the
adapter does not beat the reference and `--force` is off; the adapter and its card are saved
locally either way.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from hub.errors import FlywheelError
from hub.publish import AdapterCard, DatasetRef, PushResult, default_repo, push_adapter, write_card
from serving.models import LoadedModel, load_model
from tasks import Task
from trainers.common import PolicyArgs, TrainerArgs, is_main_process, lora_config, output_dir
from trainers.eval_report import EvalReport, compare_table, is_measured
from trainers.resources import card_section, meter
from trainers.training_data import TrainingData, build_from_config, fit_length

logger = logging.getLogger("flywheel.trainers")


class Evaluator(Protocol):
    """How a trainer's model is scored, and what it must beat."""

    @property
    def main_metric(self) -> str:
        """The metric the gate compares."""

    @property
    def higher_is_better(self) -> bool:
        """The main metric's direction."""

    @property
    def reference(self) -> str:
        """What `before` scores, as the verdict names it: `the base model`, `chance`."""

    @property
    def unmeasured_hint(self) -> str:
        """Appended to the verdict when the main metric could not be measured."""

    def before(self) -> EvalReport | None:
        """Score the reference ahead of training (None: nothing to evaluate on)."""

    def after(self, model: Any, adapter_dir: Path) -> EvalReport | None:
        """Score the trained model, whose adapter is already saved in `adapter_dir`."""


@dataclass
class TrainingRun:
    """One training run as the lifecycle sees it: its options, its evaluator, and what its card says."""

    config: TrainerArgs
    method: str
    task: Task
    base_model: str
    """Base model id, written into the adapter config and the card."""
    out: Path
    sources: list[DatasetRef]
    evaluator: Evaluator
    pipeline_tag: str = "text-generation"
    curve_keys: tuple[str, ...] = ("loss",)
    """Logged values plotted into `training_curves.png`, one panel each."""
    notes: list[str] = field(default_factory=list)
    """Sentences for the card besides the verdict (e.g. how to load the model)."""
    before: EvalReport | None = None
    """Set by `evaluate_before`."""


@dataclass
class Outcome:
    """What `finish` did: where the adapter is, its scores, the gate's verdict, the push."""

    adapter_dir: Path
    before: EvalReport | None
    after: EvalReport | None
    better: bool | None
    """True/False: the adapter beats / does not beat the reference on the main metric; None: not measured."""
    verdict: str
    pushed: PushResult | None = None
    plot: Path | None = None
    card: AdapterCard | None = None
    """The model card written next to the adapter (and pushed with it)."""


@dataclass
class Policy:
    """A text-writing base model, the rows it trains on, and its `TrainingRun`."""

    loaded: LoadedModel
    data: TrainingData
    training: TrainingRun

    def trainer_inputs(self) -> dict[str, Any]:
        """The keyword arguments TRL's SFT, DPO and KTO trainers share: model, rows, tokenizer, LoRA."""
        return {"train_dataset": self.data.train, "processing_class": self.loaded.tokenizer,
                **lora_inputs(self.training.config, self.loaded)}


REFERENCE_ADAPTER = "ref"
"""The frozen copy of `--init-adapter` that a run's KL term is measured against (without it: the base model).

TRL's DPO, KTO and GRPO trainers add it under this name themselves when handed a PEFT model and
no `ref_model` (`lora_inputs`); PPO gets it from `lora_model(reference=True)`. Both switch to it
for the reference forward pass as `reference_policy` does.
"""


def lora_inputs(config: PolicyArgs, loaded: LoadedModel) -> dict[str, Any]:
    """`model` (and `peft_config`) for a TRL trainer: a fresh LoRA, or `--init-adapter` to train on.

    The trainer keeps a frozen copy of `--init-adapter` as its reference (`REFERENCE_ADAPTER`).
    """
    if config.init_adapter:
        return {"model": lora_model(config, loaded, task_type="CAUSAL_LM")}
    return {"model": loaded.model, "peft_config": lora_config(config, task_type="CAUSAL_LM", model=loaded.model)}


def lora_model(config: PolicyArgs, loaded: LoadedModel, *, task_type: str, lora: Any | None = None,
               reference: bool = False) -> Any:
    """The PEFT model to train: `--init-adapter` loaded as trainable, else a fresh LoRA (`lora`, or the options').

    Call it after `evaluate_before`: the evaluation needs the bare base model. `reference=True` (a
    trainer computing its own KL term, for `reference_policy`) also loads `--init-adapter` frozen as
    `REFERENCE_ADAPTER`: a second LoRA on the same base, not a second model.

    Raises:
        FlywheelError: the adapter cannot be read, or it was made for another base model.
    """
    from peft import PeftModel, get_peft_model

    if not config.init_adapter:
        return get_peft_model(loaded.model, lora or lora_config(config, task_type=task_type, model=loaded.model))
    from hub.repos import AdapterSpec, resolve_adapter
    from serving.adapters import validate_adapter

    spec = AdapterSpec.parse(config.init_adapter)
    path, _ = resolve_adapter(spec.ref, revision=spec.revision)
    validate_adapter(path, base_id=loaded.base_id, model=loaded.model)
    model = PeftModel.from_pretrained(loaded.model, str(path), is_trainable=True)
    if reference:
        model.load_adapter(str(path), adapter_name=REFERENCE_ADAPTER, is_trainable=False)
    return model


@contextmanager
def reference_policy(model: Any) -> Iterator[None]:
    """Within, the PEFT `model` computes the reference policy: `REFERENCE_ADAPTER` if it has one, else the base."""
    from trl.trainer.utils import use_adapter

    with use_adapter(model, REFERENCE_ADAPTER if REFERENCE_ADAPTER in model.peft_config else None):
        yield


def prepare_policy(config: PolicyArgs, *, method: str, task: Task, seq2seq: bool = False,
                   curve_keys: tuple[str, ...] = ("loss",)) -> Policy:
    """Load the base model and `method`'s training rows, and set up the run (nothing evaluated yet).

    Raises:
        FlywheelError: the model is seq2seq and the method (`seq2seq=False`) trains causal LMs only.
        InvalidInput: too few or unusable rows (see `trainers.rows.check_size`).
    """
    loaded = load_model(config.model)
    if loaded.is_seq2seq and not seq2seq:
        raise FlywheelError(f"{method.upper()} trains causal LMs only, and {config.model} is a seq2seq "
                            "(encoder-decoder) model; fine-tune it with trainers/sft.py instead.")
    data = build_from_config(config, method, task=task, chat=loaded.has_chat_template and not loaded.is_seq2seq)
    if not loaded.is_seq2seq:  # long prompts would leave no room for the completion the loss is on
        data = fit_length(data, loaded.tokenizer, max_length=config.max_length, min_rows=config.min_rows)
    training = policy_run(config, method=method, task=task, loaded=loaded, data=data, curve_keys=curve_keys)
    return Policy(loaded=loaded, data=data, training=training)


def policy_run(config: PolicyArgs, *, method: str, task: Task, loaded: LoadedModel, data: TrainingData,
               out: Path | None = None, reward_fn: Any | None = None,
               curve_keys: tuple[str, ...] = ("loss",)) -> TrainingRun:
    """The `TrainingRun` of a policy scored by generation on `data.eval_examples`.

    Args:
        reward_fn: the reward the evaluation reports (default: the one `--eval-reward` names).
        out: the output folder (default: `output_dir(config, method)`).
    """
    from trainers.evaluation import GenerationEvaluator, default_settings

    hint = (" (give --eval-reward)" if "reward" in task.main_metric
            else " (evaluation examples need references: give --eval-data or --seed-data)")
    starting = {"reference_adapter": config.init_adapter,
                "reference": f"the adapter it started from ({config.init_adapter})"} if config.init_adapter else {}
    evaluator = GenerationEvaluator(
        loaded=loaded, task=task, batch_size=config.eval_batch_size,
        examples=data.eval_examples[:max(config.eval_limit, 0) * (1 + len(config.eval_extra_data))],
        settings=default_settings(task, max_new_tokens=config.eval_max_new_tokens),
        reward_fn=reward_fn or evaluation_reward(config), unmeasured_hint=hint, **starting)
    return TrainingRun(config=config, method=method, task=task, base_model=loaded.base_id,
                       out=out or output_dir(config, method), sources=data.sources, evaluator=evaluator,
                       pipeline_tag="text2text-generation" if loaded.is_seq2seq else "text-generation",
                       curve_keys=curve_keys)


def evaluation_reward(config: PolicyArgs) -> Any | None:
    """The reward callable `--eval-reward` names, or None."""
    if not config.eval_reward:
        return None
    from trainers.reward_functions import build_reward

    return build_reward(config.eval_reward)


def evaluate_before(training: TrainingRun) -> EvalReport | None:
    """Score the reference (rank 0 only), print it and keep it in `training.before`.

    Everything up to here counts as `loading` in the run's resources; everything after, until
    `finish`, as `training`.
    """
    meter().enter("evaluation")
    if is_main_process():
        training.before = training.evaluator.before()
        if training.before is not None:
            print(training.before.table(), flush=True)
    meter().enter("training")
    return training.before


def train_and_finish(training: TrainingRun, trainer: Any, *,
                     resume_from_checkpoint: str | None = None) -> Outcome | None:
    """Train with a transformers/TRL `trainer`, say what every rank did, then `finish`."""
    trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    report_rank(trainer, training.method)
    return finish(training, model=trainer.model, log_history=trainer.state.log_history)


def finish(training: TrainingRun, *, model: Any, log_history: list[dict[str, Any]]) -> Outcome | None:
    """Save the adapter, evaluate it, compare with the reference, write the card, push if asked.

    Args:
        model: the trained PEFT model.
        log_history: the trainer's `state.log_history`, plotted into `training_curves.png`.

    Raises:
        FlywheelError: `--push` refused (not better than the reference, or the main metric could
            not be measured) without `--force`, or the push itself failed.
    """
    meter().enter("saving")
    if not is_main_process():
        return None
    config, out, evaluator = training.config, training.out, training.evaluator
    names = list(getattr(model, "peft_config", {}))
    trained = [name for name in names if name != REFERENCE_ADAPTER]  # the frozen start is not saved
    for name in trained:
        model.peft_config[name].base_model_name_or_path = training.base_model  # the id, not a local path
    model.save_pretrained(str(out), safe_serialization=True,
                          **({"selected_adapters": trained} if REFERENCE_ADAPTER in names else {}))
    plot = save_metrics(log_history, out, keys=training.curve_keys)
    before = training.before
    meter().enter("evaluation")
    after = evaluator.after(model, out) if before is not None else None
    meter().enter("saving")
    table = None
    if before is not None and after is not None:
        print(after.table(), flush=True)
        before.to_json(out / "eval_before.json")
        after.to_json(out / "eval_after.json")
        table = compare_table(before, after)
        print(table, flush=True)
    better, verdict = compare(before, after, evaluator=evaluator, margin=config.margin)
    logger.info(verdict)
    notes = [verdict, *training.notes]
    if config.push and better is not True and config.force:
        notes.append(f"Published with --force although it does not beat {evaluator.reference}.")
    card = AdapterCard(base_model=training.base_model, task=training.task.slug, method=training.method,
                       datasets=training.sources, recipe=recipe_of(config), evaluation_table=table,
                       metrics_before=before.metrics if before else None,
                       metrics_after=after.metrics if after else None, main_metric=evaluator.main_metric,
                       plot=plot.name, notes=notes, pipeline_tag=training.pipeline_tag,
                       sections={"Training cost": card_section(save_resources(out))})
    write_card(out, card)
    outcome = Outcome(adapter_dir=out, before=before, after=after, better=better, verdict=verdict, plot=plot,
                      card=card)
    if not config.push:
        print(f"Adapter saved in {out} (not pushed; add --push to publish).", flush=True)
        return outcome
    if better is not True and not config.force:
        raise FlywheelError(f"Not pushing: {verdict} The adapter is saved in {out}; "
                            "pass --force to push it anyway.")
    repo = config.hub_repo or default_repo(training.task.slug, training.method)
    outcome.pushed = push_adapter(out, repo=repo, card=card, private=config.private,
                                  commit_message=f"Flywheel {training.method} adapter for {training.task.slug}")
    print(f"Pushed adapter to {outcome.pushed.repo} (revision {outcome.pushed.revision[:12]}): "
          f"{outcome.pushed.url}", flush=True)
    return outcome


def compare(before: EvalReport | None, after: EvalReport | None, *, evaluator: Evaluator,
            margin: float = 0.0) -> tuple[bool | None, str]:
    """(adapter beats the reference by more than `margin`?, one sentence why) on the evaluator's main metric."""
    metric, reference = evaluator.main_metric, evaluator.reference
    if before is None or after is None:
        return None, f"The adapter was not evaluated, so its {metric} is unknown."
    old, new = before.metrics.get(metric), after.metrics.get(metric)
    if not is_measured(old) or not is_measured(new):
        return None, f"The main metric {metric} could not be measured{evaluator.unmeasured_hint}."
    direction = "higher" if evaluator.higher_is_better else "lower"
    gain = new - old if evaluator.higher_is_better else old - new
    scores = f"({new:.4f} vs {old:.4f}; {direction} is better{f', margin {margin:g}' if margin else ''})"
    if gain > margin:
        return True, f"The adapter beats {reference} on {metric} {scores}."
    if gain > 0:
        return False, f"The adapter beats {reference} on {metric} by no more than the margin {scores}."
    word = "ties" if math.isclose(new, old, abs_tol=1e-12) else "scores worse than"
    return False, f"The adapter {word} {reference} on {metric} {scores}."


def recipe_of(config: Any) -> dict[str, Any]:
    """The config as a plain dict for the card (None values dropped)."""
    values = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(vars(config))
    return {k: v for k, v in values.items() if v is not None}


def save_metrics(log_history: list[dict[str, Any]], out: Path, *, keys: tuple[str, ...] = ("loss",)) -> Path:
    """Write `metrics.jsonl` and a PNG of the training curves; return the PNG path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with (out / "metrics.jsonl").open("w") as handle:
        for row in log_history:
            handle.write(json.dumps(row) + "\n")
    present = [k for k in keys if any(k in row for row in log_history)]
    figure, axes = plt.subplots(1, max(1, len(present)), figsize=(4.5 * max(1, len(present)), 3.2),
                                squeeze=False)
    for axis, key in zip(axes[0], present or ["loss"], strict=False):
        points = [(row.get("step", i), row[key]) for i, row in enumerate(log_history) if key in row]
        if points:
            steps, values = zip(*points, strict=True)
            axis.plot(steps, values, marker="o", markersize=2)
        axis.set_title(key)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
    figure.tight_layout()
    path = out / "training_curves.png"
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def save_resources(out: Path) -> dict[str, Any]:
    """Write the run's peak memory, time per phase and hardware (`trainers.resources`) to `resources.json`.

    The meter then starts over, so a process that trains again (`trainers/loop.py`) reports each run.
    """
    summary = meter().summary()
    meter().restart()
    (out / "resources.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def report_rank(trainer: Any, method: str) -> None:
    """Print one line per process after training, so a distributed run shows that every rank took part.

    Example output: `[rank 1/2] sft: 3 optimizer steps, 2 batches per epoch on this rank, loss 2.31`.
    """
    accelerator = trainer.accelerator
    state = trainer.state
    losses = [row["loss"] for row in state.log_history if "loss" in row]
    batches = len(trainer.get_train_dataloader())
    loss = f", loss {losses[-1]:.4g}" if losses else ""
    print(f"[rank {accelerator.process_index}/{accelerator.num_processes}] {method}: {state.global_step} "
          f"optimizer steps, {batches} batches per epoch on this rank{loss}", flush=True)
