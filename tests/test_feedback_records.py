"""Feedback records: every kind builds, every broken rule is refused with a clear message."""

from __future__ import annotations

import json
import uuid
from datetime import datetime

import pytest

from hub.feedback.records import (
    FIELDS,
    MAX_TEXT_CHARS,
    InvalidRecord,
    build_record,
    encode_record,
    validate_record,
)
from tasks import InvalidInput, get_task

RATINGS = {"relevance": 5, "clarity": 4, "originality": 3, "engagement": 4}
VALID = {
    "flag": {"task": "conversation_starter", "kind": "flag",
             "inputs": {"bio": "Nurse who sails", "interests": "sailing, jazz"},
             "completion": "How did you get into sailing?", "label": "great"},
    "rating": {"task": "tweet", "kind": "rating", "inputs": {"prompt": "Advice for entrepreneurs"},
               "completion": "Talk to customers before you code.", "ratings": RATINGS},
    "preference": {"task": "arena", "kind": "preference", "inputs": {"prompt": "Two marathon tips"},
                   "chosen": "Start slow; hydrate.", "rejected": "Run fast.", "label": "A"},
    "edit": {"task": "dialogue_summary", "kind": "edit",
             "inputs": {"dialogue": "#Person1#: Hi\n#Person2#: Hello"},
             "completion": "They talk.", "edited": "Two people greet each other."},
}


def make(base: str, **changes):
    return build_record(**{**VALID[base], **changes})


@pytest.mark.parametrize("kind", list(VALID))
def test_every_kind_builds_a_complete_round_tripping_record(kind: str) -> None:
    record = make(kind, model={"base": "tiny", "adapter": None, "revision": "abc"},
                  generation={"temperature": 0.7, "top_k": 50, "top_p": 0.9, "repetition_penalty": 1.1,
                              "max_new_tokens": 20, "seed": None},
                  session="0123abcd")
    assert tuple(record) == FIELDS
    assert uuid.UUID(record["id"]).version == 4
    assert record["schema"] == 2 and record["kind"] == kind and record["source"] == "person"
    assert record["created_at"].endswith("Z") and datetime.fromisoformat(record["created_at"])
    assert record["prompt"] == get_task(record["task"]).messages(record["inputs"])
    line = encode_record(record)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert validate_record(json.loads(line)) == record
    assert isinstance(InvalidRecord("x"), InvalidInput)


def test_fields_that_do_not_apply_are_null() -> None:
    flag = make("flag")
    assert all(flag[name] is None for name in ("ratings", "reward", "chosen", "rejected", "tie", "edited",
                                                "model", "generation", "session", "user", "sides"))
    rating = make("rating")
    assert rating["label"] is None and rating["reward"] == get_task("tweet").reward_from_ratings(RATINGS)
    assert make("rating", reward=0.25)["reward"] == 0.25
    assert make("edit", completion=None)["completion"] is None


def test_inputs_are_trimmed_and_prompt_may_be_given() -> None:
    record = make("rating", inputs={"prompt": "  Hiring  "}, prompt=[{"role": "user", "content": "Hi"}])
    assert record["inputs"] == {"prompt": "Hiring"}
    assert record["prompt"] == [{"role": "user", "content": "Hi"}]


@pytest.mark.parametrize(("vote", "changes", "label", "tie"), [
    ("A wins", {"label": "A"}, "A", False),
    ("B wins", {"label": "B"}, "B", False),
    ("no label", {"label": None}, None, False),
    ("tie", {"label": "tie", "tie": True}, "tie", True),
    ("tie flag only", {"label": None, "tie": True, "chosen": None, "rejected": None}, "tie", True),
    ("both bad", {"label": "both-bad", "tie": True}, "both-bad", True),
    ("both bad, no texts", {"label": "both-bad", "chosen": None, "rejected": None}, "both-bad", True),
])
def test_preference_votes(vote: str, changes: dict, label: str | None, tie: bool) -> None:
    record = make("preference", **changes)
    assert (record["label"], record["tie"]) == (label, tie), vote


LONG = "x" * (MAX_TEXT_CHARS + 1)
REJECTIONS = [
    ("unknown task", "flag", {"task": "poetry"}, "Unknown task"),
    ("task slug not text", "flag", {"task": 3}, "task slug"),
    ("unknown kind", "flag", {"kind": "like"}, "kind must be one of"),
    ("tweet takes ratings only", "flag", {"task": "tweet", "inputs": {"prompt": "x"}}, "takes rating"),
    ("arena takes votes only", "rating", {"task": "arena"}, "takes preference"),
    ("rating on a flag task", "rating", {"task": "detox", "inputs": {"prompt": "x"}}, "takes flag or edit"),
    ("flag not in task.flags", "flag", {"label": "toxic"}, "not one of conversation_starter's flags"),
    ("flag without label", "flag", {"label": None}, "not one of"),
    ("flag without completion", "flag", {"completion": None}, "completion must be non-empty"),
    ("blank completion", "flag", {"completion": "   "}, "completion must be non-empty"),
    ("completion not text", "flag", {"completion": 42}, "completion must be non-empty"),
    ("completion too long", "flag", {"completion": LONG}, "completion is too long"),
    ("ratings missing one", "rating", {"ratings": {"relevance": 5, "clarity": 4, "originality": 3}},
     "exactly: relevance"),
    ("ratings extra name", "rating", {"ratings": {**RATINGS, "humor": 3}}, "exactly"),
    ("ratings not a dict", "rating", {"ratings": [5, 4, 3, 4]}, "exactly"),
    ("ratings missing", "rating", {"ratings": None}, "exactly"),
    ("rating above 5", "rating", {"ratings": {**RATINGS, "clarity": 6}}, "clarity must be a whole number"),
    ("rating below 1", "rating", {"ratings": {**RATINGS, "clarity": 0}}, "from 1 to 5"),
    ("rating fractional", "rating", {"ratings": {**RATINGS, "clarity": 3.5}}, "from 1 to 5"),
    ("rating bool", "rating", {"ratings": {**RATINGS, "clarity": True}}, "from 1 to 5"),
    ("rating text", "rating", {"ratings": {**RATINGS, "clarity": "5"}}, "from 1 to 5"),
    ("reward out of range", "rating", {"reward": 1.5}, "Reward must be a number from 0 to 1"),
    ("reward NaN", "rating", {"reward": float("nan")}, "Reward must be"),
    ("label on a rating", "rating", {"label": "great"}, "label does not apply to rating"),
    ("vote without chosen", "preference", {"chosen": None}, "chosen must be non-empty"),
    ("vote without rejected", "preference", {"rejected": ""}, "rejected must be non-empty"),
    ("vote label unknown", "preference", {"label": "C"}, "vote label must be one of"),
    ("A and tie", "preference", {"label": "A", "tie": True}, "cannot be both"),
    ("tie label, tie false", "preference", {"label": "tie", "tie": False}, "cannot be both"),
    ("tie not bool", "preference", {"tie": "yes"}, "tie must be"),
    ("completion on a vote", "preference", {"completion": "x"}, "completion does not apply"),
    ("edit without edited", "edit", {"edited": None}, "edited must be non-empty"),
    ("edit blank", "edit", {"edited": " \n "}, "edited must be non-empty"),
    ("edit too long", "edit", {"edited": LONG}, "edited is too long"),
    ("label on an edit", "edit", {"label": "great"}, "label does not apply to edit"),
    ("ratings on an edit", "edit", {"ratings": RATINGS}, "ratings does not apply"),
    ("inputs missing field", "flag", {"inputs": {"bio": "x"}}, "Interests is missing"),
    ("inputs extra field", "flag", {"inputs": {"bio": "x", "interests": "y", "age": "3"}}, "does not take"),
    ("inputs not a dict", "flag", {"inputs": "bio"}, "inputs must be an object"),
    ("input too long", "rating", {"inputs": {"prompt": "x" * 281}}, "Prompt is too long"),
    ("prompt empty", "flag", {"prompt": []}, "prompt must be a list"),
    ("prompt bad role", "flag", {"prompt": [{"role": "tool", "content": "x"}]}, "role one of"),
    ("prompt extra key", "flag", {"prompt": [{"role": "user", "content": "x", "name": "a"}]},
     "{role, content}"),
    ("prompt too long", "flag", {"prompt": [{"role": "user", "content": "x" * 60_001}]},
     "prompt is too long"),
    ("model unknown key", "flag", {"model": {"base": "x", "gpu": "a100"}}, "model must be an object"),
    ("model value not text", "flag", {"model": {"base": 3}}, "model.base must be text"),
    ("generation unknown key", "flag", {"generation": {"beams": 4}}, "generation must be an object"),
    ("generation not a number", "flag", {"generation": {"temperature": "hot"}}, "temperature must be"),
    ("generation fractional int", "flag", {"generation": {"top_k": 2.5}}, "top_k must be a whole number"),
    ("generation infinite", "flag", {"generation": {"top_p": float("inf")}}, "top_p must be"),
    ("seed above int64", "flag", {"generation": {"seed": 10**19}}, "seed must be a whole number from 0 to 922"),
    ("seed negative", "flag", {"generation": {"seed": -1}}, "seed must be a whole number from 0"),
    ("temperature out of range", "flag", {"generation": {"temperature": 2.5}}, "temperature must be a number from"),
    ("user too long", "flag", {"user": "u" * 513}, "user must be text"),
    ("unknown source", "flag", {"source": "bot"}, "source must be one of person, guard, simulated"),
    ("sides on a flag", "flag", {"sides": {"A": {"base": "x"}}}, "sides does not apply to flag"),
    ("sides unknown side", "preference", {"sides": {"C": {"base": "x"}}}, "sides must be an object"),
    ("sides bad model", "preference", {"sides": {"A": {"gpu": "x"}}}, "model must be an object"),
    ("completion huge", "flag", {"completion": " " * 10_000_000}, "completion is too long"),
    ("session too long", "flag", {"session": "s" * 513}, "session must be text"),
    ("session empty", "flag", {"session": ""}, "session must be text"),
    ("lone surrogate", "flag", {"completion": "bad \ud800 text"}, "cannot be stored as JSON"),
]


@pytest.mark.parametrize(("why", "kind", "changes", "message"), REJECTIONS, ids=[r[0] for r in REJECTIONS])
def test_invalid_records_are_refused_with_a_clear_message(why: str, kind: str, changes: dict,
                                                          message: str) -> None:
    with pytest.raises(InvalidRecord) as raised:
        encode_record(make(kind, **changes))
    assert message in str(raised.value)
    assert "\n" not in str(raised.value) and "Traceback" not in str(raised.value)


@pytest.mark.parametrize(("why", "changes", "message"), [
    ("not an object", None, "JSON object"),
    ("unknown field", {"extra": 1}, "Unknown feedback field"),
    ("future schema", {"schema": 3}, "schema must be 1 or 2"),
    ("bool schema", {"schema": True}, "schema must be 1 or 2"),
    ("bad id", {"id": "not-a-uuid"}, "id must be a UUID"),
    ("bad time", {"created_at": "yesterday"}, "created_at must be an ISO 8601"),
    ("naive time", {"created_at": "2026-11-22T10:00:00"}, "UTC"),
])
def test_rows_read_back_are_checked_too(why: str, changes: dict | None, message: str) -> None:
    row = None if changes is None else {**make("flag"), **changes}
    with pytest.raises(InvalidRecord, match=message):
        validate_record(row)


def test_missing_null_fields_are_accepted_and_times_normalised() -> None:
    row = make("flag")
    sparse = {k: v for k, v in row.items() if v is not None}
    sparse["created_at"] = "2026-11-22T11:00:00+01:00"
    assert validate_record(sparse) == {**row, "created_at": "2026-11-22T10:00:00Z"}


def test_schema_1_rows_stay_readable() -> None:
    row = {name: value for name, value in make("flag").items() if name not in ("user", "source", "sides")}
    row["schema"] = 1
    assert validate_record(row) == {**row, "user": None, "source": "person", "sides": None}


def test_new_fields_round_trip() -> None:
    side = {"base": "tiny", "adapter": "me/arena-dpo", "revision": "abc"}
    record = make("preference", user="0123abcd", source="simulated", sides={"A": side, "B": None})
    assert (record["user"], record["source"], record["sides"]) == ("0123abcd", "simulated", {"A": side, "B": None})
    assert validate_record(json.loads(encode_record(record))) == record


def test_a_row_with_a_huge_seed_is_skipped_by_the_loader_not_a_crash(tmp_path) -> None:
    from hub.feedback.loading import MalformedFeedbackWarning, load_feedback

    good = make("flag", generation={"seed": 2**63 - 1})
    bad = {**make("flag"), "generation": {"seed": 10**19}}  # what an old app stored from the Seed box
    folder = tmp_path / "data" / "conversation_starter" / "2026-11-22"
    folder.mkdir(parents=True)
    (folder / "writer.jsonl").write_bytes(encode_record(good) + encode_record(bad))
    with pytest.warns(MalformedFeedbackWarning, match="Skipped 1 malformed .*seed must be"):
        rows = load_feedback(tmp_path, task="conversation_starter")
    assert rows["generation"] == [good["generation"]]


def test_a_trainer_meets_rows_with_huge_seeds_with_one_line_and_exit_2(tiny_causal_lm, capsys, tmp_path) -> None:
    from hub.paths import feedback_home
    from tests.trainer_utils import FAST, error_lines, train
    from trainers import sft

    rows = [{**make("flag", completion=f"Sailing or jazz, {i}?"), "generation": {"seed": 10**19 + i}}
            for i in range(6)]
    folder = feedback_home() / "data" / "conversation_starter" / "2026-11-22"
    folder.mkdir(parents=True)
    (folder / "old-app.jsonl").write_bytes(b"".join(encode_record(row) for row in rows))
    code, _, err = train(sft.main, sft.SFTArgs, [*FAST, "--task", "conversation_starter", "--model",
                                                 str(tiny_causal_lm), "--output-dir", str(tmp_path / "out")], capsys)
    assert code == 2 and "Traceback" not in err and "OverflowError" not in err
    (line,) = error_lines(err)
    assert "No usable SFT rows for task conversation_starter" in line
