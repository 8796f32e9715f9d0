"""The pieces of the online update (`serving.online` states the objective): rewards, baseline, loss, model.

- `reward_of`: a rating's weighted reward (0..1), or +1 / -1 for a good / bad flag.
- `RunningBaseline`: an exponentially weighted mean and variance of the rewards; the advantage of
  a reward is its distance from the mean in running standard deviations, clipped.
- `policy_loss`: one example's policy-gradient term plus the KL penalty to the base model.
- `trainable_copy`: a second module tree over the engine's own base weights (shared, never
  written), wrapped in a fresh or resumed LoRA adapter, so training never touches the model that
  serves requests and costs no second copy of the base weights.
"""

from __future__ import annotations

import copy
import itertools
import math
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hub.repos import ADAPTER_WEIGHTS
from tasks import Task

ADVANTAGE_CLIP = 3.0
"""Largest advantage, in running standard deviations: one odd rating cannot take a huge step."""
MAX_PROMPT_TOKENS = 512
MAX_COMPLETION_TOKENS = 256


def reward_of(task: Task, record: dict[str, Any]) -> float | None:
    """The reward a feedback record gives its completion, or None for kinds that give none (edits, votes).

    Example:
        >>> from tasks import get_task
        >>> reward_of(get_task("detox"), {"kind": "flag", "label": "toxic"})
        -1.0
    """
    if record.get("kind") == "rating" and record.get("reward") is not None:
        return float(record["reward"])
    if record.get("kind") == "flag" and record.get("label"):
        return 1.0 if record["label"] in task.good_flags else -1.0
    return None


def reward_range(task: Task) -> tuple[float, float]:
    """The rewards `reward_of` gives this task: ratings 0..1, flags -1..1."""
    return (0.0, 1.0) if task.rating_weights else (-1.0, 1.0)


@dataclass
class RunningBaseline:
    """Exponentially weighted mean and variance of the rewards seen so far.

    Until `count` reaches 1 / (1 - decay) the weights are those of a plain running mean, so the
    first rewards are not swamped by the prior (the middle of the reward range).
    """

    mean: float
    var: float
    floor: float
    """Smallest standard deviation an advantage is divided by."""
    decay: float = 0.95
    count: int = 0

    @classmethod
    def for_task(cls, task: Task, *, decay: float = 0.95) -> RunningBaseline:
        low, high = reward_range(task)
        return cls(mean=(low + high) / 2, var=((high - low) / 4) ** 2, floor=(high - low) / 20, decay=decay)

    @classmethod
    def restore(cls, task: Task, saved: dict[str, float], *, decay: float = 0.95) -> RunningBaseline:
        fresh = cls.for_task(task, decay=decay)
        return cls(**{**asdict(fresh), **{k: v for k, v in saved.items() if k in asdict(fresh)}}) if saved else fresh

    def advantage(self, reward: float) -> float:
        """(reward - mean) / std, clipped to +-ADVANTAGE_CLIP."""
        value = (reward - self.mean) / max(math.sqrt(self.var), self.floor)
        return max(-ADVANTAGE_CLIP, min(ADVANTAGE_CLIP, value))

    def update(self, reward: float) -> None:
        self.count += 1
        alpha = max(1.0 - self.decay, 1.0 / self.count)
        delta = reward - self.mean
        self.mean += alpha * delta
        self.var = (1.0 - alpha) * (self.var + alpha * delta * delta)

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class Example:
    """One rated completion, tokenized, with its advantage."""

    prompt_ids: Any
    """1-D LongTensor: the prompt exactly as the engine renders it."""
    completion_ids: Any
    """1-D LongTensor: the rated completion."""
    reward: float
    advantage: float


def policy_loss(model: Any, example: Example, *, kl_coef: float) -> tuple[Any, dict[str, float]]:
    """-A * mean log pi(y|x) + kl_coef * mean KL(pi || pi_base) over the completion's positions.

    The KL is exact at each position (a sum over the vocabulary), with the base model's
    distribution computed with the adapter switched off. Returns (loss, figures for logging).
    """
    import torch

    ids = torch.cat([example.prompt_ids, example.completion_ids])[None]
    start = example.prompt_ids.shape[0] - 1  # logits at position t predict token t + 1
    with torch.no_grad(), model.disable_adapter():
        base_logp = torch.log_softmax(model(input_ids=ids).logits[0, start:-1].float(), dim=-1)
    logp = torch.log_softmax(model(input_ids=ids).logits[0, start:-1].float(), dim=-1)
    token_logp = logp.gather(-1, example.completion_ids[:, None]).squeeze(-1)
    kl = (logp.exp() * (logp - base_logp)).sum(-1).mean()
    loss = -example.advantage * token_logp.mean() + kl_coef * kl
    return loss, {"kl": float(kl.detach()), "logp": float(token_logp.detach().mean())}


def clip_ids(prompt_ids: Any, completion_ids: Any) -> tuple[Any, Any]:
    """Bound the cost of one update: the prompt keeps its end, the completion its start."""
    return prompt_ids[-MAX_PROMPT_TOKENS:], completion_ids[:MAX_COMPLETION_TOKENS]


def trainable_copy(model: Any, *, rank: int, alpha: int, checkpoint: Path | None, base_id: str) -> Any:
    """A PeftModel over `model`'s base weights (shared, frozen) with one trainable LoRA adapter.

    `model` is the engine's base transformers model, possibly with serving adapters injected: the
    copy shares every parameter and buffer tensor and drops those LoRA wrappers. The adapter is
    resumed from `checkpoint` or starts at zero (LoRA's B = 0: exactly the base model).
    """
    from peft import LoraConfig, PeftModel, get_peft_model
    from peft.tuners.tuners_utils import BaseTunerLayer

    shared = {id(tensor): tensor for tensor in itertools.chain(model.parameters(), model.buffers())}
    clone = copy.deepcopy(model, shared)
    for name, module in list(clone.named_modules()):
        if isinstance(module, BaseTunerLayer):  # a serving adapter's wrapper: keep the layer it wraps
            parent, _, child = name.rpartition(".")
            setattr(clone.get_submodule(parent), child, module.get_base_layer())
    vars(clone).pop("peft_config", None)  # PEFT marks the models it wraps
    for parameter in clone.parameters():
        parameter.requires_grad_(False)
    if checkpoint is not None:
        peft = PeftModel.from_pretrained(clone, str(checkpoint), is_trainable=True)
    else:
        config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules="all-linear",
                            task_type="CAUSAL_LM")
        peft = get_peft_model(clone, config)
    peft.peft_config["default"].base_model_name_or_path = base_id
    return peft


def save_adapter(model: Any, folder: Path) -> Path:
    """Save the PeftModel's adapter into `folder`, written aside and renamed into place (never half written)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    model.save_pretrained(str(staging))
    (staging / "README.md").unlink(missing_ok=True)  # PEFT's placeholder card; publishing writes the real one
    if folder.exists():  # left by a run that stopped before it recorded the folder anywhere
        shutil.rmtree(folder)
    staging.rename(folder)
    return folder


def load_adapter_weights(model: Any, folder: Path) -> None:
    """Put the adapter weights saved in `folder` back into the PeftModel's trainable adapter."""
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(model, load_file(str(folder / ADAPTER_WEIGHTS)))
