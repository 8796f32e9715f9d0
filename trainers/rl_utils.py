"""What the RL trainers (`trainers/ppo.py`, `trainers/grpo.py`) share, and PPO's plumbing.

Shared: the options and their checks (`RLArgs`, `task_and_reward`), loading a causal LM, and
`--resume` naming a checkpoint. PPO's: small tensor helpers over masked responses, Accelerate
set-up, per-step metrics (averaged over processes, logged to `metrics_log.jsonl`), the adaptive KL
coefficient, checkpoints, and generation under distributed wrappers (DDP, DeepSpeed ZeRO-3, FSDP).

Per-token tensors are `[batch, response_length]`; a `mask` is 1 on response tokens (up to and
including the first end-of-sequence token) and 0 on the padding after it.

A PPO checkpoint folder `checkpoint-<step>/` holds the LoRA adapter (`adapter_model.safetensors`,
`adapter_config.json`), the value head (`value_head.safetensors`), the optimizer state
(`optimizer.pt`, tensors only) and `trainer_state.json` (step, KL coefficient, metrics so far);
TRL's checkpoints (GRPO, RLOO) also carry a `trainer_state.json`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from hub.errors import FlywheelError
from tasks import InvalidInput, Task, get_task
from trainers.common import PolicyArgs, TrainerArgs, require_task
from trainers.reward_functions import CombinedReward, build_reward

logger = logging.getLogger("flywheel.rl")

VALUE_HEAD = "value_head.safetensors"
STATE = "trainer_state.json"
OPTIMIZER = "optimizer.pt"
LOG = "metrics_log.jsonl"


@dataclass
class RLArgs(PolicyArgs):
    """Options every RL trainer takes after the common ones: the reward, sampling and checkpoints.

    Subclasses add their own checks by extending `requirements`.
    """

    reward: str | None = field(default=None, metadata={
        "help": "Reward spec: comma-separated name[=arg][:weight] terms, e.g. `toxicity`, "
                "`reward_model=<repo>`, `ratings`, `toxicity:1.0,reward_model=<repo>:0.5`."})
    response_length: int = field(default=30, metadata={"help": "Tokens generated per response (max)."})
    temperature: float = field(default=1.0, metadata={
        "help": "Sampling temperature of the responses (logprobs use the same temperature)."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm."})
    save_steps: int = field(default=25, metadata={"help": "Checkpoint every N steps (and at the end)."})
    save_total_limit: int = field(default=2, metadata={"help": "Checkpoints kept (oldest removed)."})
    resume: str | None = field(default=None, metadata={
        "help": "Resume from `latest` (newest checkpoint in --output-dir) or a checkpoint folder."})

    def requirements(self) -> list[tuple[bool, str]]:
        """(holds?, message if not) for every rule a configuration must meet."""
        return [
            (self.per_device_train_batch_size > 0, "--per-device-train-batch-size must be at least 1."),
            (self.response_length > 0, "--response-length must be at least 1."),
            (self.temperature > 0, "--temperature must be positive."),
            (self.learning_rate > 0, "--learning-rate must be positive."),
            (self.max_steps != 0, "--max-steps must be positive (or -1 for --num-train-epochs)."),
            (self.num_train_epochs > 0, "--num-train-epochs must be positive."),
        ]

    def check(self) -> None:
        """Refuse a configuration that cannot work, before anything heavy is loaded (exit 2 on the CLI)."""
        for holds, message in self.requirements():
            if not holds:
                raise InvalidInput(message)


def task_and_reward(config: RLArgs) -> tuple[Task, CombinedReward]:
    """Check every option, the task and the `--reward` spec (exit 2 on the CLI), before any model loads."""
    config.check()
    task = get_task(require_task(config))
    return task, build_reward(config.reward)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `values` where `mask` is 1 (0 if the mask is empty)."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def masked_var(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Bessel-corrected variance of `values` where `mask` is 1."""
    mask = mask.to(values.dtype)
    variance = masked_mean((values - masked_mean(values, mask)) ** 2, mask)
    count = mask.sum()
    return variance * count / (count - 1) if count > 1 else variance


def logprobs_of(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Log-probability of each `tokens[b, t]` under `logits[b, t, :]`."""
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def entropy_of(log_probs: torch.Tensor) -> torch.Tensor:
    """Entropy of the categorical distribution at each position, from its log-probabilities."""
    return -(log_probs.exp() * log_probs).sum(-1)


def response_mask(responses: torch.Tensor, eos_ids: list[int]) -> torch.Tensor:
    """1.0 on each response token up to and including its first end-of-sequence token, 0.0 after."""
    is_eos = torch.isin(responses, torch.tensor(eos_ids, device=responses.device)).long()
    return ((is_eos.cumsum(1) - is_eos) == 0).float()


def eos_token_ids(tokenizer: Any, model: Any) -> list[int]:
    """Every token id that ends a response: the generation config's and the tokenizer's."""
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = configured if isinstance(configured, list) else [configured]
    return sorted({int(i) for i in [*ids, tokenizer.eos_token_id] if i is not None})


def load_causal_lm(model_ref: str, *, method: str) -> Any:
    """`serving.models.load_model`, refusing an encoder-decoder model: RL here trains causal LMs."""
    from serving.models import load_model

    loaded = load_model(model_ref)
    if loaded.is_seq2seq:
        raise InvalidInput(f"{method.upper()} trains causal LMs only, and {model_ref} is a seq2seq "
                           "(encoder-decoder) model; fine-tune it with trainers/sft.py instead.")
    return loaded


def find_checkpoint(resume: str, out: Path, *, needs: tuple[str, ...] = (STATE, VALUE_HEAD)) -> Path:
    """The checkpoint `--resume` names: `latest` (newest in `out`) or a folder holding the files `needs`."""
    if resume in ("latest", "true", "True", "1"):
        found = checkpoints(out)
        if not found:
            raise FlywheelError(f"--resume latest: no checkpoint-* folder in {out}.")
        return found[-1]
    path = Path(resume).expanduser()
    if not all((path / name).exists() for name in needs):
        raise FlywheelError(f"--resume {resume}: not a checkpoint folder (it needs {', '.join(needs)}).")
    return path


def checkpoints(out: Path) -> list[Path]:
    """Complete checkpoints in `out`, oldest first."""
    found = [p for p in out.glob("checkpoint-*") if (p / STATE).exists() and p.name.split("-")[-1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


def is_sharded(accelerator: Any) -> bool:
    """True when parameters are sharded across processes (FSDP, DeepSpeed ZeRO-3)."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    return accelerator.distributed_type.name == "FSDP" or (plugin is not None and plugin.zero_stage == 3)


def gathered_weights(accelerator: Any, model: Any) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(LoRA weights as PEFT saves them, value head) as whole tensors, on the main process.

    A collective call: every process must make it (FSDP and ZeRO-3 gather the shards); the
    others get None.
    """
    from peft import get_peft_model_state_dict

    state = accelerator.get_state_dict(model)
    if not accelerator.is_main_process:
        return None
    policy = {k.removeprefix("policy."): v for k, v in state.items() if k.startswith("policy.")}
    adapter = get_peft_model_state_dict(accelerator.unwrap_model(model).policy, state_dict=policy)
    head = {k.removeprefix("value_head."): v for k, v in state.items() if k.startswith("value_head.")}
    return ({k: v.detach().contiguous().cpu() for k, v in adapter.items()},
            {k: v.detach().contiguous().cpu() for k, v in head.items()})


@dataclass
class AdaptiveKLController:
    """Adaptive KL coefficient (Ziegler et al. 2019): nudges the KL penalty toward `target`.

    After each batch of `n_steps` sequences with mean KL `current`, the coefficient is
    multiplied by 1 + clip(current / target - 1, -0.2, 0.2) * n_steps / horizon, so it rises
    while the policy drifts further than the target and falls while it stays closer.
    A `target` of None (or 0) keeps the coefficient fixed.
    """

    value: float
    target: float | None = 6.0
    horizon: int = 10000

    def update(self, current: float, n_steps: int) -> float:
        if self.target:
            error = min(max(current / self.target - 1.0, -0.2), 0.2)
            self.value *= 1.0 + error * n_steps / self.horizon
        return self.value

    def state_dict(self) -> dict[str, float | int | None]:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = float(state["value"])


def save_checkpoint(accelerator: Any, model: Any, optimizer: Any, kl_ctl: AdaptiveKLController,
                    history: list[dict[str, Any]], out: Path, step: int, *, keep: int) -> None:
    """Write `checkpoint-<step>` from the main process (every process must call this)."""
    from safetensors.torch import save_file

    weights = gathered_weights(accelerator, model)
    # Optimizer state is whole on every process only without sharding (single process, DDP).
    whole_optimizer = accelerator.distributed_type.name in ("NO", "MULTI_CPU", "MULTI_GPU", "MULTI_XPU")
    if weights is not None:
        adapter, head = weights
        target = out / f"checkpoint-{step}"
        staging = out / f".checkpoint-{step}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        accelerator.unwrap_model(model).policy.peft_config["default"].save_pretrained(str(staging))
        save_file(adapter, str(staging / "adapter_model.safetensors"))
        save_file(head, str(staging / VALUE_HEAD))
        if whole_optimizer:
            torch.save(optimizer.state_dict(), staging / OPTIMIZER)
        (staging / STATE).write_text(json.dumps({"step": step, "kl_ctl": kl_ctl.state_dict(),
                                                 "history": history}, indent=1))
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)  # a checkpoint is either complete or absent
        for old in checkpoints(out)[:-max(keep, 1)]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def load_checkpoint(path: Path, model: Any, optimizer: Any, kl_ctl: AdaptiveKLController,
                    history: list[dict[str, Any]]) -> int:
    """Restore adapter, value head, optimizer, KL coefficient and history; return the step to start at."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    adapter = path / "adapter_model.safetensors"
    if not adapter.exists():
        raise FlywheelError(f"Checkpoint {path} has no adapter_model.safetensors.")
    result = set_peft_model_state_dict(model.policy, load_file(str(adapter)))
    if getattr(result, "unexpected_keys", None):
        raise FlywheelError(f"Checkpoint {path} does not fit this model ({result.unexpected_keys[0]} ...).")
    try:
        model.value_head.load_state_dict(load_file(str(path / VALUE_HEAD)))
    except RuntimeError as error:
        raise FlywheelError(f"Checkpoint {path}: value head does not fit this model.") from error
    if (path / OPTIMIZER).exists():
        optimizer.load_state_dict(torch.load(path / OPTIMIZER, weights_only=True))
    else:
        logger.warning("Checkpoint %s has no optimizer state (sharded run): Adam restarts its moments.", path)
    state = json.loads((path / STATE).read_text())
    kl_ctl.load_state_dict(state["kl_ctl"])
    history[:] = state.get("history", [])
    logger.info("Resuming from %s at step %d", path, state["step"])
    return int(state["step"])


def reset_metrics_log(out: Path, history: list[dict[str, Any]]) -> None:
    """Start `metrics_log.jsonl` afresh with the rows of `history` (those of a resumed checkpoint)."""
    (out / LOG).write_text("".join(json.dumps(row) + "\n" for row in history), encoding="utf-8")


def append_metrics_log(out: Path, row: dict[str, Any]) -> None:
    """Append one step's metrics to `metrics_log.jsonl` as it happens (survives a crash)."""
    with (out / LOG).open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(row) + "\n")


@contextlib.contextmanager
def unwrapped_for_generation(accelerator: Any, model: Any) -> Iterator[Any]:
    """The plain module for `generate` and no-grad passes, with full parameters where they are sharded."""
    unwrapped = accelerator.unwrap_model(model)
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is not None and plugin.zero_stage == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(model.parameters())):
            yield unwrapped
        return
    if accelerator.distributed_type.name == "FSDP" and hasattr(model, "summon_full_params"):
        with model.summon_full_params(model, writeback=False, recurse=False):
            yield unwrapped
        return
    yield unwrapped


def make_accelerator(config: TrainerArgs, out: Path, *, name: str) -> Any:
    """Accelerate on CPU or GPU, tracking to TensorBoard if asked (metrics_log.jsonl is always written)."""
    import datetime

    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    if config.report_to not in ("tensorboard", "none"):
        logger.warning("%s reports to tensorboard or none, not %s; metrics stay in %s.", name, config.report_to,
                       LOG)
    # Rank 0 evaluates before and after training while the others wait: allow for it in the timeout.
    patience = InitProcessGroupKwargs(timeout=datetime.timedelta(hours=4))
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), project_dir=out / "logs",
                              log_with="tensorboard" if config.report_to == "tensorboard" else None,
                              kwargs_handlers=[patience])
    accelerator.init_trackers(name)
    return accelerator


def mean_over_processes(accelerator: Any, stats: dict[str, torch.Tensor]) -> dict[str, float]:
    """Each statistic averaged over every process, rounded for the log."""
    local = torch.stack([torch.as_tensor(v, dtype=torch.float32).reshape(()) for v in stats.values()])
    means = accelerator.reduce(local.to(accelerator.device), reduction="mean")
    return {name: round(float(value), 6) for name, value in zip(stats, means, strict=True)}


def log_step(accelerator: Any, bar: Any, out: Path, row: dict[str, Any], *, every: int) -> None:
    """One step's metrics to the tracker, the progress bar, `metrics_log.jsonl` and, every `every` steps, the log."""
    accelerator.log(row, step=row["step"])
    bar.update(1)
    bar.set_postfix(reward=f"{row['reward']:.3f}", kl=f"{row['kl']:.3f}")
    if accelerator.is_main_process:
        append_metrics_log(out, row)
        if row["step"] % max(every, 1) == 0:
            shown = ("reward", "kl", "kl_coef", "entropy", "clipfrac", "value_loss", "approx_kl", "seconds")
            logger.info("step %d %s", row["step"], " ".join(f"{k}={row[k]:.4g}" for k in shown if k in row))


def trained_policy(accelerator: Any, model: Any, *, loaded: Any, model_ref: str, lora: Any) -> tuple[Any, Any]:
    """(base model, LoRA policy) to save and evaluate after training.

    Where parameters are sharded (FSDP, ZeRO-3) the main process rebuilds a whole policy from a
    fresh copy of the base model and the gathered LoRA weights; elsewhere it is the trained one.
    """
    policy = accelerator.unwrap_model(model).policy
    if not is_sharded(accelerator):
        return loaded, policy
    weights = gathered_weights(accelerator, model)  # every process takes part in the gathering
    if weights is None:
        return loaded, policy
    from peft import get_peft_model, set_peft_model_state_dict

    loaded = load_causal_lm(model_ref, method="ppo")
    policy = get_peft_model(loaded.model, lora)
    set_peft_model_state_dict(policy, weights[0])
    return loaded, policy
