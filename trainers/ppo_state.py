"""PPO's bookkeeping: checkpoints for `--resume`, the per-step metrics log, and generation under
distributed wrappers (DDP, DeepSpeed ZeRO-3, FSDP).

A checkpoint folder `checkpoint-<step>/` holds the LoRA adapter (`adapter_model.safetensors`,
`adapter_config.json`), the value head (`value_head.safetensors`), the optimizer state
(`optimizer.pt`, tensors only) and `trainer_state.json` (step, KL coefficient, metrics so far).
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hub.errors import FlywheelError

logger = logging.getLogger("flywheel.ppo")

VALUE_HEAD = "value_head.safetensors"
STATE = "trainer_state.json"
OPTIMIZER = "optimizer.pt"
LOG = "metrics_log.jsonl"


def find(resume: str, out: Path) -> Path:
    """The checkpoint `--resume` names: `latest` (newest in `out`) or a folder."""
    if resume in ("latest", "true", "True", "1"):
        found = checkpoints(out)
        if not found:
            raise FlywheelError(f"--resume latest: no checkpoint-* folder in {out}.")
        return found[-1]
    path = Path(resume).expanduser()
    if not (path / STATE).exists() or not (path / VALUE_HEAD).exists():
        raise FlywheelError(f"--resume {resume}: not a PPO checkpoint folder "
                            f"(it needs {STATE} and {VALUE_HEAD}).")
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


def save(accelerator: Any, model: Any, optimizer: Any, kl_ctl: Any, history: list[dict[str, Any]],
         out: Path, step: int, *, keep: int) -> None:
    """Write `checkpoint-<step>` from the main process (every process must call this)."""
    import torch
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


def load(path: Path, model: Any, optimizer: Any, kl_ctl: Any, history: list[dict[str, Any]]) -> int:
    """Restore adapter, value head, optimizer, KL coefficient and history; return the step to start at."""
    import torch
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


def reset_log(out: Path, history: list[dict[str, Any]]) -> None:
    """Start `metrics_log.jsonl` afresh with the rows of `history` (those of a resumed checkpoint)."""
    (out / LOG).write_text("".join(json.dumps(row) + "\n" for row in history), encoding="utf-8")


def append_log(out: Path, row: dict[str, Any]) -> None:
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
