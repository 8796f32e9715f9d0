"""Bad input to sft/dpo/kto: one `error:` line on stderr, exit code 2, nothing trained or pushed."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.trainer_utils import (
    FAST,
    dialogsum_file,
    error_lines,
    flags,
    log_feedback,
    summary_feedback,
    train,
)
from trainers import dpo, kto, sft

TRAINERS = {"sft": (sft.main, sft.SFTArgs), "dpo": (dpo.main, dpo.DPOArgs),
            "kto": (kto.main, kto.KTOArgs)}


def fails(method: str, argv: list[str], capsys: pytest.CaptureFixture[str], tmp_path: Path) -> str:
    """Run `method` with `--push` to a folder; assert exit 2, one error line, nothing pushed."""
    target = tmp_path / "published"
    code, out, err = train(*TRAINERS[method], [*FAST, *argv, "--push", "--hub-repo", str(target)], capsys)
    assert code == 2, (out, err)
    assert "Traceback" not in err
    (line,) = error_lines(err)
    assert not target.exists()
    return line


@pytest.mark.parametrize("method", ["sft", "dpo", "kto"])
def test_unknown_task(method: str, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    line = fails(method, ["--task", "haiku"], capsys, tmp_path)
    assert "Unknown task 'haiku'" in line and "dialogue_summary" in line


def test_empty_feedback(tiny_causal_lm: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    line = fails("sft", ["--task", "elevator_pitch", "--model", str(tiny_causal_lm)], capsys, tmp_path)
    assert "No usable SFT rows for task elevator_pitch" in line and "no feedback records" in line
    assert "--seed-data" in line


def test_too_small_dataset(tiny_causal_lm: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    log_feedback("dialogue_summary", summary_feedback(3))
    line = fails("sft", ["--task", "dialogue_summary", "--model", str(tiny_causal_lm), "--eval-limit", "0",
                         "--min-rows", "5"], capsys, tmp_path)
    assert "Only 3 usable SFT rows" in line and "at least 5" in line


def test_rows_of_the_wrong_kind(tiny_causal_lm: Path, capsys: pytest.CaptureFixture[str],
                                tmp_path: Path) -> None:
    log_feedback("conversation_starter", flags(6))
    line = fails("dpo", ["--task", "conversation_starter", "--model", str(tiny_causal_lm)], capsys, tmp_path)
    assert "No usable DPO rows" in line and "votes" in line and "6 flag" in line


def test_kto_needs_good_and_bad(tiny_causal_lm: Path, capsys: pytest.CaptureFixture[str],
                                tmp_path: Path) -> None:
    log_feedback("conversation_starter", flags(8, good_and_bad=False))
    line = fails("kto", ["--task", "conversation_starter", "--model", str(tiny_causal_lm)], capsys, tmp_path)
    assert "KTO needs both good and bad" in line


@pytest.mark.parametrize("method", ["dpo", "kto"])
def test_seq2seq_model_for_preference_methods(method: str, tiny_seq2seq: Path,
                                              capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    line = fails(method, ["--task", "arena", "--model", str(tiny_seq2seq)], capsys, tmp_path)
    assert f"{method.upper()} trains causal LMs only" in line and "trainers/sft.py" in line


def test_missing_seed_file_and_wrong_seed_format(tiny_causal_lm: Path, capsys: pytest.CaptureFixture[str],
                                                 tmp_path: Path) -> None:
    argv = ["--task", "dialogue_summary", "--model", str(tiny_causal_lm)]
    line = fails("sft", [*argv, "--seed-data", str(tmp_path / "nope.jsonl")], capsys, tmp_path)
    assert "does not exist" in line
    seed = dialogsum_file(tmp_path / "dialogsum.jsonl")
    line = fails("sft", ["--task", "tweet", "--model", str(tiny_causal_lm), "--seed-data", str(seed)],
                 capsys, tmp_path)
    assert "does not fit task tweet" in line


def test_arena_is_not_an_sft_task(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    line = fails("sft", ["--task", "arena"], capsys, tmp_path)
    assert "does not support task arena" in line


def test_help_explains_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    import dataclasses

    from trainers import reward

    for main, options in [*TRAINERS.values(), (reward.main, reward.RewardArgs)]:
        code, out, _ = train(main, options, ["--help"], capsys)
        assert code == 0
        for item in dataclasses.fields(options):
            assert f"--{item.name}" in out and item.metadata.get("help"), item.name


@pytest.mark.parametrize("recipe", sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_recipes_parse_into_their_trainer_config(recipe: Path) -> None:
    from trl import TrlParser

    from trainers import ppo, reward

    configs = {name: options for name, (_, options) in TRAINERS.items()}
    configs.update(reward=reward.RewardArgs, ppo=ppo.PPOArgs)
    slug, method = recipe.stem.rsplit("-", 1)
    (config,) = TrlParser((configs[method],)).parse_args_and_config(args=["--config", str(recipe)])
    assert config.task == slug and config.model == "bundled"
