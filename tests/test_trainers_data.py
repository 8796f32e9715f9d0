"""trainers/data.py: feedback kinds to method rows, held-out split by prompt, size and kind checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasks import InvalidInput, get_task
from tests.trainer_utils import dialogsum_file, log_feedback, summary_feedback, votes
from trainers.data import build_training_data, fit_length

TWEET_RATINGS = {"relevance": 5, "clarity": 5, "originality": 4, "engagement": 4}
LOW_RATINGS = {"relevance": 1, "clarity": 2, "originality": 1, "engagement": 1}


def test_sft_takes_edits_good_flags_and_high_ratings_only() -> None:
    log_feedback("tweet", [
        {"kind": "rating", "inputs": {"prompt": "Hiring"}, "completion": "We're hiring!",
         "ratings": TWEET_RATINGS},
        {"kind": "rating", "inputs": {"prompt": "Hiring"}, "completion": "meh", "ratings": LOW_RATINGS},
    ])
    bad_flag = {"kind": "flag", "inputs": {"dialogue": "#Person1#: Hi"}, "completion": "Wrong.",
                "label": "inaccurate"}
    log_feedback("dialogue_summary", [*summary_feedback(4), bad_flag])

    tweet = build_training_data("sft", task=get_task("tweet"), eval_limit=0, min_rows=1)
    assert [row["completion"][-1]["content"] for row in tweet.train] == ["We're hiring!"]
    summary = build_training_data("sft", task=get_task("dialogue_summary"), eval_limit=0, min_rows=1,
                                  chat=False)
    completions = sorted(summary.train["completion"])
    assert completions == ["They agree to meet at 1.", "They agree to meet at 3.", "They meet at 0.",
                           "They meet at 2."]
    assert summary.train[0]["prompt"].startswith("Summarize the following conversation.")
    (source,) = summary.sources
    assert source.kind == "feedback" and source.revision.startswith("local-") and source.rows == 4


def test_held_out_examples_never_share_a_prompt_with_training_rows(tmp_path: Path) -> None:
    records = summary_feedback(10)  # ten prompts, each with a second, good-flagged answer
    records += [{"kind": "flag", "inputs": r["inputs"], "completion": "Another good one.", "label": "great"}
                for r in records]
    log_feedback("dialogue_summary", records)

    data = build_training_data("sft", task=get_task("dialogue_summary"), eval_limit=3, min_rows=4)

    assert len(data.eval_examples) == 2  # at most 20 % of the 10 prompts
    held = {e.inputs["dialogue"] for e in data.eval_examples}
    trained = {row["prompt"][-1]["content"] for row in data.train}
    assert not any(dialogue in prompt for dialogue in held for prompt in trained)
    assert len(data.train) == 16 and all(e.references for e in data.eval_examples)


def test_eval_data_is_removed_from_training(tmp_path: Path) -> None:
    seed = dialogsum_file(tmp_path / "seed.jsonl", rows=10)
    evaluation = dialogsum_file(tmp_path / "eval.jsonl", rows=3)  # the same first three dialogues

    data = build_training_data("sft", task=get_task("dialogue_summary"), seed_data=[str(seed)],
                               eval_data=str(evaluation), eval_limit=8, min_rows=4)

    assert len(data.eval_examples) == 3 and len(data.train) == 7
    assert data.eval_source == f"--eval-data {evaluation}"


def test_dpo_takes_votes_with_a_winner_and_edits_as_corrections() -> None:
    tie = {**votes(1)[0], "label": "tie", "tie": True}
    both_bad = {**votes(1)[0], "label": "both-bad"}
    log_feedback("arena", [*votes(3), tie, both_bad])
    log_feedback("dialogue_summary", summary_feedback(4))

    arena = build_training_data("dpo", task=get_task("arena"), eval_limit=0, min_rows=1)
    assert len(arena.train) == 3 and arena.train[0]["chosen"][0]["content"].startswith("Blue")
    summary = build_training_data("dpo", task=get_task("dialogue_summary"), eval_limit=0, min_rows=1)
    assert len(summary.train) == 2 and summary.train[0]["rejected"][0]["content"] == "They talk."


def test_kto_from_preference_seed_data_gives_both_labels(tmp_path: Path) -> None:
    seed = tmp_path / "hh.jsonl"
    rows = [{"id": f"hh{i}", "prompt": f"Human: Question {i}?\n\nAssistant:", "response_a": "Good answer.",
             "response_b": "Bad.", "winner": "a"} for i in range(6)]
    seed.write_text("".join(json.dumps(r) + "\n" for r in rows))

    data = build_training_data("kto", task=get_task("arena"), seed_data=[str(seed)], eval_limit=0,
                               use_feedback=False, min_rows=4)

    assert sorted(data.train["label"]) == [False] * 6 + [True] * 6
    assert [s.kind for s in data.sources] == ["seed"] and data.sources[0].rows == 12


def test_wrong_kind_and_small_data_are_refused_with_what_was_found() -> None:
    log_feedback("arena", votes(2))
    with pytest.raises(InvalidInput, match=r"No usable KTO rows for task arena.*flags.*2 preferences"):
        build_training_data("kto", task=get_task("arena"), eval_limit=0)
    with pytest.raises(InvalidInput, match=r"Only 2 usable DPO rows .*at least 8"):
        build_training_data("dpo", task=get_task("arena"), eval_limit=0)
    with pytest.raises(InvalidInput, match="Unknown training method"):
        build_training_data("ppo", task=get_task("arena"))


def test_fit_length_drops_prompts_that_leave_no_room_for_the_answer(tiny_causal_lm: Path) -> None:
    from transformers import AutoTokenizer

    records = summary_feedback(6)
    records[0]["inputs"] = {"dialogue": "#Person1#: " + "blah " * 400}
    log_feedback("dialogue_summary", records)
    data = build_training_data("sft", task=get_task("dialogue_summary"), eval_limit=0, min_rows=1)
    tokenizer = AutoTokenizer.from_pretrained(tiny_causal_lm)

    assert len(fit_length(data, tokenizer, max_length=400, min_rows=1).train) == 5
    assert data.sources[0].rows == 5 and len(data.row_sources) == 5  # the card counts what is trained on
    with pytest.raises(InvalidInput, match="Raise --max-length"):
        fit_length(data, tokenizer, max_length=40, min_rows=1)


def test_seed_data_from_a_hub_dataset(hub_server, tmp_path: Path) -> None:  # noqa: ANN001 - fixture
    rows = dialogsum_file(tmp_path / "dialogsum.jsonl", rows=6).read_text()
    sha = hub_server.seed("user/dialogsum", {"data/validation.jsonl": rows}, repo_type="dataset")

    data = build_training_data("sft", task=get_task("dialogue_summary"), seed_data=["user/dialogsum"],
                               eval_limit=0, min_rows=4, use_feedback=False)

    assert len(data.train) == 6 and data.sources[0].is_hub and data.sources[0].ref == "user/dialogsum"
    assert data.sources[0].revision == sha
