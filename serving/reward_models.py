"""Reward models: a LoRA sequence-classification adapter on a base LM, scoring (prompt, completion).

`trainers/reward.py` trains them; PPO, GRPO and evaluation load them with `load_reward_model`:

    reward = load_reward_model("me/flywheel-arena-reward")          # or a local folder
    reward(["Give me two marathon tips."], ["Start slow; drink early."])   # -> [0.83]

A repo needs only what `hub.publish.push_adapter` publishes: `adapter_config.json` (whose
`base_model_name_or_path` names the base model) and `adapter_model.safetensors` (LoRA weights
plus the trained `score` head). The tokenizer comes from the base model.

Training and scoring share one rendering (`encode`), so scores mean the same thing everywhere:
the prompt becomes chat messages (a plain string is one user turn; an HH-RLHF transcript
"Human: ... Assistant: ..." is split into its turns; system messages are dropped, since the task
prompt texts the RL trainers pass have none), the completion is the assistant turn, and the
model's chat template renders them. Without a chat template the texts are joined by a blank line.
Over `max_length` tokens, the prompt loses its beginning first: the end of a conversation and
the answer decide the score.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hub.errors import FlywheelError, first_line
from hub.repos import ADAPTER_CONFIG, ADAPTER_WEIGHTS, resolve_adapter
from serving.models import BUNDLED, BUNDLED_HUB_ID, BUNDLED_NAME, resolve_model_ref

logger = logging.getLogger(__name__)

Prompt = str | list[dict[str, str]]
DEFAULT_MAX_LENGTH = 1024
_HH_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):[ \t]?")


def to_messages(prompt: Prompt) -> list[dict[str, str]]:
    """Chat messages (no system turn) for a prompt string, HH transcript or message list.

    Example:
        >>> to_messages("Human: hi\\n\\nAssistant: hello\\n\\nHuman: how are you?")
        [{'role': 'user', 'content': 'hi'}, {'role': 'assistant', 'content': 'hello'}, \
{'role': 'user', 'content': 'how are you?'}]
    """
    if isinstance(prompt, str):
        if prompt.lstrip().startswith("Human:") and "\n\nAssistant:" in prompt:
            parts = _HH_TURN.split(prompt.strip())
            turns = [{"role": "user" if who == "Human" else "assistant", "content": text.strip()}
                     for who, text in zip(parts[1::2], parts[2::2], strict=True)]
            if turns and turns[-1]["role"] == "assistant" and not turns[-1]["content"]:
                turns.pop()  # the transcript ended with the "Assistant:" tag awaiting the answer
            return turns
        return [{"role": "user", "content": prompt}]
    if isinstance(prompt, list) and all(isinstance(m, dict) for m in prompt):
        return [{"role": str(m.get("role", "user")), "content": str(m.get("content", ""))}
                for m in prompt if m.get("role") != "system"]
    raise FlywheelError("A reward-model prompt must be text or a list of chat messages, "
                        f"not {type(prompt).__name__}.")


def encode(tokenizer: Any, prompt: Prompt, completion: str, *,
           max_length: int = DEFAULT_MAX_LENGTH) -> list[int]:
    """Token ids the reward model scores for one (prompt, completion), at most `max_length` long."""
    messages = to_messages(prompt)
    if getattr(tokenizer, "chat_template", None):
        head = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": completion}],
                                             tokenize=False)
        tail = full[len(head):] if full.startswith(head) else completion
    else:
        head = "\n\n".join(m["content"] for m in messages) + "\n\n"
        tail = completion + (tokenizer.eos_token or "")
    head_ids = tokenizer(head, add_special_tokens=False)["input_ids"]
    tail_ids = tokenizer(tail, add_special_tokens=False)["input_ids"]
    budget = max(8, max_length - min(len(head_ids), max_length // 4))
    if len(tail_ids) > budget:  # keep the answer's start and its closing tokens (where the score is read)
        tail_ids = tail_ids[:budget - 2] + tail_ids[-2:]
    keep = max_length - len(tail_ids)
    return (head_ids[-keep:] if keep > 0 else []) + tail_ids


def load_reward_base(ref: str | None, *, dtype: str = "float32") -> tuple[Any, Any, str]:
    """(sequence-classification model with a fresh 1-output `score` head, tokenizer, base id).

    Raises:
        FlywheelError: unknown model, a seq2seq model, or one with no classification class.
    """
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    source, base_id = resolve_model_ref(ref)
    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as error:
        raise FlywheelError(f"Cannot load model {ref!r}: {first_line(error)}") from error
    if getattr(config, "is_encoder_decoder", False):
        raise FlywheelError(f"Reward models need a decoder-only (causal) model; {ref} is seq2seq "
                            f"({config.model_type}). Use e.g. --model bundled or gpt2.")
    quantization = getattr(config, "quantization_config", None) or {}
    if isinstance(quantization, dict) and quantization.get("quant_method") == "gguf":
        # The bundled model's cache holds plain dequantized weights but keeps the GGUF note in
        # config.json, which would make transformers refuse to train it.
        del config.quantization_config
    config.num_labels = 1
    try:
        from trl.trainer.reward_trainer import suppress_seqcls_warning

        tokenizer = AutoTokenizer.from_pretrained(source)
        with suppress_seqcls_warning():
            model = AutoModelForSequenceClassification.from_pretrained(
                source, config=config, dtype=getattr(torch, dtype))
    except (OSError, ValueError, KeyError) as error:
        raise FlywheelError(f"Cannot load {ref!r} as a reward model: {first_line(error)}") from error
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer, base_id


class RewardModel:
    """Callable `(prompts, completions) -> list[float]`: one scalar reward per completion."""

    def __init__(self, model: Any, tokenizer: Any, *, ref: str = "", base_id: str = "",
                 revision: str = "", max_length: int = DEFAULT_MAX_LENGTH, batch_size: int = 8) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.ref, self.base_id, self.revision = ref, base_id, revision
        self.max_length, self.batch_size = max_length, batch_size

    def __repr__(self) -> str:
        return f"RewardModel({self.ref!r}, base={self.base_id!r})"

    def __call__(self, prompts: Sequence[Prompt], completions: Sequence[str]) -> list[float]:
        if len(prompts) != len(completions):
            raise FlywheelError(f"Got {len(prompts)} prompts for {len(completions)} completions.")
        encoded = [encode(self.tokenizer, p, c, max_length=self.max_length)
                   for p, c in zip(prompts, completions, strict=True)]
        return self.score_ids(encoded)

    def score_ids(self, encoded: Sequence[list[int]]) -> list[float]:
        """Scores for already-encoded sequences (see `encode`), batched by length."""
        import torch

        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        scores = [0.0] * len(encoded)
        pad = self.tokenizer.pad_token_id
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                for start in range(0, len(order), self.batch_size):
                    batch = order[start:start + self.batch_size]
                    width = max(len(encoded[i]) for i in batch)
                    ids = torch.full((len(batch), width), pad, dtype=torch.long)
                    mask = torch.zeros((len(batch), width), dtype=torch.long)
                    for row, i in enumerate(batch):
                        ids[row, :len(encoded[i])] = torch.tensor(encoded[i])
                        mask[row, :len(encoded[i])] = 1
                    device = next(self.model.parameters()).device
                    logits = self.model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
                    for i, value in zip(batch, logits[:, 0].float().tolist(), strict=True):
                        scores[i] = value
        finally:
            self.model.train(was_training)
        return scores


def load_reward_model(ref: str, *, revision: str | None = None, base_model: str | None = None,
                      max_length: int = DEFAULT_MAX_LENGTH, batch_size: int = 8) -> RewardModel:
    """Load a reward model saved by `trainers/reward.py` from a folder or a Hub repo.

    Args:
        ref: adapter folder or Hub repo id.
        revision: Hub revision (branch, tag or commit) to load.
        base_model: override the base model named in `adapter_config.json`.
        max_length: longest scored sequence in tokens (the prompt's start is cut first).
        batch_size: sequences per forward pass.

    Raises:
        FlywheelError: the ref does not exist, lacks the adapter files, is not a reward model
            (task type SEQ_CLS with a `score` head), or its base model cannot be loaded.
    """
    from peft import PeftModel

    path, resolved = resolve_adapter(ref, revision=revision)
    config = read_reward_config(path, ref=ref)
    base_ref = base_model or _base_ref(config.get("base_model_name_or_path"), ref=ref)
    model, tokenizer, base_id = load_reward_base(base_ref)
    try:
        model = PeftModel.from_pretrained(model, str(path)).merge_and_unload()
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        raise FlywheelError(f"Reward model {ref} does not fit base model {base_ref}: "
                            f"{first_line(error)}") from error
    model.eval()
    logger.info("Loaded reward model %s (revision %s) on %s", ref, resolved[:12], base_id)
    return RewardModel(model, tokenizer, ref=ref, base_id=base_id, revision=resolved,
                       max_length=max_length, batch_size=batch_size)


def read_reward_config(path: Path, *, ref: str) -> dict[str, Any]:
    """The adapter config of a reward-model folder, after checking its files and kind."""
    config_file, weights = path / ADAPTER_CONFIG, path / ADAPTER_WEIGHTS
    missing = [f.name for f in (config_file, weights) if not f.exists()]
    if missing:
        raise FlywheelError(f"Reward model {ref} lacks {', '.join(missing)}: not a Flywheel reward model.")
    try:
        config = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise FlywheelError(f"{config_file} is not valid JSON: {error}") from error
    if config.get("task_type") != "SEQ_CLS":
        raise FlywheelError(f"{ref} is a {config.get('task_type') or 'untyped'} adapter, not a reward model "
                            "(task type SEQ_CLS): train one with trainers/reward.py.")
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as handle:
        names = list(handle.keys())  # noqa: SIM118 - safe_open is not a dict
        if not any(".score." in key or key.startswith("score.") for key in names):
            raise FlywheelError(f"Reward model {ref} has no trained score head in {ADAPTER_WEIGHTS}.")
    return config


def _base_ref(name: str | None, *, ref: str) -> str:
    """The bundled model stands in for SmolLM2-135M-Instruct: adapters trained on it name that id."""
    if not name:
        raise FlywheelError(f"Reward model {ref} does not name its base model (base_model_name_or_path).")
    if Path(name).expanduser().exists():
        return name
    if name.rstrip("/").split("/")[-1].lower() == BUNDLED_NAME.lower():
        try:
            resolve_model_ref(BUNDLED)
            return BUNDLED
        except FlywheelError:
            return BUNDLED_HUB_ID
    return name

