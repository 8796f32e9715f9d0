"""Checking LoRA adapters from their files alone, before anything touches the shared model.

`validate_adapter` refuses, with one clear line each: missing or pickled files, a config that
is not a valid LoRA config, an adapter made for another base model or model kind, extra modules
(`modules_to_save` and the like: a served adapter holds LoRA matrices only, so the base stays
shared), targets the base model does not have, weights for modules the config does not target
(or targeted modules without weights), matrices whose rank differs from the config's `r`,
matrices that do not fit the base model's layers, and NaN or infinite values.

PEFT would load several of these anyway (unexpected keys are a warning) or fail half way,
after it has already injected layers into the model every tab shares.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from hub.errors import FlywheelError, first_line
from hub.repos import ADAPTER_CONFIG, ADAPTER_WEIGHTS, PICKLE_SUFFIXES
from serving.models import inner_model

WEIGHT_PREFIX = "base_model.model."
LORA_PARTS = frozenset({"base_layer", "lora_A", "lora_B", "lora_dropout", "lora_embedding_A", "lora_embedding_B",
                        "lora_magnitude_vector"})
"""Names of the submodules PEFT adds inside an adapted layer (not part of the base model)."""
UNSERVED_OPTIONS = ("modules_to_save", "trainable_token_indices", "target_parameters")
"""Config options that put whole trained copies of base modules or parameters into an adapter."""
DOWN, UP = ("lora_A.weight", "lora_embedding_A"), ("lora_B.weight", "lora_embedding_B")
"""Tensor names of LoRA's two matrices: (rank, input size) and (output size, rank); linear and embedding."""
VECTORS = ("lora_B.bias", "lora_magnitude_vector")
"""Tensor names of LoRA's optional per-output vectors (`lora_bias`, DoRA)."""


def validate_adapter(path: Path, *, base_id: str, model: Any | None = None) -> dict[str, Any]:
    """Refuse adapters that cannot be served safely; return the config as read from the file.

    Without `model` only what needs no base model is checked (files, config, base id, values).
    `model` may already carry adapters: its LoRA wrappers are seen through.
    """
    config_file = path / ADAPTER_CONFIG
    if not config_file.exists():
        raise FlywheelError(f"Adapter at {path} has no {ADAPTER_CONFIG}.")
    pickled = [p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES]
    if pickled:
        raise FlywheelError(f"Adapter at {path} ships pickled weights ({', '.join(pickled)}); "
                            "only safetensors are loaded.")
    if not (path / ADAPTER_WEIGHTS).exists():
        raise FlywheelError(f"Adapter at {path} has no {ADAPTER_WEIGHTS}.")
    try:
        config = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise FlywheelError(f"Adapter config at {config_file} is not valid JSON: {error}") from error
    adapter_base = config.get("base_model_name_or_path")
    if adapter_base and not _same_base(adapter_base, base_id):
        raise FlywheelError(f"Adapter at {path} was trained on {adapter_base}, "
                            f"but this app serves {base_id}.")
    lora = _lora_config(path)
    shapes = _finite_weight_shapes(path)
    if model is not None:
        _check_model_kind(path, lora, model)
        _check_against_model(path, lora, shapes, model)
    return config


def _same_base(adapter_base: str, base_id: str) -> bool:
    def norm(name: str) -> str:
        return name.rstrip("/").split("/")[-1].lower()

    return adapter_base == base_id or norm(adapter_base) == norm(base_id)


def _lora_config(path: Path) -> Any:
    """The config as PEFT will read it, with the values that PEFT itself does not check."""
    from peft import LoraConfig, PeftConfig

    try:
        lora = PeftConfig.from_pretrained(str(path))
    except (TypeError, ValueError, KeyError) as error:
        raise FlywheelError(f"Adapter config at {path} is not a valid PEFT config: {first_line(error)}") from error
    if not isinstance(lora, LoraConfig):
        raise FlywheelError(f"Adapter at {path} is a {lora.peft_type or 'untyped'} adapter; only LoRA is served.")
    ranks = {"r": lora.r, **{f"rank_pattern[{k!r}]": v for k, v in (lora.rank_pattern or {}).items()}}
    for name, rank in ranks.items():
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise FlywheelError(f"Adapter config at {path}: {name} must be a positive whole number, got {rank!r}.")
    alphas = {"lora_alpha": lora.lora_alpha, **{f"alpha_pattern[{k!r}]": v
                                                 for k, v in (lora.alpha_pattern or {}).items()}}
    for name, alpha in alphas.items():
        if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not math.isfinite(alpha) or alpha <= 0:
            raise FlywheelError(f"Adapter config at {path}: {name} must be a positive number, got {alpha!r}.")
    extras = [option for option in UNSERVED_OPTIONS if getattr(lora, option, None)]
    if extras:
        raise FlywheelError(f"Adapter at {path} sets {', '.join(extras)}: it carries trained copies of base "
                            "modules, and a served adapter may hold LoRA matrices only.")
    if not lora.target_modules:
        raise FlywheelError(f"Adapter config at {path} names no target_modules.")
    return lora


def _finite_weight_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Shape of every tensor in the weights file, after checking each holds finite numbers only."""
    import torch
    from safetensors import SafetensorError, safe_open

    shapes = {}
    try:
        with safe_open(str(path / ADAPTER_WEIGHTS), framework="pt") as weights:
            for key in weights.keys():  # noqa: SIM118 - safe_open handles are not iterable
                tensor = weights.get_tensor(key)
                if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                    raise FlywheelError(f"Adapter at {path} holds NaN or infinite values ({key}).")
                shapes[key] = tuple(tensor.shape)
    except SafetensorError as error:
        raise FlywheelError(f"{path / ADAPTER_WEIGHTS} is not a valid safetensors file: {first_line(error)}") from error
    if not shapes:
        raise FlywheelError(f"Adapter at {path} holds no weights.")
    return shapes


def _check_model_kind(path: Path, lora: Any, model: Any) -> None:
    seq2seq = bool(getattr(model.config, "is_encoder_decoder", False))
    expected = "SEQ_2_SEQ_LM" if seq2seq else "CAUSAL_LM"
    task_type = getattr(lora.task_type, "value", lora.task_type)
    if task_type not in (None, expected):
        raise FlywheelError(f"Adapter at {path} is a {task_type} adapter; this app generates text with a "
                            f"{expected} model.")


def _check_against_model(path: Path, lora: Any, shapes: dict[str, tuple[int, ...]], model: Any) -> None:
    """Targets, rank and sizes of every LoRA matrix against the base model's layers."""
    from peft.utils.other import get_pattern_key

    layers = _base_layers(model)
    targeted = _targeted(lora, layers, model)
    if not targeted:
        raise FlywheelError(f"Adapter at {path} targets {_names(lora.target_modules)}, "
                            "which this base model does not have.")
    found: dict[str, set[str]] = {}
    for key, shape in shapes.items():
        module, kind = _split_key(path, key)
        if module not in targeted:
            raise FlywheelError(f"Adapter at {path} holds weights for {module}, which its target_modules "
                                f"({_names(lora.target_modules)}) do not select in this base model.")
        sizes = _layer_sizes(layers[module])
        if sizes is None:
            raise FlywheelError(f"Adapter at {path} targets {module} "
                                f"({type(layers[module]).__name__}), which LoRA cannot adapt here.")
        rank = (lora.rank_pattern or {}).get(get_pattern_key(list(lora.rank_pattern or {}), module), lora.r)
        _check_matrix(path, module, kind, shape, sizes=sizes, rank=rank)
        found.setdefault(module, set()).add(kind)
    incomplete = sorted(set(targeted) - {m for m, kinds in found.items() if _has_pair(kinds)})
    if incomplete:
        raise FlywheelError(f"Adapter at {path} has no complete LoRA pair for {len(incomplete)} of the modules "
                            f"it targets (e.g. {incomplete[0]}).")


def _base_layers(model: Any) -> dict[str, Any]:
    """The base model's modules by name, as PEFT names them, with LoRA wrappers seen through."""
    return {name: module.get_base_layer() if hasattr(module, "get_base_layer") else module
            for name, module in inner_model(model).named_modules() if name and not LORA_PARTS & set(name.split("."))}


def _targeted(lora: Any, layers: dict[str, Any], model: Any) -> set[str]:
    """Module names PEFT would adapt with this config (`all-linear` expanded the way PEFT does)."""
    from peft.tuners.tuners_utils import check_target_module_exists

    if isinstance(lora.target_modules, str) and lora.target_modules.lower() == "all-linear":
        base = inner_model(model)
        output = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
        output = output.get_base_layer() if hasattr(output, "get_base_layer") else output
        return {name for name, layer in layers.items() if layer is not output and _is_linear(layer)}
    return {name for name in layers if check_target_module_exists(lora, name)}


def _split_key(path: Path, key: str) -> tuple[str, str]:
    """`base_model.model.<module>.<kind>` -> (module, kind), refusing tensors LoRA does not define."""
    name = key.removeprefix(WEIGHT_PREFIX)
    for kind in (*DOWN, *UP, *VECTORS):
        if name.endswith("." + kind):
            return name[: -len(kind) - 1], kind
    raise FlywheelError(f"Adapter at {path} holds {key}, which is not a LoRA matrix "
                        "(loading it would overwrite the shared base model).")


def _layer_sizes(layer: Any) -> tuple[int, int] | None:
    """(input size, output size) of a layer LoRA can adapt, else None."""
    import torch

    if isinstance(layer, torch.nn.Embedding):
        return layer.num_embeddings, layer.embedding_dim
    if not _is_linear(layer):
        return None
    if isinstance(layer, torch.nn.Linear):
        return layer.in_features, layer.out_features
    return tuple(layer.weight.shape)  # GPT-2's Conv1D: weight is (in, out)


def _is_linear(layer: Any) -> bool:
    """What PEFT's `all-linear` selects: linear layers and GPT-2's Conv1D."""
    import torch
    from transformers.pytorch_utils import Conv1D

    return isinstance(layer, torch.nn.Linear | Conv1D)


def _check_matrix(path: Path, module: str, kind: str, shape: tuple[int, ...], *, sizes: tuple[int, int],
                  rank: int) -> None:
    """A LoRA tensor must fit its layer's input or output size and have the config's rank."""
    fan_in, fan_out = sizes
    first, last = (shape[0], shape[-1]) if shape else (0, 0)
    if kind in DOWN:
        expected, actual_rank = (first, fan_in), first
    elif kind in UP:
        expected, actual_rank = (fan_out, last), last
    else:
        expected, actual_rank = (fan_out,), None
    if shape != expected:
        raise FlywheelError(f"Adapter at {path} does not fit this base model "
                            f"({module}.{kind}: {list(shape)} vs {list(expected)}).")
    if actual_rank is not None and actual_rank != rank:
        raise FlywheelError(f"Adapter at {path} has LoRA rank {actual_rank} at {module}, "
                            f"but its config says r={rank}.")


def _has_pair(kinds: set[str]) -> bool:
    return any({down, up} <= kinds for down, up in zip(DOWN, UP, strict=True))


def _names(targets: Any) -> str:
    return targets if isinstance(targets, str) else ", ".join(sorted(targets))
