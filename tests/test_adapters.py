"""Adapter checks from the files alone (`validate_adapter`), on adapters PEFT itself saved, and
adapters of every accepted kind going in and out of a serving engine without changing the base."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hub.errors import FlywheelError
from serving.adapters import validate_adapter
from serving.engine import Engine, GenerationSettings
from serving.models import load_model
from tasks import get_task
from tests.adapter_factory import CONFIG, WEIGHTS, adapter_files, make_adapter

GREEDY = GenerationSettings(temperature=0, max_new_tokens=12, repetition_penalty=2.0)


@pytest.fixture(scope="module")
def model(tiny_causal_lm: Path):
    return load_model(str(tiny_causal_lm)).model


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("adapter-checks")


@pytest.fixture(scope="module")
def good(tiny_causal_lm: Path, root: Path) -> Path:
    """A q_proj + v_proj adapter of rank 4."""
    return make_adapter(tiny_causal_lm, root / "good")


def check(folder: Path, model) -> dict:
    return validate_adapter(folder, base_id=json.loads((folder / CONFIG).read_text())["base_model_name_or_path"],
                            model=model)


def rewrite(folder: Path, out: Path, *, config: dict | None = None, drop: str | None = None) -> Path:
    """A copy of an adapter folder with config values replaced or the tensors matching `drop` removed."""
    from safetensors.torch import load, save

    files = adapter_files(folder)
    out.mkdir()
    (out / CONFIG).write_bytes(json.dumps({**json.loads(files[CONFIG]), **(config or {})}).encode())
    tensors = {k: v for k, v in load(files[WEIGHTS]).items() if drop is None or drop not in k}
    (out / WEIGHTS).write_bytes(save(tensors))
    return out


@pytest.mark.parametrize("options", [
    {"targets": "all-linear"},
    {"targets": ("v_proj",), "use_dora": True},
    {"targets": ("q_proj",), "lora_bias": True},
    {"targets": ("q_proj", "v_proj"), "rank_pattern": {"v_proj": 2}},
    {"targets": ("embed_tokens",)},
], ids=["all-linear", "dora", "lora-bias", "rank-pattern", "embedding"])
def test_adapters_peft_saves_pass(options: dict, tiny_causal_lm: Path, model, root: Path) -> None:
    folder = root / "-".join(map(str, options.values())).replace("/", "")
    make_adapter(tiny_causal_lm, folder, **options)
    if options["targets"] == ("embed_tokens",):  # PEFT saves the whole base embedding along: not served
        with pytest.raises(FlywheelError, match="embed_tokens.base_layer.weight, which is not a LoRA matrix"):
            check(folder, model)
        folder = rewrite(folder, root / "embedding-only", drop="base_layer")
    assert check(folder, model)["peft_type"] == "LORA"


def test_a_literal_all_linear_config_is_expanded_like_peft_does(tiny_causal_lm: Path, model, root: Path) -> None:
    folder = make_adapter(tiny_causal_lm, root / "expanded", targets="all-linear")
    assert check(rewrite(folder, root / "literal", config={"target_modules": "all-linear"}), model)
    with pytest.raises(FlywheelError, match="no complete LoRA pair for 1 of the modules"):
        check(rewrite(folder, root / "literal-missing", config={"target_modules": "all-linear"},
                      drop="layers.1.mlp.up_proj"), model)


@pytest.mark.parametrize("config, drop, message", [
    ({"r": 0}, None, "r must be a positive whole number"),
    ({"lora_alpha": 0}, None, "lora_alpha must be a positive number"),
    ({"rank_pattern": {"v_proj": 2}}, None, "rank 4 at model.layers.0.self_attn.v_proj, but its config says r=2"),
    ({"target_modules": ["q_proj"]}, None, "holds weights for model.layers.0.self_attn.v_proj"),
    ({"target_modules": ["q_proj", "v_proj", "k_proj"]}, None, "no complete LoRA pair for 2 of the modules"),
    ({}, "layers.1.self_attn.q_proj.lora_B", "no complete LoRA pair for 1 of the modules"),
    ({"modules_to_save": ["lm_head"]}, None, "sets modules_to_save"),
    ({"task_type": "SEQ_CLS"}, None, "is a SEQ_CLS adapter"),
    ({"peft_type": "NOT_A_METHOD"}, None, "not a valid PEFT config"),
    ({"base_model_name_or_path": "EleutherAI/gpt-neo-125m"}, None, "was trained on"),
], ids=["r0", "alpha0", "rank-pattern", "untargeted-weights", "targets-without-weights", "half-pair",
        "modules-to-save", "reward-model", "peft-type", "other-base"])
def test_adapters_that_would_not_serve_safely_are_refused(config: dict, drop: str | None, message: str,
                                                          tiny_causal_lm: Path, model, good: Path, root: Path,
                                                          request: pytest.FixtureRequest) -> None:
    folder = rewrite(good, root / request.node.callspec.id, config=config, drop=drop)
    with pytest.raises(FlywheelError, match=message):
        validate_adapter(folder, base_id=str(tiny_causal_lm), model=model)


def test_a_weights_file_that_is_not_safetensors_is_refused(tiny_causal_lm: Path, model, tmp_path: Path) -> None:
    folder = make_adapter(tiny_causal_lm, tmp_path / "a")
    (folder / WEIGHTS).write_bytes(b"not safetensors at all")
    with pytest.raises(FlywheelError, match="is not a valid safetensors file"):
        check(folder, model)


def test_gpt2_style_conv1d_layers_are_checked_too(tmp_path: Path) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    base = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=32, n_embd=16, n_layer=1, n_head=2)).save_pretrained(base)
    gpt2 = GPT2LMHeadModel.from_pretrained(base)
    folder = make_adapter(base, tmp_path / "a", targets=("c_attn",), fan_in_fan_out=True)
    assert check(folder, gpt2)
    wide = rewrite(folder, tmp_path / "wide", config={"target_modules": ["c_attn", "c_fc"]})
    with pytest.raises(FlywheelError, match="no complete LoRA pair for 1"):
        check(wide, gpt2)


def test_adapters_of_every_kind_go_in_and_out_of_an_engine_without_changing_the_base(
        tiny_causal_lm: Path, root: Path) -> None:
    engine = Engine(load_model(str(tiny_causal_lm)))
    task = get_task("tweet")

    def answer(key: str | None) -> str:
        *_, text = engine.stream(task, {"prompt": "Advice for founders"}, GREEDY, adapter=key)
        return text

    base = answer(None)
    kinds = [{"targets": "all-linear"}, {"targets": ("v_proj",), "use_dora": True}, {"targets": ("q_proj",)}]
    for index, options in enumerate(kinds):  # each revision replaces the last: its layers come and go
        engine.load_adapter("tweet", str(make_adapter(tiny_causal_lm, root / f"swap{index}", seed=index, **options)))
        assert answer("tweet") != base and answer(None) == base
    wrapped = [name for name, module in engine.model.named_modules() if hasattr(module, "lora_A")]
    assert wrapped and all(name.endswith("q_proj") for name in wrapped)  # none left from earlier revisions
