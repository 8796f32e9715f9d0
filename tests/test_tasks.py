"""Task definitions: fields, validation, prompt rendering and ratings."""

from __future__ import annotations

import pytest

from tasks import SLUGS, TASKS, InvalidInput, get_task

EXPECTED_SLUGS = (
    "conversation_starter",
    "dialogue_summary",
    "dialogue_response",
    "detox",
    "tweet",
    "elevator_pitch",
    "arena",
)


def test_the_seven_public_slugs() -> None:
    assert SLUGS == EXPECTED_SLUGS


@pytest.mark.parametrize("slug", EXPECTED_SLUGS)
def test_examples_validate_and_render(slug: str) -> None:
    task = get_task(slug)
    assert 2 <= len(task.examples) <= 3
    for example in task.examples:
        inputs = task.validate(example)
        messages = task.messages(inputs)
        assert [m["role"] for m in messages] == ["system", "user"]
        for value in inputs.values():
            assert value in messages[1]["content"]
            assert value in task.text_prompt(inputs)


def test_detox_plain_prompt_is_the_text_to_continue() -> None:
    task = get_task("detox")
    assert task.text_prompt({"prompt": "The fans were"}) == "The fans were"


def test_elevator_pitch_follows_the_template() -> None:
    task = get_task("elevator_pitch")
    text = task.messages(task.examples[0])[1]["content"]
    assert "I am a student. During my experience as a data science intern" in text
    assert "I believe my attention to detail will" in text


@pytest.mark.parametrize(
    "value, message",
    [
        ("", "empty"),
        ("   ", "empty"),
        ("\x00\x07\x1b", "empty"),
        ("a" * 281, "too long"),
        (42, "text"),
    ],
)
def test_bad_inputs_are_refused(value: object, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        get_task("tweet").validate({"prompt": value})


def test_control_characters_are_removed_but_newlines_kept() -> None:
    cleaned = get_task("dialogue_summary").validate({"dialogue": "A: hi\x00\x1b\nB: hello\u200b"})
    assert cleaned == {"dialogue": "A: hi\nB: hello"}


def test_missing_field_is_named() -> None:
    with pytest.raises(InvalidInput, match="Interests is missing"):
        get_task("conversation_starter").validate({"bio": "hi"})


def test_tweet_reward_is_a_weighted_normalised_sum() -> None:
    task = get_task("tweet")
    assert sum(task.rating_weights.values()) == pytest.approx(1.0)
    assert task.reward_from_ratings(dict.fromkeys(task.rating_weights, 1)) == 0.0
    assert task.reward_from_ratings(dict.fromkeys(task.rating_weights, 5)) == 1.0
    mixed = {"relevance": 5, "clarity": 1, "originality": 1, "engagement": 1}
    assert task.reward_from_ratings(mixed) == pytest.approx(task.rating_weights["relevance"])
    with pytest.raises(InvalidInput):
        task.reward_from_ratings({**mixed, "clarity": 6})
    with pytest.raises(InvalidInput, match="Missing"):
        task.reward_from_ratings({"relevance": 3})


def test_flags_and_kinds_follow_the_design() -> None:
    assert TASKS["conversation_starter"].flags == (
        "great",
        "generic",
        "off-topic",
        "repetitive",
        "inappropriate",
    )
    assert set(TASKS["detox"].flags) == {"toxic", "fine"}
    assert TASKS["tweet"].feedback_kinds == ("rating",)
    assert TASKS["arena"].feedback_kinds == ("preference",)
    for task in TASKS.values():
        assert set(task.good_flags) <= set(task.flags)


def test_unknown_task_lists_the_known_ones() -> None:
    with pytest.raises(InvalidInput, match="conversation_starter"):
        get_task("poetry")
