"""Feedback controls on every tab, driven through the `feedback_<slug>` endpoints."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from gradio_client import Client

from demos.app import build_app
from hub.feedback.callback import FeedbackCallback
from serving.engine import Engine
from serving.models import load_model
from tasks import TASKS
from tests.test_app import SETTINGS, example_args, free_port


@pytest.fixture(scope="module")
def feedback_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("feedback")


@pytest.fixture(scope="module")
def client(tiny_causal_lm: Path, feedback_folder: Path) -> Iterator[Client]:
    feedback = FeedbackCallback(folder=feedback_folder)
    app = build_app(Engine(load_model(str(tiny_causal_lm))), feedback=feedback)
    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield Client(f"http://127.0.0.1:{port}/", verbose=False)
    finally:
        app.close()
        feedback.close(push=False)


def records(folder: Path, slug: str) -> list[dict]:
    rows = []
    for file in sorted((folder / "data" / slug).rglob("*.jsonl")):
        rows += [json.loads(line) for line in file.read_text().splitlines()]
    return rows


@pytest.mark.parametrize("slug", [s for s, t in TASKS.items() if t.flags])
def test_flag_and_edit_become_records(client: Client, feedback_folder: Path, slug: str) -> None:
    args = example_args(slug)
    text, served = client.predict(*args, *SETTINGS, api_name=f"/generate_{slug}")[:2]
    label = TASKS[slug].flags[0]
    message = client.predict(*args, text, label, "A better answer, written by a person.", served,
                             api_name=f"/feedback_{slug}")
    assert message.startswith("Thanks!") and message.count("record") == 2
    flag, edit = records(feedback_folder, slug)[-2:]
    assert (flag["kind"], flag["label"], flag["completion"]) == ("flag", label, text)
    assert (edit["kind"], edit["edited"]) == ("edit", "A better answer, written by a person.")
    assert flag["prompt"] == TASKS[slug].messages(TASKS[slug].validate(dict(zip(TASKS[slug].field_names, args,
                                                                                 strict=True))))
    assert flag["model"]["base"] == served["base"] and flag["generation"]["seed"] == SETTINGS[5]
    assert flag["session"] and len(flag["session"]) >= 16


def test_feedback_needs_a_flag_or_an_edit(client: Client) -> None:
    with pytest.raises(Exception, match="Choose a flag"):
        client.predict("Continue me", "some output", None, "", None, api_name="/feedback_detox")
    with pytest.raises(Exception, match="Generate an output first"):
        client.predict("Continue me", "", "toxic", "", None, api_name="/feedback_detox")


def test_unknown_flag_is_refused_and_nothing_written(client: Client, feedback_folder: Path) -> None:
    before = len(records(feedback_folder, "detox"))
    with pytest.raises(Exception):  # noqa: B017 - gradio refuses a value outside the radio's choices
        client.predict("Continue me", "some output", "hilarious", "", None, api_name="/feedback_detox")
    assert len(records(feedback_folder, "detox")) == before


def test_tweet_ratings_store_the_weighted_reward(client: Client, feedback_folder: Path) -> None:
    text, served = client.predict("Advice for founders", *SETTINGS, api_name="/generate_tweet")
    message = client.predict("Advice for founders", text, 5, 4, 3, 2, served, api_name="/feedback_tweet")
    assert message.startswith("Thanks!")
    row = records(feedback_folder, "tweet")[-1]
    assert row["ratings"] == {"relevance": 5, "clarity": 4, "originality": 3, "engagement": 2}
    assert row["reward"] == pytest.approx(TASKS["tweet"].reward_from_ratings(row["ratings"]))


@pytest.mark.parametrize("vote", ["A", "B", "tie", "both bad"])
def test_arena_votes_become_preferences(client: Client, feedback_folder: Path, vote: str) -> None:
    prompt = "Two tips for a marathon"
    answer_a, answer_b, served = client.predict(prompt, *SETTINGS, api_name="/generate_arena")
    assert client.predict("Two tips for a marathon", answer_a, answer_b, vote, served,
                          api_name="/feedback_arena").startswith("Thanks!")
    row = records(feedback_folder, "arena")[-1]
    assert row["kind"] == "preference" and row["label"] == vote.replace(" ", "-")
    assert row["tie"] is (vote in ("tie", "both bad"))
    if vote == "B":
        assert (row["chosen"], row["rejected"]) == (answer_b, answer_a)
    if vote == "A":
        assert (row["chosen"], row["rejected"]) == (answer_a, answer_b)
