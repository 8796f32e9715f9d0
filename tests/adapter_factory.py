"""Tiny LoRA adapters for tests: valid ones, and each way an adapter can be broken.

    folder = make_adapter(tiny_causal_lm, tmp_path / "a", seed=1)
    hub_server.seed("user/tweet-adapter", adapter_files(folder))
"""

from __future__ import annotations

import json
from pathlib import Path

CONFIG, WEIGHTS = "adapter_config.json", "adapter_model.safetensors"


def make_adapter(base: Path, out: Path, *, seed: int = 0, r: int = 4) -> Path:
    """Save a LoRA adapter with random (non-zero) weights for the model in `base`; return `out`.

    Different seeds give adapters whose answers differ from each other and from the base model.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base)
    config = LoraConfig(r=r, lora_alpha=2 * r, target_modules=["q_proj", "v_proj"], init_lora_weights=False,
                        task_type="CAUSAL_LM")
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
