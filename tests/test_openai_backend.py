"""The openai backend against a real OpenAI-compatible server on this CPU: `transformers serve`.

Run for real here: connecting and choosing the base model, streaming, every generation setting
(the server's answers equal transformers' own `generate` with the same settings and seed), bad
URLs and servers that are not OpenAI-compatible, a server killed in the middle of an answer,
tickets, quotas and feedback through the suite, the Space variable, and the LoRA call path up to
the server's answer. `transformers serve` has no dynamic LoRA endpoints, so a *successful* LoRA
load is only checked against vLLM's documented request shape (`test_lora_requests_...`).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import gradio as gr
import httpx
import pytest

from demos.__main__ import main as demos_main
from demos.handlers import Suite
from demos.quotas import Limits, Quotas, Visitor
from hub.errors import FlywheelError
from hub.feedback.callback import FeedbackCallback
from hub.space import BACKEND, LORA_SOURCE, SpaceConfig
from serving.backends import LOCAL, OPENAI, BackendSpec, open_backend
from serving.engine import BASE_LABEL, GenerationSettings
from serving.openai_backend import (
    GENERATION_CONFIG,
    LOAD_LORA,
    UNLOAD_LORA,
    VLLM_FIELDS,
    OpenAIBackend,
    chat_request,
    load_lora_request,
    lora_name_for,
    unload_lora_request,
)
from serving.slots import AdapterSlots
from serving.watcher import AdapterWatcher
from spaces.app import create_app
from tasks import InvalidInput, get_task
from tests.adapter_factory import adapter_files, make_adapter, other_base
from tests.test_app import free_port

TWEET = get_task("tweet")
INPUTS = dict(TWEET.examples[0])
KEY = b"k" * 32


class ServeProcess:
    """`transformers serve` pinned to one local model folder, offline, on a free port."""

    def __init__(self, model: Path, log: Path) -> None:
        self.model = model
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log = log
        command = [str(Path(sys.executable).with_name("transformers")), "serve", str(model), "--host", "127.0.0.1",
                   "--port", self.url.rsplit(":", 1)[1], "--device", "cpu"]
        with log.open("wb") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
        self._wait_until_healthy()

    def _wait_until_healthy(self, limit: float = 300.0) -> None:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"transformers serve did not start:\n{self.log.read_text()[-3000:]}")

    def requests(self) -> str:
        """The server's access log so far."""
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture(scope="module")
def server(tiny_causal_lm: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    served = ServeProcess(tiny_causal_lm, tmp_path_factory.mktemp("serve") / "serve.log")
    yield served
    served.stop()


@pytest.fixture
def backend(server: ServeProcess) -> Iterator[OpenAIBackend]:
    connected = OpenAIBackend.connect(server.url)
    yield connected
    connected.close()


def reference_answer(model_dir: Path, settings: GenerationSettings) -> str:
    """What transformers' own `generate` answers to the tweet example with these settings."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    encoded = tokenizer.apply_chat_template(TWEET.messages(INPUTS), add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)
    if settings.seed is not None:
        torch.manual_seed(settings.seed)
    output = model.generate(**encoded, **settings.generate_kwargs(), pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(output[0, encoded["input_ids"].shape[1]:], skip_special_tokens=True)


def values(settings: GenerationSettings) -> list:
    """A tab's raw values: the task's inputs, then the six settings."""
    return [*INPUTS.values(), settings.temperature, settings.top_k, settings.top_p, settings.repetition_penalty,
            settings.max_new_tokens, settings.seed]


# -- streaming and settings -----------------------------------------------------------------------

@pytest.mark.parametrize("settings", [
    # 1.0 would repeat newlines; 11 tokens end on a whole character (a stream holds back half of one)
    GenerationSettings(temperature=0.0, repetition_penalty=2.5, max_new_tokens=11),
    GenerationSettings(temperature=0.9, top_k=7, top_p=0.8, repetition_penalty=1.2, max_new_tokens=16, seed=5),
    GenerationSettings(temperature=1.5, top_k=0, top_p=1.0, repetition_penalty=1.0, max_new_tokens=16, seed=11),
], ids=["greedy", "top-k-top-p", "pure-sampling"])
def test_the_server_streams_what_generate_answers_with_every_setting(backend: OpenAIBackend, server: ServeProcess,
                                                                     settings: GenerationSettings) -> None:
    pieces = list(backend.stream(TWEET, INPUTS, settings))
    assert len(pieces) > 1
    assert all(later.startswith(earlier) for earlier, later in zip(pieces, pieces[1:], strict=False))
    assert pieces[-1] == reference_answer(server.model, settings)


def test_connecting_picks_the_served_model_and_how_it_takes_sampling_settings(backend: OpenAIBackend,
                                                                              server: ServeProcess) -> None:
    assert backend.base_id == str(server.model)
    assert backend.sampling == GENERATION_CONFIG  # transformers serve refuses vLLM's top_k field
    assert backend.describe(None) == f"openai {server.url}, base model"
    sampled = GenerationSettings(temperature=1.5, top_k=0, top_p=1.0, max_new_tokens=16, seed=11)
    answers = {seed: list(backend.stream(TWEET, INPUTS, replace(sampled, seed=seed)))[-1] for seed in (11, 12)}
    assert answers[11] != answers[12]  # the seed reaches the server


def test_a_model_the_server_does_not_serve_is_refused(server: ServeProcess) -> None:
    with pytest.raises(FlywheelError, match=r"serves .*tiny.*, not other/model"):
        OpenAIBackend.connect(server.url, model="other/model")


# -- bad URLs -------------------------------------------------------------------------------------

def test_the_cli_refuses_an_unreachable_server_in_one_line(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "demos", "--backend", "openai=http://127.0.0.1:1"],
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "FLYWHEEL_HOME": str(tmp_path)})
    assert result.returncode == 2
    assert result.stderr.startswith("error: Cannot reach the generation server at http://127.0.0.1:1 (")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


@pytest.mark.parametrize("backend_text, message", [
    ("nonsense", "Backend must be `local` or `openai=URL`"),
    ("openai=ftp://example.org", "Backend URL must be http"),
    ("openai=", "Backend URL must be http"),
])
def test_the_cli_refuses_a_malformed_backend_in_one_line(backend_text: str, message: str, capsys) -> None:
    assert demos_main(["--backend", backend_text]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and err.count("\n") == 1


def test_a_server_that_is_not_openai_compatible_is_refused(hub_server) -> None:
    with pytest.raises(FlywheelError, match=r"does not answer GET /v1/models like an OpenAI-compatible server"):
        OpenAIBackend.connect(hub_server.url)


def test_backend_specs() -> None:
    assert BackendSpec.parse(None) == BackendSpec.parse("") == BackendSpec.parse(LOCAL) == BackendSpec()
    spec = BackendSpec.parse(" openai=http://gpu-box:8000/v1/ ")
    assert (spec.kind, spec.url, str(spec)) == (OPENAI, "http://gpu-box:8000", "openai=http://gpu-box:8000")
    with pytest.raises(InvalidInput, match="Backend URL must be"):
        BackendSpec.parse("openai=http://host:8000/?x=1")
    with pytest.raises(InvalidInput, match="LoRA source must be cache or hub"):
        open_backend("openai=http://127.0.0.1:1", lora_source="s3")


# -- a server that dies ---------------------------------------------------------------------------

def test_a_server_killed_in_the_middle_of_an_answer_gives_a_clear_message(tiny_causal_lm: Path,
                                                                           tmp_path: Path) -> None:
    doomed = ServeProcess(tiny_causal_lm, tmp_path / "serve.log")
    try:
        suite = Suite(OpenAIBackend.connect(doomed.url), key=KEY)
        long_answer = GenerationSettings(temperature=0.0, repetition_penalty=1.0, max_new_tokens=1024)
        outputs = suite.generate("tweet", values(long_answer))
        text, served = next(outputs)
        assert text and "ticket" not in served
        doomed.kill()  # the server needs seconds for 1024 tokens; it has sent a few
        with pytest.raises(gr.Error, match=r"The generation server at http://127\.0\.0\.1:\d+ stopped in the "
                                           r"middle of the answer \(.+\); please try again\."):
            for _, served in outputs:
                assert "ticket" not in served  # a partial answer is never open to feedback
        with pytest.raises(gr.Error, match="Cannot reach the generation server"):
            list(suite.generate("tweet", values(long_answer)))
    finally:
        doomed.stop()


# -- the suite: tickets, quotas, feedback ---------------------------------------------------------

def test_tickets_quotas_and_feedback_work_the_same_with_the_openai_backend(backend: OpenAIBackend,
                                                                          server: ServeProcess,
                                                                          tmp_path: Path) -> None:
    visitor = Visitor(session="s1", ip="10.0.0.1")
    with FeedbackCallback(folder=tmp_path) as feedback:
        suite = Suite(backend, feedback=feedback, quotas=Quotas(Limits.parse("generation=1/hour")), key=KEY)
        settings = GenerationSettings(max_new_tokens=8, seed=3)
        text, served = list(suite.generate("tweet", values(settings), visitor=visitor))[-1]
        assert served["base"] == str(server.model) and served["label"] == BASE_LABEL
        assert served["backend"] == f"openai {server.url}, base model" and served["ticket"]
        ratings = {"relevance": 5, "clarity": 4, "originality": 3, "engagement": 2}
        confirmation = asyncio.run(suite.desk.record("tweet", list(INPUTS.values()), served, visitor,
                                                     kind="rating", completion=text, ratings=ratings,
                                                     reward=TWEET.reward_from_ratings(ratings)))
        assert confirmation.startswith("Thanks!")
        with pytest.raises(gr.Error, match="already has your rating"):
            asyncio.run(suite.desk.record("tweet", list(INPUTS.values()), served, visitor, kind="rating",
                                          completion=text, ratings=ratings,
                                          reward=TWEET.reward_from_ratings(ratings)))
        with pytest.raises(gr.Error, match=r"Too many generation requests from you"):
            list(suite.generate("tweet", values(settings), visitor=visitor))
    rows = [json.loads(line) for file in (tmp_path / "data" / "tweet").rglob("*.jsonl")
            for line in file.read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["completion"] == text
    assert rows[0]["model"] == {"base": str(server.model), "adapter": None, "revision": None}
    assert rows[0]["generation"]["seed"] == 3


# -- LoRA adapters --------------------------------------------------------------------------------

def test_lora_requests_match_vllms_documented_shape() -> None:
    """Checked against vLLM's docs only ("Dynamically serving LoRA Adapters", "Extra Parameters")."""
    assert (LOAD_LORA, UNLOAD_LORA) == ("/v1/load_lora_adapter", "/v1/unload_lora_adapter")
    assert load_lora_request("sql_adapter", "/path/to/sql-lora-adapter") == {
        "lora_name": "sql_adapter", "lora_path": "/path/to/sql-lora-adapter"}
    assert unload_lora_request("sql_adapter") == {"lora_name": "sql_adapter"}
    body = chat_request("flywheel-tweet-3f2a9c01d2e4", [{"role": "user", "content": "Hi"}],
                        GenerationSettings(top_k=0, repetition_penalty=1.3, seed=7), sampling=VLLM_FIELDS)
    assert body["model"] == "flywheel-tweet-3f2a9c01d2e4" and body["stream"] is True
    assert {key: body[key] for key in ("max_tokens", "temperature", "top_p", "seed", "top_k", "repetition_penalty")} \
        == {"max_tokens": 96, "temperature": 0.7, "top_p": 0.9, "seed": 7, "top_k": -1, "repetition_penalty": 1.3}
    assert lora_name_for("dialogue_summary", "3f2a9c01d2e4aaaa") == "flywheel-dialogue_summary-3f2a9c01d2e4"


def test_a_server_without_dynamic_lora_endpoints_refuses_the_adapter_and_the_base_model_keeps_answering(
        backend: OpenAIBackend, server: ServeProcess, tiny_causal_lm: Path, tmp_path: Path) -> None:
    adapter = make_adapter(tiny_causal_lm, tmp_path / "adapter", seed=1)
    watcher = AdapterWatcher(backend, {"tweet": str(adapter)}, interval=60)
    outcome = watcher.check_now()["tweet"]
    assert outcome.startswith("refused") and "(HTTP 404)" in outcome
    assert "it has no /v1/load_lora_adapter" in outcome and "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True" in outcome
    assert "POST /v1/load_lora_adapter HTTP/1.1\" 404" in server.requests()  # the documented path was asked
    assert backend.adapters() == {} and backend.label_for("tweet") == BASE_LABEL
    assert watcher.status()["tweet"]["refused"] is not None
    served: list = []
    answer = list(backend.stream(TWEET, INPUTS, GenerationSettings(max_new_tokens=4), adapter="tweet",
                                 on_start=served.append))
    assert answer and served == [None]


def test_adapters_are_checked_here_before_the_server_is_asked(backend: OpenAIBackend, server: ServeProcess,
                                                              tiny_causal_lm: Path, tmp_path: Path) -> None:
    folder = tmp_path / "other-base"
    folder.mkdir()
    for name, data in other_base(adapter_files(make_adapter(tiny_causal_lm, tmp_path / "a", seed=2))).items():
        (folder / name).write_bytes(data)
    asked = server.requests().count("/v1/load_lora_adapter")
    with pytest.raises(FlywheelError, match="was trained on EleutherAI/gpt-neo-125m"):
        backend.load_adapter("tweet", str(folder))
    assert server.requests().count("/v1/load_lora_adapter") == asked


def test_adapter_slots_unload_a_replaced_adapter_once_its_last_request_ends() -> None:
    slots: AdapterSlots[object] = AdapterSlots()
    first, second, third = object(), object(), object()
    assert slots.install("tweet", first) is None and slots.acquire("detox") is None and slots.release(None) is None
    held_twice = [slots.acquire("tweet"), slots.acquire("tweet")]
    assert held_twice == [first, first]
    assert slots.install("tweet", second) is None  # still held: not unloaded yet
    assert slots.acquire("tweet") is second and slots.serving() == {"tweet": second}
    assert slots.release(first) is None  # one request still holds it
    assert slots.release(first) is first  # the last one: unload it now, once
    assert slots.release(second) is None  # serving, so never unloaded
    assert slots.install("tweet", third) is second  # nobody holds it: unload at once


# -- the Space ------------------------------------------------------------------------------------

def test_the_space_generates_on_the_server_named_by_its_variable(server: ServeProcess) -> None:
    config = SpaceConfig.from_env({BACKEND: f"openai={server.url}", LORA_SOURCE: "hub"})
    assert (config.backend, config.lora_source) == (f"openai={server.url}", "hub")
    assert config.to_variables()[BACKEND] == f"openai={server.url}"
    space = create_app(config)
    try:
        assert isinstance(space.engine, OpenAIBackend) and space.engine.base_id == str(server.model)
        assert space.engine.lora_source == "hub"
    finally:
        space.close()
    with pytest.raises(FlywheelError, match=r"^FLYWHEEL_BACKEND / FLYWHEEL_LORA_SOURCE: Backend must be"):
        create_app(SpaceConfig(backend="vllm"))
