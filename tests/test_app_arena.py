"""The blind arena: sides drawn per request, models named only after the vote, a leaderboard of the votes."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from gradio_client import Client

from demos.app import build_app
from demos.handlers import ArenaSides
from demos.quotas import Access, Limits
from hub.arena import HEADER
from hub.feedback.callback import FeedbackCallback
from hub.feedback.tickets import SECRET_ENV, verify_ticket
from serving.engine import Engine
from serving.models import load_model
from tests.adapter_factory import make_adapter
from tests.test_app import SETTINGS, serving

PROMPT = "Tell me a joke"
SECRET = "a test secret that is long enough"


def opened(served: dict, answers: tuple[str, str], *, prompt: str = PROMPT,
           key: bytes = SECRET.encode()) -> dict[str, dict]:
    """Each side's model facts, as only the server (holding the key) can read them from the sealed tickets."""
    assert set(served) == {"A", "B"} and all(set(served[side]) == {"ticket"} for side in "AB"), served
    return {side: verify_ticket(served[side]["ticket"], key=key, task="arena", inputs={"prompt": prompt},
                                completion=answer).model
            for side, answer in zip("AB", answers, strict=True)}


@pytest.fixture(scope="module")
def arena(tiny_causal_lm: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Client, Path]]:
    folder = tmp_path_factory.mktemp("feedback")
    engine = Engine(load_model(str(tiny_causal_lm)))
    engine.load_adapter("challenger", str(make_adapter(tiny_causal_lm, tmp_path_factory.mktemp("adapter"), seed=4)))
    feedback = FeedbackCallback(folder=folder)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(SECRET_ENV, SECRET)
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
        models = opened(served, (answer_a, answer_b))
        first.add(models["A"]["adapter"])
        adapters = {models[side]["adapter"] for side in "AB"}
        assert len(adapters) == 2 and None in adapters  # one side the base model, the other the challenger
    assert len(first) == 2


def test_nothing_a_client_receives_before_the_vote_names_a_model(arena: tuple[Client, Path]) -> None:
    client, _ = arena
    answer_a, answer_b, served = client.predict(PROMPT, *SETTINGS, api_name="/generate_arena")
    models = opened(served, (answer_a, answer_b))
    challenger = next(model for model in models.values() if model["adapter"])
    visible = json.dumps(served) + "".join(
        base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)).decode("latin-1")
        for side in "AB" for part in served[side]["ticket"].lstrip("~").split("."))
    for fact in (challenger["adapter"], challenger["revision"], "temperature", "base"):
        assert fact not in visible


def test_the_vote_names_the_models_records_both_and_feeds_the_leaderboard(arena: tuple[Client, Path]) -> None:
    client, _ = arena
    for _ in range(6):
        answer_a, answer_b, served = client.predict(PROMPT, *SETTINGS, api_name="/generate_arena")
        models = opened(served, (answer_a, answer_b))
        challenger_side = "A" if models["A"]["adapter"] else "B"
        message = client.predict(PROMPT, answer_a, answer_b, challenger_side, served, api_name="/feedback_arena")
        names = {side: f"{models[side]['adapter']}@{models[side]['revision'][:12]}" if models[side]["adapter"]
                 else f"{models[side]['base']} (base model)" for side in "AB"}
        assert message.startswith("Thanks!")
        assert message.endswith(f"Answer A came from {names['A']}, answer B from {names['B']}.")

    board = client.predict(api_name="/arena_leaderboard")

    assert board["headers"] == list(HEADER)
    (best, other) = board["data"]
    assert best[1].startswith(models[challenger_side]["adapter"]) and best[4:] == ["6", "100%"]
    assert other[1].endswith("(base model)") and other[5] == "0%"
