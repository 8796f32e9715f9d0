"""trainers/dpo.py and trainers/kto.py end to end: feedback in the test Hub and in a local folder, and
`--init-adapter` as the frozen reference."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import load_file

from tests.adapter_factory import make_adapter
from tests.hub_server import HubServer
from tests.trainer_utils import FAST, error_lines, flags, front_matter, log_feedback, train, votes
from trainers import dpo, kto

FEEDBACK_REPO = "user/flywheel-feedback"
PUBLISHED = {"README.md", "adapter_config.json", "adapter_model.safetensors", "training_curves.png"}


def test_dpo_on_votes_in_the_hub_pushes_to_the_hub_only_with_a_measured_win_or_force(
        hub_server: HubServer, tiny_causal_lm: Path, flywheel_home: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    log_feedback("arena", votes(10), repo_id=FEEDBACK_REPO)
    feedback_sha = hub_server.commits(FEEDBACK_REPO, "dataset")[-1].oid
    argv = ["--task", "arena", "--model", str(tiny_causal_lm), "--feedback-repo", FEEDBACK_REPO, *FAST,
            "--push"]

    # Arena's main metric is a reward-model score: without --eval-reward it is not measured.
    code, _, err = train(dpo.main, dpo.DPOArgs, argv, capsys)
    assert code == 2 and "could not be measured" in error_lines(err)[0] and "--force" in err
    assert not hub_server.exists("user/flywheel-arena-dpo")

    code, out, err = train(dpo.main, dpo.DPOArgs, [*argv, "--force"], capsys)
    assert code == 0, err
    assert "[rank 0/1] dpo: 2 optimizer steps" in out
    files = hub_server.files("user/flywheel-arena-dpo")  # default repo: <whoami>/flywheel-<task>-<method>
    assert set(files) - {".gitattributes"} == PUBLISHED
    meta = front_matter(files["README.md"].decode())
    assert meta["datasets"] == [FEEDBACK_REPO] and meta["library_name"] == "peft"
    (source,) = meta["flywheel"]["datasets"]
    assert source["revision"] == feedback_sha and source["rows"] > 0
    assert hub_server.token not in files["README.md"].decode()


def test_kto_on_local_flags_publishes_to_a_folder(
        tiny_causal_lm: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "feedback"
    log_feedback("conversation_starter", flags(10), folder=folder)
    target = tmp_path / "published"
    argv = ["--task", "conversation_starter", "--model", str(tiny_causal_lm), "--feedback-repo", str(folder),
            *FAST, "--push", "--hub-repo", str(target), "--force"]

    code, out, err = train(kto.main, kto.KTOArgs, argv, capsys)

    assert code == 0, err
    assert "[rank 0/1] kto: 2 optimizer steps" in out
    assert {p.name for p in target.iterdir()} == PUBLISHED
    meta = front_matter((target / "README.md").read_text())
    assert meta["flywheel"]["method"] == "kto" and meta["flywheel"]["datasets"][0]["rows"] >= 4


def built_trainer(module: Any, config_class: type, argv: list[str], monkeypatch: pytest.MonkeyPatch,
                  capsys: pytest.CaptureFixture[str]) -> tuple[Any, Any]:
    """(TrainingRun, TRL trainer) exactly as `module.main` builds them from `argv`, stopped before training."""
    built: dict[str, Any] = {}
    monkeypatch.setattr(module, "train_and_finish", lambda training, trainer: built.update(run=(training, trainer)))
    code, _, err = train(module.main, config_class, argv, capsys)
    assert code == 0, err
    return built["run"]


def completion_logps(model: Any, batch: dict[str, Any], prefix: str = "") -> Any:
    """Summed log-probabilities of each row's completion tokens under `model`, computed directly."""
    import torch

    ids, completion = batch[f"{prefix}input_ids"], batch[f"{prefix}completion_mask"]
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=batch[f"{prefix}attention_mask"]).logits[:, :-1]
    per_token = torch.log_softmax(logits.float(), dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    return (per_token * completion[:, 1:]).sum(-1)


def start_and_base(base: Path, adapter: Path) -> tuple[Any, Any]:
    """Fresh copies of the init adapter's policy and of the bare base model, for direct computations."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    start = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(adapter)).eval()
    return start, AutoModelForCausalLM.from_pretrained(base).eval()


@pytest.mark.parametrize("method", ["dpo", "kto"])
def test_init_adapter_is_the_frozen_reference_and_the_only_adapter_saved(
        method: str, tiny_causal_lm: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    from trainers.lifecycle import REFERENCE_ADAPTER, finish

    champion = make_adapter(tiny_causal_lm, tmp_path / "champion", seed=1)
    folder = tmp_path / "feedback"
    task, rows, (module, config_class) = {
        "dpo": ("arena", votes(8), (dpo, dpo.DPOArgs)),
        "kto": ("conversation_starter", flags(8), (kto, kto.KTOArgs))}[method]
    log_feedback(task, rows, folder=folder)
    argv = ["--task", task, "--model", str(tiny_causal_lm), "--feedback-repo", str(folder), *FAST,
            "--eval-limit", "0", "--init-adapter", str(champion), "--output-dir", str(tmp_path / "out")]
    training, trainer = built_trainer(module, config_class, argv, monkeypatch, capsys)
    batch = next(iter(trainer.get_train_dataloader()))
    start, base = start_and_base(tiny_causal_lm, champion)

    reference = torch.cat(trainer.compute_ref_log_probs(trainer.model, batch)[:2 if method == "dpo" else 1])
    assert torch.allclose(reference, completion_logps(start, batch), atol=1e-4)
    assert not torch.allclose(reference, completion_logps(base, batch), atol=1e-2)  # the adapter matters
    if method == "dpo":  # policy == reference before the first step: every pair's loss is log 2
        assert trainer.compute_loss(trainer.model, batch).item() == pytest.approx(math.log(2), abs=1e-5)
    frozen = [p for name, p in trainer.model.named_parameters() if f".{REFERENCE_ADAPTER}." in name]
    assert frozen and not any(p.requires_grad for p in frozen)

    outcome = finish(training, model=trainer.model, log_history=[])
    assert outcome is not None and not (outcome.adapter_dir / REFERENCE_ADAPTER).exists()
    saved, initial = (load_file(str(path / "adapter_model.safetensors")) for path in (outcome.adapter_dir, champion))
    assert saved.keys() == initial.keys() and all(torch.equal(saved[k], initial[k]) for k in saved)
