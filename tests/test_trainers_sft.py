"""trainers/sft.py end to end on tiny models: real feedback callback, seed data, card, push gate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.trainer_utils import (
    FAST,
    dialogsum_file,
    error_lines,
    front_matter,
    log_feedback,
    summary_feedback,
    train,
)
from trainers import sft
from trainers.eval_report import EvalReport
from trainers.evaluation import GenerationEvaluator
from trainers.resources import card_section

PUBLISHED = {"README.md", "adapter_config.json", "adapter_model.safetensors", "training_curves.png"}


def test_sft_on_local_feedback_and_seed_data_publishes_adapter_with_card(
        tiny_causal_lm: Path, flywheel_home: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    log_feedback("dialogue_summary", summary_feedback(8))  # into the local feedback home
    seed = dialogsum_file(tmp_path / "dialogsum.jsonl", rows=8)
    target = tmp_path / "published"
    argv = ["--task", "dialogue_summary", "--model", str(tiny_causal_lm), "--seed-data", str(seed), *FAST,
            "--report-to", "tensorboard", "--push", "--hub-repo", str(target), "--force"]

    code, out, err = train(sft.main, sft.SFTArgs, argv, capsys)

    assert code == 0, err
    assert "| metric | before | after |" in out and "[rank 0/1] sft: 2 optimizer steps" in out
    adapter = flywheel_home / "adapters" / "dialogue_summary-sft"
    for name in ("adapter_model.safetensors", "metrics.jsonl", "eval_before.json", "eval_after.json"):
        assert (adapter / name).exists(), name
    assert list((adapter / "logs").rglob("events.out.tfevents*")), "TensorBoard logs missing"
    assert [json.loads(line)["loss"] for line in (adapter / "metrics.jsonl").read_text().splitlines()
            if "loss" in json.loads(line)]
    assert {p.name for p in target.iterdir()} == PUBLISHED
    readme = (target / "README.md").read_text()
    meta = front_matter(readme)
    assert meta["base_model"] == str(tiny_causal_lm) and meta["library_name"] == "peft"
    sources = {d["kind"]: d for d in meta["flywheel"]["datasets"]}
    assert sources["feedback"]["revision"].startswith("local-") and sources["feedback"]["rows"] > 0
    assert sources["seed"]["rows"] > 0
    assert "| **rougeL** ↑ |" in readme and "![training curves](training_curves.png)" in readme
    assert "max_steps: 2" in readme  # the recipe
    resources = json.loads((adapter / "resources.json").read_text())  # what a rerun costs, on every card
    assert {"loading", "evaluation", "training", "saving"} <= set(resources["phases"])
    assert resources["peak_rss_mb"] > 0 and resources["peak_phase"] in resources["phases"]
    assert "## Training cost" in readme
    assert card_section(resources).splitlines()[0] in readme  # peak, its phase, training time, hardware
    assert f"{resources['hardware']['cpu_count']} CPU cores" in readme and "float32" in readme
    assert "| training |" in readme


def test_sft_refuses_to_push_an_adapter_worse_than_the_base_model(
        tiny_causal_lm: Path, flywheel_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    scores = iter([0.30, 0.10])  # before, after

    def fake_score(self: GenerationEvaluator, *, adapter: str | None) -> EvalReport:
        return EvalReport(task=self.task.slug, model="m", adapter=adapter, main_metric="rougeL",
                          higher_is_better=True, metrics={"rougeL": next(scores)}, samples=[])

    monkeypatch.setattr(GenerationEvaluator, "score", fake_score)
    seed = dialogsum_file(tmp_path / "dialogsum.jsonl", rows=10)
    target = tmp_path / "published"
    argv = ["--task", "dialogue_summary", "--model", str(tiny_causal_lm), "--seed-data", str(seed), *FAST,
            "--push", "--hub-repo", str(target)]

    code, _, err = train(sft.main, sft.SFTArgs, argv, capsys)

    assert code == 2
    (line,) = error_lines(err)
    assert line.startswith("error: Not pushing") and "Traceback" not in err
    assert "scores worse than the base model on rougeL (0.1000 vs 0.3000" in line and "--force" in line
    assert not target.exists()
    card = (flywheel_home / "adapters" / "dialogue_summary-sft" / "README.md").read_text()
    assert "scores worse" in card  # the local card says why


def test_sft_trains_seq2seq_models_with_seq2seq_trainer(
        tiny_seq2seq: Path, flywheel_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    seed = dialogsum_file(tmp_path / "dialogsum.jsonl", rows=10)
    argv = ["--task", "dialogue_summary", "--model", str(tiny_seq2seq), "--seed-data", str(seed), *FAST]

    code, out, err = train(sft.main, sft.SFTArgs, argv, capsys)

    assert code == 0, err
    adapter = flywheel_home / "adapters" / "dialogue_summary-sft"
    assert json.loads((adapter / "adapter_config.json").read_text())["task_type"] == "SEQ_2_SEQ_LM"
    assert front_matter((adapter / "README.md").read_text())["pipeline_tag"] == "text2text-generation"
    assert "not pushed" in out


@pytest.mark.parametrize(("options", "checkpointed"), [
    ([], [True, True]),
    (["--checkpoint-every-n-layers", "2"], [True, False]),
    (["--no-activation-checkpointing"], [False, False]),
])
def test_activation_checkpointing_options_reach_the_decoder_layers_in_training(
        options: list[str], checkpointed: list[bool], tiny_causal_lm: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from transformers.modeling_layers import GradientCheckpointingLayer

    seen: dict[str, list[bool]] = {}

    def train_only(training: object, trainer: object) -> None:
        trainer.train()  # transformers sets the layers' flags when training starts
        seen["layers"] = [module.gradient_checkpointing for module in trainer.model.modules()
                          if isinstance(module, GradientCheckpointingLayer)]

    monkeypatch.setattr(sft, "train_and_finish", train_only)
    seed = dialogsum_file(tmp_path / "dialogsum.jsonl", rows=8)
    argv = ["--task", "dialogue_summary", "--model", str(tiny_causal_lm), "--seed-data", str(seed), *FAST,
            "--eval-limit", "0", "--output-dir", str(tmp_path / "out"), *options]

    code, _, err = train(sft.main, sft.SFTArgs, argv, capsys)

    assert code == 0, err
    assert seen["layers"] == checkpointed
