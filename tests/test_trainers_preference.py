"""trainers/dpo.py and trainers/kto.py end to end: feedback in the test Hub and in a local folder."""

from __future__ import annotations

from pathlib import Path

import pytest

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
