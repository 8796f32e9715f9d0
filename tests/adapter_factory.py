"""Tiny LoRA adapters for tests: valid ones, and each way an adapter can be broken.

    folder = make_adapter(tiny_causal_lm, tmp_path / "a", seed=1)
    hub_server.seed("user/tweet-adapter", adapter_files(folder))
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

CONFIG, WEIGHTS = "adapter_config.json", "adapter_model.safetensors"


def make_adapter(base: Path, out: Path, *, seed: int = 0, r: int = 4,
                 targets: Sequence[str] | str = ("q_proj", "v_proj"), **lora_options: Any) -> Path:
    """Save a LoRA adapter with random (non-zero) weights for the model in `base`; return `out`.

    Different seeds give adapters whose answers differ from each other and from the base model.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base)
    config = LoraConfig(r=r, lora_alpha=2 * r, target_modules=targets if isinstance(targets, str) else list(targets),
                        init_lora_weights=False, task_type="CAUSAL_LM", **lora_options)
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_" in name:
                parameter.mul_(8.0)  # large enough to change greedy answers of a random tiny model
    peft_model.save_pretrained(out, safe_serialization=True)
    return out


def adapter_files(folder: Path) -> dict[str, bytes]:
    """The files a published adapter repo holds, ready for `HubServer.seed`."""
    return {name: (folder / name).read_bytes() for name in (CONFIG, WEIGHTS)}


def other_base(files: dict[str, bytes], base: str = "EleutherAI/gpt-neo-125m") -> dict[str, bytes]:
    """The same files, claiming to be trained on another base model."""
    config = json.loads(files[CONFIG])
    config["base_model_name_or_path"] = base
    return {**files, CONFIG: json.dumps(config).encode()}


def pickled(files: dict[str, bytes]) -> dict[str, bytes]:
    """Pickled weights (`adapter_model.bin`) instead of safetensors."""
    import io

    import torch

    buffer = io.BytesIO()
    torch.save({"lora": torch.zeros(2)}, buffer)
    return {CONFIG: files[CONFIG], "adapter_model.bin": buffer.getvalue()}


def missing_weights(files: dict[str, bytes]) -> dict[str, bytes]:
    """Only the config."""
    return {CONFIG: files[CONFIG]}


def wrong_shapes(files: dict[str, bytes], width: int = 48) -> dict[str, bytes]:
    """LoRA matrices whose input size does not fit the base model's layers."""
    import torch
    from safetensors.torch import load, save

    tensors = load(files[WEIGHTS])
    resized = {name: torch.zeros(t.shape[0], width) if ".lora_A." in name else t
               for name, t in tensors.items()}
    return {**files, WEIGHTS: save(resized)}


def _map_tensors(files: dict[str, bytes], change: Callable[[str, Any], Any]) -> dict[str, bytes]:
    from safetensors.torch import load, save

    return {**files, WEIGHTS: save({name: change(name, t) for name, t in load(files[WEIGHTS]).items()})}


def _set_config(files: dict[str, bytes], **values: Any) -> dict[str, bytes]:
    return {**files, CONFIG: json.dumps({**json.loads(files[CONFIG]), **values}).encode()}


def wrong_rank(files: dict[str, bytes]) -> dict[str, bytes]:
    """A config claiming twice the rank its matrices have (PEFT builds r=2x layers, then fails to fill them)."""
    return _set_config(files, r=2 * json.loads(files[CONFIG])["r"])


def nan_weights(files: dict[str, bytes]) -> dict[str, bytes]:
    """Every LoRA matrix all NaN: a model that would answer with empty strings."""
    return _map_tensors(files, lambda _, t: t.new_full(t.shape, float("nan")))


def overflowing(files: dict[str, bytes], scale: float = 1e30) -> dict[str, bytes]:
    """Finite but huge matrices: every file check passes, the model's scores overflow to inf/NaN."""
    return _map_tensors(files, lambda _, t: t * scale)


def unknown_targets(files: dict[str, bytes]) -> dict[str, bytes]:
    """A config targeting modules the base model does not have."""
    return _set_config(files, target_modules=["c_attn"])


def base_weights_inside(files: dict[str, bytes], shape: tuple[int, int] = (400, 32)) -> dict[str, bytes]:
    """Also a full copy of a base layer (what `save_embedding_layers` writes): it would overwrite the base."""
    import torch
    from safetensors.torch import load, save

    tensors = load(files[WEIGHTS])
    tensors["base_model.model.model.embed_tokens.base_layer.weight"] = torch.zeros(shape)
    return {**files, WEIGHTS: save(tensors)}
