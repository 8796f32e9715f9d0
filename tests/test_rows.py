"""trainers/rows.py and trainers/training_data.py: which record becomes which row, the split, the size check."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from hub.feedback.records import build_record
from tasks import InvalidInput, get_task
from tests.trainer_utils import dialogsum_file, log_feedback, summary_feedback, votes
from trainers.reward import RewardArgs
from trainers.rows import GOOD_REWARD, held_out_groups, holdout_rank, is_good_example
from trainers.training_data import build_training_data, collect_pairs, fit_length

TWEET = get_task("tweet")
SUMMARY = get_task("dialogue_summary")
ABOVE, AT, BELOW = ({name: score for name in TWEET.rating_weights} for score in (5, 4, 3))


def build(method: str, slug: str, **options: Any) -> Any:
    return build_training_data(method, task=get_task(slug), **{"eval_limit": 0, "min_rows": 1, **options})


def pairs(slug: str, **options: Any) -> Any:
    return collect_pairs(RewardArgs(task=slug, **{"eval_limit": 0, "min_rows": 1, **options}), get_task(slug))


def answers(data: Any) -> dict[str, Any]:
    """Completion text -> KTO label (True for SFT rows, which have none)."""
    return {row["completion"][-1]["content"]: row.get("label", True) for row in data.train}


def test_one_rule_makes_sft_examples_and_kto_labels() -> None:
    assert TWEET.reward_from_ratings(AT) == GOOD_REWARD  # the threshold itself counts as good
    rated = {"above": ABOVE, "at": AT, "below": BELOW}
    ratings = [{"kind": "rating", "inputs": {"prompt": f"Hiring {name}"}, "completion": name, "ratings": scores}
               for name, scores in rated.items()]
    flags = [{"kind": "flag", "inputs": {"dialogue": f"#Person1#: Hi {label}"}, "completion": label, "label": label}
             for label in ("great", "inaccurate")]
    log_feedback("tweet", ratings)
    log_feedback("dialogue_summary", flags)

    verdicts = {r["completion"]: is_good_example(build_record(task=t, **r), get_task(t))
                for t, records in (("tweet", ratings), ("dialogue_summary", flags)) for r in records}
    assert verdicts == {"above": True, "at": True, "below": False, "great": True, "inaccurate": False}
    assert answers(build("sft", "tweet")) == {"above": True, "at": True}
    assert answers(build("kto", "tweet")) == {"above": True, "at": True, "below": False}
    assert answers(build("sft", "dialogue_summary")) == {"great": True}
    assert answers(build("kto", "dialogue_summary")) == {"great": True, "inaccurate": False}


def test_edits_are_sft_examples_and_dpo_pairs() -> None:
    same = {"kind": "edit", "inputs": {"dialogue": "#Person1#: Same?"}, "completion": "Same.", "edited": "Same."}
    log_feedback("dialogue_summary", [*summary_feedback(4), same])

    sft = build("sft", "dialogue_summary", chat=False)
    assert sorted(sft.train["completion"]) == ["Same.", "They agree to meet at 1.", "They agree to meet at 3.",
                                               "They meet at 0.", "They meet at 2."]
    assert sft.train[0]["prompt"].startswith("Summarize the following conversation.")
    dpo = build("dpo", "dialogue_summary")  # an edit that changed nothing compares nothing
    assert sorted((r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in dpo.train) == [
        ("They agree to meet at 1.", "They talk."), ("They agree to meet at 3.", "They talk.")]
    edits = [r for r in summary_feedback(4) if r["kind"] == "edit"]
    assert sorted(r["prompt"][-1]["content"] for r in dpo.train) == sorted(
        SUMMARY.messages(r["inputs"])[-1]["content"] for r in edits)  # the messages the person saw
    (source,) = sft.sources
    assert source.kind == "feedback" and source.revision.startswith("local-") and source.rows == 5


def test_votes_ties_are_skipped_except_by_the_reward_model() -> None:
    tie = {**votes(1)[0], "label": "tie", "tie": True}
    both_bad = {**votes(1)[0], "label": "both-bad", "tie": True}
    log_feedback("arena", [*votes(3), tie, both_bad])

    dpo = build("dpo", "arena")
    assert len(dpo.train) == 3 and all(r["chosen"][0]["content"].startswith("Blue") for r in dpo.train)
    assert sorted(build("kto", "arena").train["label"]) == [False] * 3 + [True] * 3  # winners good, losers bad
    reward = pairs("arena")
    decisive = [p for p in reward.train if p["winner"] != "tie"]
    assert len(decisive) == 3 and len(reward.train) == 5 and {p["origin"] for p in reward.train} == {"vote"}
    assert all(p["response_" + p["winner"]].startswith("Blue") for p in decisive)


def test_chat_rows_have_the_shapes_trl_takes() -> None:
    from trl.data_utils import apply_chat_template, is_conversational

    from tests.tiny_models import build_tokenizer

    log_feedback("dialogue_summary", [*summary_feedback(2), {"kind": "flag", "inputs": summary_feedback(1)[0]["inputs"],
                                                             "completion": "No.", "label": "inaccurate"}])
    tokenizer = build_tokenizer()
    for method, columns in (("sft", ["prompt", "completion"]), ("dpo", ["prompt", "chosen", "rejected"]),
                            ("kto", ["prompt", "completion", "label"])):
        data = build(method, "dialogue_summary")
        assert data.train.column_names == columns and is_conversational(data.train[0]), method
        rendered = apply_chat_template({k: v for k, v in data.train[0].items() if k != "label"}, tokenizer)
        assert all(isinstance(text, str) and text for text in rendered.values()), method


def test_rated_answers_of_one_prompt_become_pairs_for_dpo_and_the_reward_model() -> None:
    close = {**ABOVE, "engagement": 4}  # 0.95 against 1.0: closer than the tie gap
    log_feedback("tweet", [{"kind": "rating", "inputs": {"prompt": "Hiring"}, "completion": text, "ratings": scores}
                           for text, scores in (("best", ABOVE), ("close", close), ("worst", BELOW))])

    dpo = build("dpo", "tweet")
    assert sorted((r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in dpo.train) == [
        ("best", "worst"), ("close", "worst")]
    reward = pairs("tweet", min_rating_gap=0.1)
    assert sorted((p["winner"] == "tie", round(p["margin"], 2)) for p in reward.train) == [
        (False, 0.45), (False, 0.5), (True, 0.05)]
    assert {p["origin"] for p in reward.train} == {"rating"}


def test_held_out_prompts_are_the_same_for_every_method_and_never_trained_on() -> None:
    dialogues = [f"#Person1#: Shall we meet at {i}?\n#Person2#: Yes." for i in range(40)]
    records = []
    for i, dialogue in enumerate(dialogues):  # every method has rows for every prompt
        records += [{"kind": "edit", "inputs": {"dialogue": dialogue}, "completion": "They talk.",
                     "edited": f"They meet at {i}."},
                    {"kind": "flag", "inputs": {"dialogue": dialogue}, "completion": "Hm.", "label": "inaccurate"}]
    log_feedback("dialogue_summary", records)
    keys = {json.dumps({"dialogue": d}): d for d in dialogues}
    expected = {keys[k] for k in held_out_groups(dict.fromkeys(keys, 2), fraction=0.2, limit=40, seed=42,
                                                 min_train=1)}
    assert expected == {keys[k] for k in keys if holdout_rank(k, seed=42) < 0.2} and 0 < len(expected) < 40

    for method in ("sft", "dpo", "kto", "prompts"):
        data = build(method, "dialogue_summary", eval_limit=40, chat=False)
        held = {example.inputs["dialogue"] for example in data.eval_examples}
        trained = {row["prompt"] for row in data.train}
        assert held == expected, method
        assert not {SUMMARY.text_prompt({"dialogue": d}) for d in held} & trained, method
        assert all(example.references for example in data.eval_examples)  # the edits are references
    reward = pairs("dialogue_summary", eval_limit=40, eval_fraction=0.2)
    held = {d for d in dialogues if any(p["prompt"] == SUMMARY.messages({"dialogue": d}) for p in reward.test)}
    assert held == expected and len(reward.test) == len(expected)
    assert not any(p["prompt"] == SUMMARY.messages({"dialogue": d}) for p in reward.train for d in held)


def test_the_split_keeps_min_rows_for_training_and_at_most_limit_prompts() -> None:
    groups = {f"prompt {i}": 1 for i in range(100)}
    assert len(held_out_groups(groups, fraction=0.5, limit=7, seed=0, min_train=1)) == 7
    assert len(held_out_groups(groups, fraction=0.5, limit=100, seed=0, min_train=95)) == 5
    assert held_out_groups(groups, fraction=0.0, limit=100, seed=0, min_train=1) == []


def test_eval_data_is_removed_from_training(tmp_path: Path) -> None:
    seed = dialogsum_file(tmp_path / "seed.jsonl", rows=10)
    evaluation = dialogsum_file(tmp_path / "eval.jsonl", rows=3)  # the same first three dialogues

    data = build("sft", "dialogue_summary", seed_data=[str(seed)], eval_data=str(evaluation), eval_limit=8,
                 min_rows=4)

    assert len(data.eval_examples) == 3 and len(data.train) == 7
    assert data.eval_source == f"--eval-data {evaluation}" and data.eval_examples[0].references


def test_seed_pairs_and_feedback_votes_follow_the_same_rules(tmp_path: Path) -> None:
    seed = tmp_path / "hh.jsonl"
    rows = [{"id": f"hh{i}", "prompt": f"Human: Question {i}?\n\nAssistant:", "response_a": "Good answer.",
             "response_b": "Bad.", "winner": "a"} for i in range(6)]
    rows.append({**rows[0], "id": "tie", "prompt": "Human: Either?\n\nAssistant:", "winner": "tie"})
    seed.write_text("".join(json.dumps(r) + "\n" for r in rows))

    kto = build("kto", "arena", seed_data=[str(seed)], use_feedback=False, min_rows=4)
    assert sorted(kto.train["label"]) == [False] * 6 + [True] * 6  # the tie judges neither answer
    (source,) = kto.sources
    assert source.kind == "seed" and source.rows == 12
    assert source.revision == hashlib.sha256(seed.read_bytes()).hexdigest()[:40]
    reward = pairs("arena", seed_data=[str(seed)], use_feedback=False)
    assert sorted(p["winner"] == "tie" for p in reward.train) == [False] * 6 + [True]
    assert {p["origin"] for p in reward.train} == {"seed"}
    assert {p["prompt"] for p in reward.train} == {f"Question {i}?" for i in range(6)} | {"Either?"}


def test_seed_data_from_a_hub_dataset_cites_its_commit(hub_server, tmp_path: Path) -> None:  # noqa: ANN001
    rows = dialogsum_file(tmp_path / "dialogsum.jsonl", rows=6).read_text()
    sha = hub_server.seed("user/dialogsum", {"data/validation.jsonl": rows}, repo_type="dataset")

    data = build("sft", "dialogue_summary", seed_data=["user/dialogsum"], min_rows=4, use_feedback=False)

    assert len(data.train) == 6 and data.sources[0].is_hub and data.sources[0].ref == "user/dialogsum"
    assert data.sources[0].revision == sha


def test_the_size_check_says_what_the_method_needs_and_what_was_found() -> None:
    log_feedback("arena", votes(2))
    log_feedback("conversation_starter", [{"kind": "flag", "inputs": {"bio": "Nurse", "interests": "jazz"},
                                           "completion": "Hi.", "label": "generic"}])
    with pytest.raises(InvalidInput, match=r"^No usable DPO rows for task conversation_starter: DPO learns from "
                                           r"votes .* and the feedback holds 1 flag\. Collect more or pass --seed"):
        build("dpo", "conversation_starter")
    only = r"^Only 2 usable {} rows for task arena \(at least 8 needed; feedback holds 2 preferences\)\. Collect"
    with pytest.raises(InvalidInput, match=only.format("DPO")):
        build("dpo", "arena", min_rows=8)
    with pytest.raises(InvalidInput, match=only.format("reward-model")):
        pairs("arena", min_rows=8)
    with pytest.raises(InvalidInput, match="KTO needs both good and bad examples, but all 1 rows"):
        build("kto", "conversation_starter")
    with pytest.raises(InvalidInput, match="Unknown training method 'ppo'"):
        build("ppo", "arena")


def test_fit_length_drops_prompts_that_leave_no_room_for_the_answer(tiny_causal_lm: Path) -> None:
    from transformers import AutoTokenizer

    records = summary_feedback(6)
    records[0]["inputs"] = {"dialogue": "#Person1#: " + "blah " * 400}
    log_feedback("dialogue_summary", records)
    data = build("sft", "dialogue_summary")
    tokenizer = AutoTokenizer.from_pretrained(tiny_causal_lm)

    assert len(fit_length(data, tokenizer, max_length=400, min_rows=1).train) == 5
    assert data.sources[0].rows == 5 and len(data.row_sources) == 5  # the card counts what is trained on
    with pytest.raises(InvalidInput, match=r"^Only \d+ usable SFT rows for task dialogue_summary .*Raise --max-length"):
        fit_length(data, tokenizer, max_length=40, min_rows=1)
