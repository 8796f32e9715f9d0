"""Many visitors at once, through gradio_client: generations share one batch and still give each
visitor the answer they would get alone; feedback never waits behind generation."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gradio_client import Client

from demos.app import build_app
from demos.quotas import Access, Limits
from hub.feedback.callback import FeedbackCallback
from hub.feedback.tickets import SECRET_ENV
from serving.engine import BASE_LABEL, Engine
from serving.models import load_model
from tests.adapter_factory import make_adapter
from tests.test_app import example_args, serving
from tests.test_app_arena import SECRET, opened
from tests.test_batching import sharp_lm, wait_until  # noqa: F401 - the fixture is used by name

GREEDY = [0, 50, 0.9, 1.0, 24, None]
# (endpoint, inputs, settings): the tweet and summary tabs have adapters of their own, the others
# answer with the base model; settings differ per call; the arena answers twice in one call.
CALLS = [
    ("/generate_tweet", example_args("tweet"), GREEDY),
    ("/generate_tweet", ["Advice for founders"], [0, 50, 0.9, 1.5, 12, None]),
    ("/generate_dialogue_summary", example_args("dialogue_summary"), [0, 50, 0.9, 1.2, 20, None]),
    ("/generate_conversation_starter", example_args("conversation_starter"), [0.9, 40, 0.9, 1.1, 16, 5]),
    ("/generate_elevator_pitch", example_args("elevator_pitch"), GREEDY),
    ("/generate_arena", example_args("arena"), [0, 50, 0.9, 1.1, 10, 3]),
]


@pytest.fixture(scope="module")
def app(sharp_lm: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Client, Engine]]:  # noqa: F811
    root = tmp_path_factory.mktemp("app-adapters")
    engine = Engine(load_model(str(sharp_lm)))
    engine.load_adapter("tweet", str(make_adapter(sharp_lm, root / "tweet", seed=1)))
    engine.load_adapter("dialogue_summary", str(make_adapter(sharp_lm, root / "summary", seed=2)))
    feedback = FeedbackCallback(folder=tmp_path_factory.mktemp("feedback"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(SECRET_ENV, SECRET)  # the key `opened` reads the arena's sealed tickets with
        app = build_app(engine, feedback=feedback, access=Access(limits=Limits.off()))
    with serving(app) as url:
        yield Client(url, verbose=False), engine
    feedback.close(push=False)


def shown(endpoint: str, inputs: list[str], result: tuple) -> tuple[Any, ...]:
    """What a visitor sees of an answer: its text(s) and who served it (the ticket differs per call; the
    arena's sides are sealed in it until the vote)."""
    if endpoint == "/generate_arena":
        answer_a, answer_b, served = result
        models = opened(served, (answer_a, answer_b), prompt=inputs[0])
        return answer_a, answer_b, models["A"]["adapter"], models["B"]["adapter"]
    return result[0], result[1]["label"]


def test_concurrent_generations_with_their_own_adapters_and_settings_match_one_at_a_time(
        app: tuple[Client, Engine]) -> None:
    client, engine = app
    alone = [shown(name, inputs, client.predict(*inputs, *settings, api_name=name))
             for name, inputs, settings in CALLS]
    assert alone[0][1] != BASE_LABEL and alone[4][1] == BASE_LABEL  # an adapter's answer, a base model's
    with engine._generate_lock:  # every call reaches the engine before any of them is decoded
        jobs = [client.submit(*inputs, *settings, api_name=name) for name, inputs, settings in CALLS]
        wait_until(lambda: engine.waiting == len(CALLS))
    together = [shown(name, inputs, job.result(timeout=300))
                for (name, inputs, _), job in zip(CALLS, jobs, strict=True)]
    assert together == alone


def test_feedback_completes_while_every_generation_slot_is_taken(app: tuple[Client, Engine]) -> None:
    client, engine = app
    inputs = example_args("tweet")
    text, served = client.predict(*inputs, *GREEDY, api_name="/generate_tweet")
    with engine._generate_lock:  # no generation can make progress until the block ends
        generations = [client.submit(*inputs, 0, 50, 0.9, 1.0, 64, None, api_name="/generate_tweet")
                       for _ in range(engine.max_batch + 2)]  # more than the generation group admits
        wait_until(lambda: engine.waiting == engine.max_batch)
        rating = client.submit(*inputs, text, 4, 5, 3, 4, served, api_name="/feedback_tweet")
        assert rating.result(timeout=120).startswith("Thanks! Saved your rating")
        assert not any(job.done() for job in generations)
    assert all(job.result(timeout=300)[0] for job in generations)
