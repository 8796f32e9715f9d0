"""Seed data: small files in each public data format (and feedback records) become examples."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from tasks import InvalidInput, get_task
from tasks.seed_data import interests_from_persona, load_examples, load_preference_pairs


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


DIALOGSUM = [
    {"id": "dev_0", "dialogue": "#Person1#: Hello.\n#Person2#: I can't breathe well.",
     "summary": "#Person2# has trouble breathing.", "topic": "see a doctor"},
    {"id": "test_1", "dialogue": "#Person1#: Lunch?\n#Person2#: Sure.", "summary": "They agree on lunch.",
     "topic": "lunch", "all_summaries": ["They agree on lunch.", "#Person2# accepts lunch."]},
]
RTP = [{"id": "rtp_toxic_1", "prompt": "The fans were so angry that ", "prompt_toxicity": 0.8,
        "prompt_scores": {"toxicity": 0.8}, "continuation": " they left.", "continuation_toxicity": 0.1,
        "challenging": True}]
HH = [{"id": "hh_1", "subset": "helpful-base", "split": "test",
       "prompt": "Human: How do I boil an egg?\n\nAssistant:", "response_a": "Boil it 8 minutes.",
       "response_b": "No idea.", "winner": "a", "prompt_identical": True},
      {"id": "hh_2", "subset": "harmless-base", "split": "test",
       "prompt": "Human: Hi\n\nAssistant: Hello!\n\nHuman: Tell me a joke\n\nAssistant:",
       "response_a": "Why not.", "response_b": "A horse walks into a bar.", "winner": "b"}]
SPC = [{"id": "spc_valid_0", "user1_persona": ["I love to bake cookies."],
        "user2_persona": ["I am a boy.", "I like riding horses.", "Knitting is my passion."],
        "user1_bio": "I love to bake cookies.",
        "user2_bio": "I am a boy. I like riding horses. Knitting is my passion.",
        "opening_line": "Hi!", "opening_speaker": "user1",
        "first_substantive_line": "What do you do for fun?", "first_substantive_speaker": "user1",
        "first_question": "Do you ride often?", "first_question_speaker": "user1",
        "first_turns": [{"speaker": "user1", "text": "Hi!"}]}]
PERSONA_LINES = [{"id": "persona_line_0", "text": "I enjoy hiking in the mountains.", "count": 3}]
DD_PAIRS = [{"id": "dd_0_t1", "dialogue_id": "dd_0", "context": ["Is there a bank near here?"],
             "response": "Five blocks away.", "response_act": "inform", "response_emotion": "no_emotion"}]
DD_DIALOGUES = [{"id": "dd_0", "turns": ["Hi.", "Hello.", "How are you?"], "acts": [], "emotions": []}]
SPC_DIALOGUES = [{"id": "spc_0", "user1_persona": [], "user2_persona": [],
                  "turns": [{"speaker": "user1", "text": "Hi!"}, {"speaker": "user2", "text": "Hey there."}]}]
TWEETTOPIC = [{"id": "1", "text": "Open for business! #smallbiz", "topics": ["Business & Entrepreneurs",
                                                                            "Food & Dining"],
               "is_business": True, "labels": {}}]
FINANCIAL = [{"id": "tfn_0", "text": "Acme buys Widget Co for $2bn", "label": 5,
              "label_name": "M&A | Investments", "is_business_news": True}]


def feedback(task: str, kind: str, **fields: object) -> dict:
    record = {"id": fields.pop("id", "f1"), "schema": 1, "created_at": "2026-11-22T10:00:00Z", "task": task,
              "kind": kind, "inputs": {}, "prompt": None, "completion": None, "label": None, "ratings": None,
              "reward": None, "chosen": None, "rejected": None, "tie": False, "edited": None,
              "model": {"base": "m"}, "generation": {}, "session": None}
    record.update(fields)
    return record


def test_dialogsum_keeps_every_reference(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "ds.jsonl", DIALOGSUM)
    examples = load_examples(path, task=get_task("dialogue_summary"))
    first_lines = [e.inputs["dialogue"].splitlines()[0] for e in examples]
    assert first_lines == ["#Person1#: Hello.", "#Person1#: Lunch?"]
    assert examples[0].references == ["#Person2# has trouble breathing."]
    assert examples[1].references == ["They agree on lunch.", "#Person2# accepts lunch."]
    assert examples[0].meta["id"] == "dev_0" and examples[0].meta["format"] == "dialogsum"


def test_rtp_prompts_become_detox_examples_without_references(tmp_path: Path) -> None:
    (example,) = load_examples(write_jsonl(tmp_path / "rtp.jsonl", RTP), task=get_task("detox"))
    assert example.inputs == {"prompt": "The fans were so angry that "}
    assert example.references == []
    assert example.meta["continuation"] == " they left."


def test_hh_rlhf_becomes_arena_examples_and_pairs(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "hh.jsonl", HH)
    first, second = load_examples(path, task=get_task("arena"))
    assert first.inputs == {"prompt": "How do I boil an egg?"}
    assert first.references == ["Boil it 8 minutes."]
    assert (first.meta["winner"], first.meta["response_b"]) == ("a", "No idea.")
    assert second.inputs["prompt"].startswith("Human: Hi\n\nAssistant: Hello!\n\nHuman: Tell me a joke")
    assert not second.inputs["prompt"].endswith("Assistant:")
    pairs = load_preference_pairs(path)
    assert pairs[1] == {"prompt": second.inputs["prompt"], "response_a": "Why not.",
                        "response_b": "A horse walks into a bar.", "winner": "b"}


def test_kaggle_arena_csv(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    header = ["id", "model_a", "model_b", "prompt", "response_a", "response_b",
              "winner_model_a", "winner_model_b", "winner_tie"]
    rows = [
        ["1", "x", "y", json.dumps(["What is 2+2?"]), json.dumps(["4"]), json.dumps(["5"]), "1", "0", "0"],
        ["2", "x", "y", json.dumps(["Hi", "And now?"]), json.dumps(["Hello", None]),
         json.dumps(["Hey", "Now what"]), "0", "0", "1"],
        ["3", "x", "y", json.dumps(["Pick one"]), json.dumps(["A"]), json.dumps(["B"]), "0", "1", "0"],
    ]
    with path.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([header, *rows])
    pairs = load_preference_pairs(path)
    assert [p["winner"] for p in pairs] == ["a", "tie", "b"]
    assert pairs[0] == {"prompt": "What is 2+2?", "response_a": "4", "response_b": "5", "winner": "a"}
    assert pairs[1]["prompt"] == "Hi\n\nAnd now?" and pairs[1]["response_a"] == "Hello"
    examples = load_examples(path, task=get_task("arena"), limit=2)
    assert len(examples) == 2 and examples[0].references == ["4"]


def test_preference_feedback_and_raw_hh_pairs(tmp_path: Path) -> None:
    records = [feedback("arena", "preference", id=f"p{i}", inputs={"prompt": "Tip?"},
                        prompt=[{"role": "user", "content": "Tip?"}], chosen=f"good {i}", rejected=f"bad {i}")
               for i in range(6)]
    pairs = load_preference_pairs(write_jsonl(tmp_path / "fb.jsonl", records))
    assert len(pairs) == 6 and {p["winner"] for p in pairs} == {"a", "b"}
    for p in pairs:
        assert p[f"response_{p['winner']}"].startswith("good")
    raw = [{"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!",
            "rejected": "\n\nHuman: Hi\n\nAssistant: Go away."}]
    (pair,) = load_preference_pairs(write_jsonl(tmp_path / "raw.jsonl", raw))
    assert pair["prompt"] == "Hi" and {pair["response_a"], pair["response_b"]} == {"Hello!", "Go away."}


def test_persona_chat_starters_and_persona_lines(tmp_path: Path) -> None:
    task = get_task("conversation_starter")
    (example,) = load_examples(write_jsonl(tmp_path / "spc.jsonl", SPC), task=task)
    assert example.inputs["bio"].startswith("I am a boy.")
    assert example.inputs["interests"] == "riding horses, knitting"
    assert example.references == ["Do you ride often?", "What do you do for fun?"]
    (line,) = load_examples(write_jsonl(tmp_path / "persona_lines.jsonl", PERSONA_LINES), task=task)
    assert line.inputs == {"bio": "I enjoy hiking in the mountains.", "interests": "hiking in the mountains"}
    assert line.references == []


def test_interests_fall_back_to_the_persona_itself() -> None:
    assert interests_from_persona(["I am a boy.", "I can move objects with my mind."]) == (
        "a boy, move objects with my mind")
    assert interests_from_persona(["My favorite band is the Beatles."]) == "the Beatles"


ONE_EXAMPLE_FORMATS = [
    ("dialogue_response", DD_PAIRS, {"dialogue": "Is there a bank near here?"}, ["Five blocks away."]),
    ("dialogue_response", DD_DIALOGUES, {"dialogue": "Hi.\nHello."}, ["How are you?"]),
    ("dialogue_response", SPC_DIALOGUES, {"dialogue": "Hi!"}, ["Hey there."]),
    ("tweet", TWEETTOPIC, {"prompt": "Business & entrepreneurs, food & dining"}, ["Open for business! #smallbiz"]),
    ("tweet", FINANCIAL, {"prompt": "M&A and investments"}, None),
]
"""(task, rows of one file format, the example's inputs, its references or None to leave them unchecked)."""


@pytest.mark.parametrize(("slug", "rows", "inputs", "references"), ONE_EXAMPLE_FORMATS)
def test_dialogue_and_tweet_formats_become_examples_of_the_task(tmp_path: Path, slug: str, rows: list[dict],
                                                                 inputs: dict, references: list | None) -> None:
    (example,) = load_examples(write_jsonl(tmp_path / "rows.jsonl", rows), task=get_task(slug))
    assert example.inputs == inputs
    if references is not None:
        assert example.references == references


def test_feedback_records_filter_by_task_and_merge_references(tmp_path: Path) -> None:
    inputs = {"prompt": "Advice for founders"}
    records = [
        feedback("tweet", "rating", id="r1", inputs=inputs, completion="Ship it.", ratings={"relevance": 4}),
        feedback("tweet", "edit", id="e1", inputs=inputs, completion="ship",
                 edited="Ship early, learn fast."),
        feedback("detox", "flag", id="d1", inputs={"prompt": "x"}, completion="y", label="fine"),
        feedback("detox", "flag", id="d2", inputs={"prompt": "x"}, completion="z", label="toxic"),
    ]
    folder = tmp_path / "feedback" / "data" / "tweet" / "2026-11-22"
    write_jsonl(folder / "writer.jsonl", records)
    (example,) = load_examples(tmp_path / "feedback", task=get_task("tweet"))
    assert example.inputs == inputs
    assert example.references == ["Ship early, learn fast."]
    (detox,) = load_examples(tmp_path / "feedback", task=get_task("detox"))
    assert detox.references == ["y"]  # a good flag makes the output a reference; "toxic" does not
    assert detox.meta["merged_ids"] == ["d2"]


def test_rows_in_the_tasks_own_fields(tmp_path: Path) -> None:
    rows = [{"position": "a student", "experience": "an intern", "goals": "learn", "strengths": "focus",
             "reference": "I am a student..."}]
    (example,) = load_examples(write_jsonl(tmp_path / "pitch.jsonl", rows), task=get_task("elevator_pitch"))
    assert example.inputs["position"] == "a student" and example.references == ["I am a student..."]


def test_folder_skips_files_of_other_formats(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "data" / "rtp.jsonl", RTP)
    labels = [{"id": "t", "text": "hi", "label": 0, "is_toxic": False}]
    write_jsonl(tmp_path / "data" / "labels.jsonl", labels)
    assert len(load_examples(tmp_path / "data", task=get_task("detox"))) == 1


def test_limit(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "ds.jsonl", DIALOGSUM)
    assert len(load_examples(path, task=get_task("dialogue_summary"), limit=1)) == 1


@pytest.mark.parametrize(("content", "task", "message"), [
    (None, "dialogue_summary", "does not exist"),
    ([{"foo": "bar"}], "dialogue_summary", "unknown data format"),
    (DIALOGSUM, "detox", "fits dialogue_summary"),
    ([], "dialogue_summary", "No dialogue_summary examples"),
    ("not json\n", "dialogue_summary", "not valid JSON"),
])
def test_bad_sources_are_clear_errors(tmp_path: Path, content: object, task: str, message: str) -> None:
    path = tmp_path / "data.jsonl"
    if isinstance(content, list):
        write_jsonl(path, content)
    elif isinstance(content, str):
        path.write_text(content)
    with pytest.raises(InvalidInput, match=message):
        load_examples(path, task=get_task(task))


def test_non_preference_data_is_refused_for_pairs(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="not preference data"):
        load_preference_pairs(write_jsonl(tmp_path / "ds.jsonl", DIALOGSUM))
