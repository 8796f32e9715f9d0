"""Finding LoRA adapters (Hub repo or folder), checking them before they are served."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from hub.errors import FlywheelError

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


def resolve_adapter(ref: str, *, revision: str | None = None) -> tuple[Path, str]:
    """Return (local folder, revision) for an adapter given as a folder or a Hub repo id.

    For a Hub repo the revision is the commit sha that was downloaded; for a folder it is a
    hash of the weights, so a retrained adapter saved in place counts as a new revision.
    """
    path = Path(ref).expanduser()
    if path.exists():
        if not path.is_dir():
            raise FlywheelError(f"Adapter {ref} is not a folder.")
        return path.resolve(), _content_revision(path)
    if ref.startswith((".", "/", "~")) or ref.count("/") > 1:
        raise FlywheelError(f"Adapter folder {ref} does not exist.")
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError

    try:
        sha = HfApi().model_info(ref, revision=revision).sha or (revision or "main")
        local = snapshot_download(ref, revision=sha, allow_patterns=[ADAPTER_CONFIG, "*.safetensors",
                                                                     "*.bin", "*.pt", "*.pth",
                                                                     "README.md"])
    except (HfHubHTTPError, OSError, ValueError) as error:
        raise FlywheelError(f"Adapter repo {ref} could not be downloaded: {_first_line(error)}") from error
    return Path(local), sha


def latest_revision(ref: str) -> str:
    """The revision `resolve_adapter` would load now (cheap: no download)."""
    path = Path(ref).expanduser()
    if path.exists():
        return _content_revision(path)
    from huggingface_hub import HfApi

    return HfApi().model_info(ref).sha or "main"


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


def _content_revision(path: Path) -> str:
    digest = hashlib.sha256()
    for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
        file = path / name
        if file.exists():
            digest.update(file.read_bytes())
    return digest.hexdigest()[:40]


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
