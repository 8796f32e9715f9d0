"""The blind arena: sides drawn per request, models named only after the vote, a leaderboard of the votes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from gradio_client import Client

from demos.app import build_app
from demos.handlers import ArenaSides
from demos.quotas import Access, Limits
from hub.arena import HEADER
from hub.feedback.callback import FeedbackCallback
from hub.feedback.tickets import SECRET_ENV
from serving.engine import Engine
from serving.models import load_model
from tests.adapter_factory import make_adapter
from tests.test_app import SETTINGS, serving

PROMPT = "Tell me a joke"


@pytest.fixture(scope="module")
def arena(tiny_causal_lm: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Client, Path]]:
    folder = tmp_path_factory.mktemp("feedback")
    engine = Engine(load_model(str(tiny_causal_lm)))
    engine.load_adapter("challenger", str(make_adapter(tiny_causal_lm, tmp_path_factory.mktemp("adapter"), seed=4)))
    feedback = FeedbackCallback(folder=folder)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(SECRET_ENV, "a test secret that is long enough")
        app = build_app(engine, feedback=feedback, arena=ArenaSides(a=None, b="challenger"),
                        access=Access(limits=Limits.off()))
    with serving(app) as url:
        yield Client(url, verbose=False), folder
    feedback.close(push=False)


def test_each_request_draws_which_candidate_answers_as_a(arena: tuple[Client, Path]) -> None:
    client, _ = arena
    first = set()
    for _ in range(20):  # both orders appear unless a fair coin lands the same way 20 times (p = 2e-6)
        answer_a, answer_b, served = client.predict(PROMPT, *SETTINGS, api_name="/generate_arena")
        first.add(served["A"]["adapter"])
        by_model = {served[side]["adapter"]: text for side, text in zip("AB", (answer_a, answer_b), strict=True)}
        assert set(by_model) == {None, served["A"]["adapter"] or served["B"]["adapter"]}
    assert len(first) == 2


def test_the_vote_names_the_models_records_both_and_feeds_the_leaderboard(arena: tuple[Client, Path]) -> None:
    client, _ = arena
    for _ in range(6):
        answer_a, answer_b, served = client.predict(PROMPT, *SETTINGS, api_name="/generate_arena")
        challenger_side = "A" if served["A"]["adapter"] else "B"
        message = client.predict(PROMPT, answer_a, answer_b, challenger_side, served, api_name="/feedback_arena")
        names = {side: f"{served[side]['adapter']}@{served[side]['revision'][:12]}" if served[side]["adapter"]
                 else f"{served[side]['base']} (base model)" for side in "AB"}
        assert message.startswith("Thanks!")
        assert message.endswith(f"Answer A came from {names['A']}, answer B from {names['B']}.")

    board = client.predict(api_name="/arena_leaderboard")

    assert board["headers"] == list(HEADER)
    (best, other) = board["data"]
    assert best[1].startswith(served[challenger_side]["adapter"]) and best[4:] == ["6", "100%"]
    assert other[1].endswith("(base model)") and other[5] == "0%"
