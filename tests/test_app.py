"""The suite launched on 127.0.0.1 and driven through gradio_client, as API users would."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from gradio_client import Client

from demos.app import MAX_FILE_SIZE, build_app
from demos.quotas import Access, Limits
from serving.engine import Engine
from serving.models import load_model
from tasks import SLUGS, TASKS

SETTINGS = [0.7, 50, 0.9, 1.1, 8, 1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def serving(app: Any, *, mcp_server: bool = False) -> Iterator[str]:
    """Launch `app` on a free local port (uploads capped as in production); yield its URL."""
    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
               max_file_size=MAX_FILE_SIZE, mcp_server=mcp_server)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        app.close()


@pytest.fixture(scope="module")
def client(tiny_causal_lm: Path) -> Iterator[Client]:
    app = build_app(Engine(load_model(str(tiny_causal_lm))))
    with serving(app) as url:
        client = Client(url, verbose=False)
        client.flywheel_app = app
        yield client


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
        assert set(served["A"]) == set(served["B"]) == {"ticket"}  # blind: the model is sealed in it
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
    # The fixture launches without show_error, so gradio hides why (a non-number for a slider).
    with pytest.raises(Exception, match="upstream Gradio app has raised an exception"):
        client.predict("Advice", "hot", 50, 0.9, 1.1, 8, 1, api_name="/generate_tweet")
    assert client.predict("Advice", *SETTINGS, api_name="/generate_tweet")[0].strip()


def test_failure_inside_generation_is_reported(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import LlamaForCausalLM

    def broken_forward(*args, **kwargs):  # every engine, batched or not, runs the model's forward
        raise RuntimeError("out of memory (simulated)")

    monkeypatch.setattr(LlamaForCausalLM, "forward", broken_forward)
    with pytest.raises(Exception, match="out of memory"):
        client.predict("Advice", *SETTINGS, api_name="/generate_tweet")
    monkeypatch.undo()
    assert client.predict("Advice", *SETTINGS, api_name="/generate_tweet")[0].strip()


def test_an_oversized_seed_is_refused_by_the_ui_the_api_and_the_engine(client: Client) -> None:
    from demos.settings import settings_from_values
    from serving.engine import GenerationSettings
    from tasks import InvalidInput
    from tasks.generation import SEED_MAX

    with pytest.raises(Exception, match="maximum value 9223372036854775807"):
        client.predict("Advice", 0.7, 50, 0.9, 1.1, 8, 10**19, api_name="/generate_tweet")
    with pytest.raises(InvalidInput, match="Seed must be a whole number from 0 to 9223372036854775807"):
        settings_from_values(0.7, 50, 0.9, 1.1, 8, 10**19)
    with pytest.raises(InvalidInput, match="Seed must be"):
        GenerationSettings(seed=-1).validated()
    with pytest.raises(InvalidInput, match="Seed must be"):
        settings_from_values(0.7, 50, 0.9, 1.1, 8, float("inf"))
    with pytest.raises(InvalidInput, match="must be numbers"):
        settings_from_values(0.7, 50, 0.9, 1.1, 8, "soon")
    assert settings_from_values(0.7, 50, 0.9, 1.1, 8, SEED_MAX).seed == SEED_MAX
    assert client.predict("Advice", 0.7, 50, 0.9, 1.1, 8, SEED_MAX - 2**11, api_name="/generate_tweet")[0]


def test_sliders_show_the_limits_the_api_enforces() -> None:
    import gradio as gr

    from demos.settings import build_settings_panel
    from serving.engine import GenerationSettings
    from tasks.generation import GENERATION_LIMITS

    with gr.Blocks():
        panel = build_settings_panel(GenerationSettings())
    for name, limit in GENERATION_LIMITS.items():
        control = getattr(panel, name)
        assert (control.minimum, control.maximum) == (limit.minimum, limit.maximum), name
        with pytest.raises(Exception, match=limit.label):
            GenerationSettings(**{name: limit.maximum * 2 + 1}).validated()


@contextmanager
def forward_counter(engine: Engine) -> Iterator[list[int]]:
    """Counts the model's forward passes (one per generated token) while the block runs."""
    calls: list[int] = []
    handle = engine.model.register_forward_hook(lambda *args: calls.append(1))
    try:
        yield calls
    finally:
        handle.remove()


def wait_until_still(calls: list[int], *, quiet: float = 3.0, timeout: float = 300) -> None:
    """Wait until no forward pass happened for `quiet` seconds: generation has stopped, early or not."""
    import time

    deadline, seen, since = time.monotonic() + timeout, -1, time.monotonic()
    while time.monotonic() - since < quiet:
        assert time.monotonic() < deadline, "generation never stopped"
        if len(calls) != seen:
            seen, since = len(calls), time.monotonic()
        time.sleep(0.1)


def test_generation_stops_when_its_consumer_goes_away(tiny_causal_lm: Path) -> None:
    from demos.handlers import Suite
    from serving.engine import GenerationSettings

    engine = Engine(load_model(str(tiny_causal_lm)))
    settings = GenerationSettings(temperature=0, repetition_penalty=1.0, max_new_tokens=48)
    list(engine.stream(TASKS["tweet"], {"prompt": "Advice"}, settings))  # the task's prompt prefix is cached now
    with forward_counter(engine) as calls:
        assert list(engine.stream(TASKS["tweet"], {"prompt": "Advice"}, settings))
    assert len(calls) == 48  # without a consumer going away, all 48 tokens are generated

    with forward_counter(engine) as calls:
        stream = Suite(engine).generate("tweet", ["Advice", 0, 50, 0.9, 1.0, 48, None])
        next(stream)
        stream.close()  # what Gradio does when the client disconnects or cancels
        wait_until_still(calls)
    assert len(calls) < 48


def test_a_streaming_answer_is_sent_at_most_every_stream_every_seconds(tiny_causal_lm: Path) -> None:
    import time

    from demos.handlers import Suite

    loaded = load_model(str(tiny_causal_lm))
    engine = Engine(loaded)
    values = ["Advice", 0, 50, 0.9, 1.0, 24, None]
    fast = [text for text, _ in Suite(engine, stream_every=0).generate("tweet", values)]
    # A model that makes ~20 tokens a second: the stream, which hands over every token generated since
    # it was last read, then yields them one by one (the reader always waits for the next).
    loaded.model.register_forward_pre_hook(lambda module, args: time.sleep(0.05))
    every_token = [text for text, _ in Suite(engine, stream_every=0).generate("tweet", values)]
    assert len(every_token) > 3
    started = time.monotonic()
    thinned = [text for text, _ in Suite(engine, stream_every=0.2).generate("tweet", values)]
    seconds = time.monotonic() - started
    # The first piece at once, then one update per 0.2 s at most; the final text always.
    assert thinned[0] == every_token[0] and thinned[-1] == every_token[-1] == fast[-1]
    assert 2 <= len(thinned) <= seconds / 0.2 + 2 and len(thinned) < len(every_token)
    assert all(later.startswith(earlier) for earlier, later in zip(thinned, thinned[1:], strict=False))


def test_generation_stops_when_the_client_cancels(client: Client) -> None:
    import time

    engine = client.flywheel_app.flywheel_suite.engine
    with forward_counter(engine) as calls:
        job = client.submit("Advice", 0, 50, 0.9, 1.0, 1024, 1, api_name="/generate_tweet")
        deadline = time.monotonic() + 300
        while not job.outputs():
            assert time.monotonic() < deadline, "no output streamed"
            time.sleep(0.05)
        job.cancel()
        wait_until_still(calls)
    assert 0 < len(calls) < 1024


def test_generation_quotas_per_person_and_per_ip(tiny_causal_lm: Path) -> None:
    access = Access(limits=Limits.parse("generation=2/hour,generation-per-ip=3/hour"))
    with serving(build_app(Engine(load_model(str(tiny_causal_lm))), access=access)) as url:
        alice = Client(url, verbose=False)
        for _ in range(2):
            assert alice.predict("Advice", *SETTINGS, api_name="/generate_tweet")[0]
        with pytest.raises(Exception, match=r"Too many generation requests from you \(the limit is 2/hour\)"):
            alice.predict("Advice", *SETTINGS, api_name="/generate_tweet")
        bob = Client(url, verbose=False)  # another session from the same address
        assert bob.predict("Advice", *SETTINGS, api_name="/generate_arena")[0]
        with pytest.raises(Exception, match="Too many generation requests from your IP address"):
            bob.predict("Advice", *SETTINGS, api_name="/generate_tweet")


@pytest.mark.parametrize(("argv", "message"), [
    (["--limit", "generations=5/hour"], "NAME one of generation"),
    (["--limit", "generation=5/fortnight"], "N/second, N/minute"),
    (["--queue-size", "0"], "--queue-size must be at least 1"),
    (["--require-login"], "--require-login: off a Space, Gradio signs you in as this machine's"),
])
def test_bad_safety_flags_end_in_one_line_before_the_model_loads(argv: list[str], message: str,
                                                                 capsys: pytest.CaptureFixture[str],
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 tmp_path: Path) -> None:
    from huggingface_hub import constants

    from demos.__main__ import main

    monkeypatch.delenv("HF_TOKEN", raising=False)  # no Hugging Face account on this machine
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "stored_tokens"))
    assert main([*argv, "--model", str(tmp_path / "never-loaded")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
