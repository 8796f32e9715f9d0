"""Checking LoRA adapters before they are served: files, format, base model and shapes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hub.errors import FlywheelError
from hub.repos import ADAPTER_CONFIG, ADAPTER_WEIGHTS


def validate_adapter(path: Path, *, base_id: str, model: Any | None = None) -> dict[str, Any]:
    """Refuse adapters that are missing files, pickled, or made for another base model."""
    config_file = path / ADAPTER_CONFIG
    if not config_file.exists():
        raise FlywheelError(f"Adapter at {path} has no {ADAPTER_CONFIG}.")
    pickled = [p.name for p in path.iterdir() if p.suffix in {".bin", ".pt", ".pth", ".pkl"}]
    if pickled:
        raise FlywheelError(f"Adapter at {path} ships pickled weights ({', '.join(pickled)}); "
                            "only safetensors are loaded.")
    if not (path / ADAPTER_WEIGHTS).exists():
        raise FlywheelError(f"Adapter at {path} has no {ADAPTER_WEIGHTS}.")
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as error:
        raise FlywheelError(f"Adapter config at {config_file} is not valid JSON: {error}") from error
    adapter_base = config.get("base_model_name_or_path")
    if adapter_base and not _same_base(adapter_base, base_id):
        raise FlywheelError(f"Adapter at {path} was trained on {adapter_base}, "
                            f"but this app serves {base_id}.")
    if model is not None:
        _check_shapes(path, model)
    return config


def _same_base(adapter_base: str, base_id: str) -> bool:
    def norm(name: str) -> str:
        return name.rstrip("/").split("/")[-1].lower()

    return adapter_base == base_id or norm(adapter_base) == norm(base_id)


def _check_shapes(path: Path, model: Any) -> None:
    """Compare LoRA matrices' input/output sizes with the base model's layers."""
    from safetensors import safe_open

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    modules = dict(base.named_modules())
    with safe_open(str(path / ADAPTER_WEIGHTS), framework="pt") as weights:
        for key in weights.keys():  # noqa: SIM118 - safe_open handles are not iterable
            if ".lora_A." not in key and ".lora_B." not in key:
                continue
            module_name = key.split(".lora_")[0].removeprefix("base_model.model.")
            layer = modules.get(module_name)
            if layer is None or not hasattr(layer, "in_features"):
                raise FlywheelError(f"Adapter at {path} targets {module_name}, "
                                    "which this base model does not have.")
            shape = weights.get_slice(key).get_shape()
            expected = layer.in_features if ".lora_A." in key else layer.out_features
            actual = shape[1] if ".lora_A." in key else shape[0]
            if actual != expected:
                raise FlywheelError(f"Adapter at {path} does not fit this base model "
                                    f"({module_name}: {actual} vs {expected}).")
