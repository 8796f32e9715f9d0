"""The suite launched on 127.0.0.1 and driven through gradio_client, as API users would."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from gradio_client import Client

from demos.app import build_app
from serving.engine import Engine
from serving.models import load_model
from tasks import SLUGS, TASKS

SETTINGS = [0.7, 50, 0.9, 1.1, 8, 1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def client(tiny_causal_lm: Path) -> Iterator[Client]:
    app = build_app(Engine(load_model(str(tiny_causal_lm))))
    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield Client(f"http://127.0.0.1:{port}/", verbose=False)
    finally:
        app.close()


def example_args(slug: str) -> list[str]:
    task = TASKS[slug]
    return [task.examples[0][name] for name in task.field_names]


def test_every_task_has_named_generate_and_feedback_endpoints(client: Client) -> None:
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    for slug in SLUGS:
        assert f"/generate_{slug}" in endpoints
        assert f"/feedback_{slug}" in endpoints


@pytest.mark.parametrize("slug", SLUGS)
def test_generate_endpoint_returns_text(client: Client, slug: str) -> None:
    result = client.predict(*example_args(slug), *SETTINGS, api_name=f"/generate_{slug}")
    if slug == "arena":
        answer_a, answer_b, served = result
        assert answer_a.strip() and answer_b.strip()
        assert served["A"]["label"] == "base model"
    else:
        text, served = result[0], result[1]
        assert isinstance(text, str) and text.strip()
        assert served["label"] == "base model"
        assert served["generation"]["max_new_tokens"] == SETTINGS[4]


def test_same_seed_gives_same_answer(client: Client) -> None:
    first = client.predict(*example_args("tweet"), *SETTINGS, api_name="/generate_tweet")[0]
    second = client.predict(*example_args("tweet"), *SETTINGS, api_name="/generate_tweet")[0]
    assert first == second


@pytest.mark.parametrize(
    "bad, message",
    [
        ("", "empty"),
        ("   \n\t ", "empty"),
        ("\x00\x01\x02\x1b", "empty"),
        ("x" * 281, "too long"),
    ],
)
def test_bad_input_is_refused_and_app_keeps_serving(client: Client, bad: str, message: str) -> None:
    with pytest.raises(Exception, match=message):
        client.predict(bad, *SETTINGS, api_name="/generate_tweet")
    assert client.predict("Advice for founders", *SETTINGS, api_name="/generate_tweet")[0].strip()


def test_bad_settings_are_refused(client: Client) -> None:
    with pytest.raises(Exception, match="maximum"):
        client.predict("Advice", 9.0, 50, 0.9, 1.1, 8, 1, api_name="/generate_tweet")
    with pytest.raises(Exception):  # noqa: B017 - gradio's own message for a non-number
        client.predict("Advice", "hot", 50, 0.9, 1.1, 8, 1, api_name="/generate_tweet")
    assert client.predict("Advice", *SETTINGS, api_name="/generate_tweet")[0].strip()


def test_failure_inside_generation_is_reported(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import LlamaForCausalLM

    def broken_generate(*args, **kwargs):
        raise RuntimeError("out of memory (simulated)")

    monkeypatch.setattr(LlamaForCausalLM, "generate", broken_generate)
    with pytest.raises(Exception, match="out of memory"):
        client.predict("Advice", *SETTINGS, api_name="/generate_tweet")
    monkeypatch.undo()
    assert client.predict("Advice", *SETTINGS, api_name="/generate_tweet")[0].strip()
