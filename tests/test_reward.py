"""trainers/reward.py, the TF-IDF baseline and serving.reward_models.load_reward_model, on tiny models."""

from __future__ import annotations

import csv
import json
import random
import re
from pathlib import Path
from typing import Any

import pytest

from hub.errors import FlywheelError
from serving.reward_models import load_reward_model, to_messages
from tasks.preference_baseline import PreferenceBaseline, preference_metrics
from tests.hub_server import HubServer
from tests.trainer_utils import error_lines, front_matter, log_feedback, train
from trainers import reward

FEEDBACK_REPO = "user/flywheel-feedback"
PUBLISHED = {"README.md", "adapter_config.json", "adapter_model.safetensors", "training_curves.png"}
FAST = ["--per-device-train-batch-size", "4", "--max-length", "96", "--lora-r", "4", "--lora-alpha", "8",
        "--report-to", "none", "--learning-rate", "5e-3", "--min-rows", "4"]


def thanks_votes(n: int) -> list[dict[str, Any]]:
    """Arena votes where the chosen answer always says thanks."""
    return [{"kind": "preference", "inputs": {"prompt": f"Question {i}?"},
             "chosen": f"Thanks for asking! Answer {i}.", "rejected": f"No {i}.", "label": "A"}
            for i in range(n)]


def kaggle_csv(path: Path, rows: int = 24) -> Path:
    """A Kaggle 'LLM Classification Finetuning' train.csv: JSON-list texts, one-hot winner columns, ties."""
    rng = random.Random(1)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "model_a", "model_b", "prompt", "response_a", "response_b",
                         "winner_model_a", "winner_model_b", "winner_tie"])
        for i in range(rows):
            good, bad = f"Thanks for asking! Here is help {i}.", f"No {i}."
            if i % 4 == 3:
                a, b, flags = f"Maybe {i}.", f"Perhaps {i}.", (0, 0, 1)
            elif rng.random() < 0.5:
                a, b, flags = good, bad, (1, 0, 0)
            else:
                a, b, flags = bad, good, (0, 1, 0)
            writer.writerow([i, "m1", "m2", json.dumps([f"Question {i}?"]), json.dumps([a]), json.dumps([b]),
                             *flags])
    return path


def test_reward_model_on_hub_votes_and_a_kaggle_csv_is_pushed_and_loads(
        hub_server: HubServer, tiny_causal_lm: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    log_feedback("arena", thanks_votes(16), repo_id=FEEDBACK_REPO)
    feedback_sha = hub_server.commits(FEEDBACK_REPO, "dataset")[-1].oid
    argv = ["--task", "arena", "--model", str(tiny_causal_lm), "--feedback-repo", FEEDBACK_REPO,
            "--seed-data", str(kaggle_csv(tmp_path / "train.csv")), "--ties", "both", "--max-steps", "16",
            "--output-dir", str(tmp_path / "rm"), *FAST, "--push"]

    code, out, err = train(reward.main, reward.RewardArgs, argv, capsys)

    assert code == 0, err
    assert "[rank 0/1] reward: 16 optimizer steps" in out
    assert "| metric | before | TF-IDF + logistic regression | after | Δ |" in out and "3-way" in out
    before = json.loads((tmp_path / "rm" / "eval_before.json").read_text())
    after = json.loads((tmp_path / "rm" / "eval_after.json").read_text())
    assert before["model"] == "chance" and before["metrics"]["accuracy"] == 0.5
    assert after["metrics"]["accuracy"] > 0.5 and after["info"]["held_out_pairs"] == len(after["samples"]) > 0
    files = hub_server.files("user/flywheel-arena-reward")
    assert set(files) - {".gitattributes"} == PUBLISHED
    readme = files["README.md"].decode()
    meta = front_matter(readme)
    assert meta["pipeline_tag"] == "text-classification" and meta["flywheel"]["method"] == "reward"
    assert meta["flywheel"]["main_metric"] == "accuracy" and meta["flywheel"]["before"]["accuracy"] == 0.5
    assert "The adapter beats chance on accuracy" in readme and "load_reward_model" in readme
    feedback, seed = meta["flywheel"]["datasets"]
    assert feedback["revision"] == feedback_sha and feedback["rows"] and seed["rows"]  # trained, not held out
    assert feedback["rows"] + seed["rows"] + after["info"]["held_out_pairs"] == 16 + 24
    config = json.loads(files["adapter_config.json"])
    assert config["task_type"] == "SEQ_CLS" and "score" in config["modules_to_save"]
    assert b"score.weight" in files["adapter_model.safetensors"][:20_000]  # the trained head is saved

    rm = load_reward_model("user/flywheel-arena-reward")  # from the Hub, base read from adapter_config
    local = load_reward_model(str(tmp_path / "rm"))
    prompts = ["Question 99?", [{"role": "user", "content": "Question 98?"}]]
    good = rm(prompts, ["Thanks for asking! Answer 99.", "Thanks for asking! Answer 98."])
    bad = rm(prompts, ["No 99.", "No 98."])
    assert all(g > b for g, b in zip(good, bad, strict=True))
    assert local(prompts, ["No 99.", "No 98."]) == pytest.approx(bad, abs=1e-5)


def test_tweet_ratings_become_pairs_and_the_default_ratings_model_loads(
        tiny_causal_lm: Path, flywheel_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    top = {"relevance": 5, "clarity": 5, "originality": 4, "engagement": 5}
    low = {"relevance": 1, "clarity": 2, "originality": 1, "engagement": 1}
    records = [{"kind": "rating", "inputs": {"prompt": f"Advice {i}"}, "completion": text, "ratings": ratings}
               for i in range(8) for text, ratings in ((f"Thanks! Ship small {i}.", top), (f"Meh {i}", low))]
    log_feedback("tweet", records)  # the local feedback home

    argv = ["--task", "tweet", "--model", str(tiny_causal_lm), "--max-steps", "2", "--lora-layers", "1", *FAST]
    code, out, err = train(reward.main, reward.RewardArgs, argv, capsys)

    assert code == 0, err
    trained, held = map(int, re.search(r"train (\d+) pairs?, held out (\d+) pairs?;", out).groups())
    assert trained + held == 8 and held > 0  # one pair per prompt; whole prompts are held out
    adapter = json.loads((flywheel_home / "adapters" / "tweet-reward" / "adapter_config.json").read_text())
    assert adapter["target_modules"] and all(".layers.1." in name for name in adapter["target_modules"])
    from trainers.reward_functions import default_ratings_model

    scores = load_reward_model(default_ratings_model())(["Advice 1"], ["Thanks! Ship small 1."])
    assert len(scores) == 1 and isinstance(scores[0], float)


def test_push_is_refused_when_no_better_than_chance_unless_forced(
        tiny_causal_lm: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    train_csv = kaggle_csv(tmp_path / "train.csv")
    same = tmp_path / "same.jsonl"  # held-out pairs with two identical answers: exactly a coin flip
    same.write_text("".join(json.dumps({"prompt": f"Q{i}", "response_a": "Same.", "response_b": "Same.",
                                        "winner": "a" if i % 2 else "b"}) + "\n" for i in range(6)))
    target = tmp_path / "published"
    argv = ["--task", "arena", "--model", str(tiny_causal_lm), "--no-use-feedback",
            "--seed-data", str(train_csv), "--eval-data", str(same), "--max-steps", "1", "--no-baseline",
            *FAST, "--push", "--hub-repo", str(target)]

    code, out, err = train(reward.main, reward.RewardArgs, argv, capsys)
    assert code == 2
    (line,) = error_lines(err)
    assert "Not pushing: The adapter ties chance on accuracy (0.5000 vs 0.5000" in line and "--force" in line
    assert not target.exists()

    code, out, err = train(reward.main, reward.RewardArgs, [*argv, "--force"], capsys)
    assert code == 0, err
    assert {p.name for p in target.iterdir()} == PUBLISHED
    assert "--force" in (target / "README.md").read_text()


@pytest.mark.parametrize(("extra", "message"), [
    (["--task", "poetry"], "Unknown task"),
    (["--task", "dialogue_summary"], "does not support task dialogue_summary"),
    (["--task", "arena", "--ties", "sometimes"], "--ties must be one of"),
    (["--task", "arena"], "Only 3 usable reward-model rows"),
    (["--task", "tweet"], "No usable reward-model rows for task tweet"),
])
def test_bad_input_exits_2_with_one_line(extra: list[str], message: str, tiny_causal_lm: Path,
                                         flywheel_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log_feedback("arena", thanks_votes(3))
    argv = ["--model", str(tiny_causal_lm), *extra, *FAST]
    code, _, err = train(reward.main, reward.RewardArgs, argv, capsys)
    assert code == 2
    (line,) = error_lines(err)
    assert message in line and "Traceback" not in err


def test_seq2seq_model_is_refused(tiny_seq2seq: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--task", "arena", "--model", str(tiny_seq2seq)]
    code, _, err = train(reward.main, reward.RewardArgs, argv, capsys)
    assert code == 2 and "seq2seq" in error_lines(err)[0]


def test_load_reward_model_refuses_missing_or_wrong_repos(tmp_path: Path, hub_server: HubServer) -> None:
    with pytest.raises(FlywheelError, match="does not exist"):
        load_reward_model(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FlywheelError, match="lacks adapter_config.json, adapter_model.safetensors"):
        load_reward_model(str(tmp_path / "empty"))
    causal = tmp_path / "causal"
    causal.mkdir()
    (causal / "adapter_config.json").write_text(json.dumps({"task_type": "CAUSAL_LM", "peft_type": "LORA"}))
    (causal / "adapter_model.safetensors").write_bytes(b"")
    with pytest.raises(FlywheelError, match="not a reward model"):
        load_reward_model(str(causal))
    with pytest.raises(FlywheelError) as error:
        load_reward_model("user/no-such-reward-model")
    assert "\n" not in str(error.value)


def test_tfidf_baseline_learns_a_separable_preference() -> None:
    rng = random.Random(0)
    words = [f"word{n}" for n in range(10)]

    def pair(i: int) -> dict[str, str]:
        chosen = " ".join(rng.sample(words, 4)) + " thanks"
        rejected = " ".join(rng.sample(words, 5))
        flip = rng.random() < 0.5
        return {"prompt": f"q{i}", "response_a": rejected if flip else chosen,
                "response_b": chosen if flip else rejected, "winner": "b" if flip else "a"}

    rows = [pair(i) for i in range(300)]
    model = PreferenceBaseline().fit(rows[:200])
    metrics = model.evaluate(rows[200:])
    assert metrics["accuracy"] > 0.9 and metrics["log_loss"] < 0.5 and metrics["n"] == 100

    ties = [{"prompt": f"t{i}", "response_a": "same words", "response_b": "same words", "winner": "tie"}
            for i in range(40)]
    three = PreferenceBaseline().fit(rows[:200] + ties[:30]).evaluate(rows[200:] + ties[30:])
    assert three["accuracy_3way"] > 0.8 and three["n_ties"] == 10


def test_metrics_and_hh_transcripts() -> None:  # pairs and their split: tests/test_rows.py
    assert preference_metrics([[0.5, 0.5, 0.0]] * 3, ["a", "b", "a"])["accuracy"] == 0.5
    turns = to_messages("Human: hi\n\nAssistant: hello\n\nHuman: ok?")
    assert turns[-1] == {"role": "user", "content": "ok?"} and len(turns) == 3
