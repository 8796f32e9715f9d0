"""Putting a LoRA adapter into the shared model, and taking it out again without a trace.

PEFT injects LoRA layers into the base model in place. A load that fails half way (a size
mismatch found while copying weights) or an adapter that loads but answers garbage would
otherwise stay inside the model every tab shares. `add_adapter` records the model first and,
on any failure, removes the new adapter, puts back every original layer that no adapter uses
any more, restores what PEFT changed on the base model (its `peft_config` attribute, the
`requires_grad` flags) and checks that the model is the one it recorded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hub.errors import FlywheelError, first_line
from serving.models import inner_model


@dataclass(frozen=True)
class ModelRecord:
    """Which modules and parameters a model is made of, by identity, and its base model's attributes."""

    modules: tuple[tuple[str, int], ...]
    parameters: tuple[tuple[str, int, bool], ...]
    base_attributes: frozenset[str]

    @classmethod
    def of(cls, model: Any) -> ModelRecord:
        return cls(modules=tuple((name, id(module)) for name, module in model.named_modules()),
                   parameters=tuple((name, id(p), p.requires_grad) for name, p in model.named_parameters()),
                   base_attributes=frozenset(vars(inner_model(model))))


def add_adapter(model: Any, path: Path, name: str, *, check: Callable[[Any], None]) -> Any:
    """Load the adapter at `path` into `model` as `name`, run `check(peft_model)`, return the PEFT model.

    `model` is a plain transformers model (no adapter yet) or the PeftModel holding the others.
    On any failure the model is left exactly as it was and FlywheelError says why.
    """
    from peft import PeftModel

    record = ModelRecord.of(model)
    active = model.active_adapter if isinstance(model, PeftModel) else None
    try:
        if isinstance(model, PeftModel):
            model.load_adapter(str(path), adapter_name=name)
            loaded = model
        else:
            loaded = PeftModel.from_pretrained(model, str(path), adapter_name=name)
        loaded.eval()
        check(loaded)
    except Exception as error:  # noqa: BLE001 - whatever went wrong, the model must be put back
        _restore(model, name, record, active)
        raise FlywheelError(first_line(error)) from error
    return loaded


def remove_adapter(model: Any, name: str) -> None:
    """Delete adapter `name` from a PeftModel and unwrap the layers no adapter uses any more."""
    if name in model.peft_config:
        model.delete_adapter(name)
    _unwrap_unused_layers(model)


def _restore(model: Any, name: str, record: ModelRecord, active: str | None) -> None:
    from peft import PeftModel

    if isinstance(model, PeftModel):
        remove_adapter(model, name)
        if active is not None:
            model.set_adapter(active)
    else:  # the first adapter: every LoRA layer in the model is the new one's
        _unwrap_unused_layers(model, adapter=name)
    base = inner_model(model)
    for attribute in set(vars(base)) - record.base_attributes:
        delattr(base, attribute)  # PeftModel sets `peft_config` on the model it wraps
    flags = {param_name: grad for param_name, _, grad in record.parameters}
    for param_name, parameter in model.named_parameters():
        if param_name in flags:
            parameter.requires_grad_(flags[param_name])
    if ModelRecord.of(model) != record:
        raise FlywheelError(f"adapter {name} could not be taken out of the model again; restart the app")


def _unwrap_unused_layers(model: Any, *, adapter: str | None = None) -> None:
    """Replace each LoRA layer left without adapters (after deleting `adapter` from it) by its original."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module_name, module in list(model.named_modules()):
        if not isinstance(module, BaseTunerLayer):
            continue
        if adapter is not None:
            module.delete_adapter(adapter)
        if not any(len(getattr(module, attr)) for attr in module.adapter_layer_names):
            parent, _, child = module_name.rpartition(".")
            setattr(model.get_submodule(parent), child, module.get_base_layer())
