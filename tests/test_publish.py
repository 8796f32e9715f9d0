"""hub/publish.py: model cards with YAML front matter; pushing only safe files to a folder or the Hub."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hub.errors import FlywheelError
from hub.publish import AdapterCard, DatasetRef, default_repo, push_adapter
from hub.repos import latest_revision
from tests.hub_server import HubServer
from tests.trainer_utils import front_matter

PUBLISHED = {"README.md", "adapter_config.json", "adapter_model.safetensors", "training_curves.png"}


def fake_adapter(folder: Path) -> Path:
    """An adapter folder as a trainer leaves it: weights and config plus files that must stay behind."""
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    weights = {"base_model.model.lora_A.weight": torch.zeros(2, 2)}
    save_file(weights, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2}))
    (folder / "training_curves.png").write_bytes(b"\x89PNG fake")
    (folder / "training_args.bin").write_bytes(b"pickle")
    (folder / "metrics.jsonl").write_text("{}\n")
    (folder / "tokenizer.json").write_text("{}")
    (folder / "logs").mkdir()
    return folder


def card(**extra: object) -> AdapterCard:
    return AdapterCard(base_model="HuggingFaceTB/SmolLM2-135M-Instruct", task="tweet", method="sft",
                       datasets=[DatasetRef("user/fb", revision="a" * 40, rows=12),
                                 DatasetRef("/home/me/seed/tweets.jsonl", revision="b" * 40, rows=30,
                                            kind="seed")],
                       recipe={"task": "tweet", "max_steps": 20, "hub_token": "x"},
                       evaluation_table="| metric | before | after | Δ |\n|---|---|---|---|\n"
                                        "| **reward** ↑ | 0.4000 | 0.5000 | +0.1000 ✓ |",
                       metrics_before={"reward": 0.4}, metrics_after={"reward": 0.5}, main_metric="reward",
                       **extra)


def test_card_front_matter_and_sections() -> None:
    text = card().render()
    meta = front_matter(text)
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and meta["library_name"] == "peft"
    assert meta["datasets"] == ["user/fb"]  # Hub ids only; local paths are not dataset ids
    assert meta["flywheel"]["datasets"][0] == {"id": "user/fb", "revision": "a" * 40, "rows": 12,
                                               "kind": "feedback"}
    assert meta["flywheel"]["datasets"][1]["id"] == "local:tweets.jsonl"  # no home paths in cards
    assert meta["flywheel"]["after"] == {"reward": 0.5}
    assert "| **reward** ↑ | 0.4000 | 0.5000 |" in text and "![training curves](training_curves.png)" in text
    assert "max_steps: 20" in text and "hub_token" not in text


def test_card_never_contains_the_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_secret_value_123")
    assert "hf_secret_value_123" not in card(notes=["pushed with hf_secret_value_123"]).render()


def test_push_to_a_folder_copies_only_safe_files(tmp_path: Path) -> None:
    adapter = fake_adapter(tmp_path / "adapter")
    result = push_adapter(adapter, repo=str(tmp_path / "published"), card=card())

    assert result.local and {p.name for p in (tmp_path / "published").iterdir()} == PUBLISHED
    assert result.revision == latest_revision(str(tmp_path / "published"))
    assert result.url.startswith("file://")


def test_push_refuses_folders_without_safetensors(tmp_path: Path) -> None:
    adapter = fake_adapter(tmp_path / "adapter")
    (adapter / "adapter_model.safetensors").rename(adapter / "adapter_model.bin")
    with pytest.raises(FlywheelError, match="no safetensors weights.*adapter_model.bin"):
        push_adapter(adapter, repo=str(tmp_path / "published"))
    assert not (tmp_path / "published").exists()


def test_push_to_the_hub(hub_server: HubServer, tmp_path: Path) -> None:
    adapter = fake_adapter(tmp_path / "adapter")
    result = push_adapter(adapter, repo="user/flywheel-tweet-sft", card=card())

    assert not result.local and result.revision == hub_server.commits("user/flywheel-tweet-sft")[-1].oid
    files = hub_server.files("user/flywheel-tweet-sft")
    assert set(files) - {".gitattributes"} == PUBLISHED
    assert hub_server.repo("user/flywheel-tweet-sft").private
    assert front_matter(files["README.md"].decode())["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_default_repo_uses_the_account_or_falls_back_to_a_local_folder(
        hub_server: HubServer, flywheel_home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert default_repo("dialogue_summary", "sft") == "user/flywheel-dialogue-summary-sft"
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    assert default_repo("dialogue_summary", "sft") == str(flywheel_home / "published" /
                                                          "flywheel-dialogue-summary-sft")


def test_push_to_an_unreachable_hub_is_one_clear_error(hub_server: HubServer, tmp_path: Path) -> None:
    adapter = fake_adapter(tmp_path / "adapter")
    hub_server.stop()
    with pytest.raises(FlywheelError, match="Pushing the adapter to user/x failed") as caught:
        push_adapter(adapter, repo="user/x")
    assert hub_server.token not in str(caught.value)
