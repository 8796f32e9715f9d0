"""Continuous batching (`serving.batching`): concurrent requests, each with its own adapter and settings,
give the answers they give one at a time; rows join, leave and cancel without disturbing the others."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from serving.batch_rows import BASE_ROW
from serving.batching import Batcher, ModelLock, Request
from serving.engine import Engine, GenerationSettings
from serving.models import load_model
from serving.prefix_cache import PrefixCache
from tasks import TASKS
from tests.adapter_factory import make_adapter

GREEDY = GenerationSettings(temperature=0, repetition_penalty=1.0, max_new_tokens=20)


def settings(**changes: Any) -> GenerationSettings:
    return dataclasses.replace(GREEDY, **changes)


# (adapter key, task slug, inputs, settings): different adapters, prompt lengths, lengths and penalties,
# so rows join with and without padding and leave the batch at different steps.
CASES = [
    (None, "tweet", {"prompt": "Advice"}, GREEDY),
    ("tweet", "tweet", {"prompt": "Advice for founders who ship on Fridays"}, settings(repetition_penalty=1.3)),
    ("summary", "tweet", {"prompt": "cats"}, settings(max_new_tokens=7)),
    ("tweet", "tweet", {"prompt": "x"}, settings(max_new_tokens=31, repetition_penalty=2.0)),
    (None, "dialogue_summary", {"dialogue": "#Person1#: Hi, how are you?\n#Person2#: Fine, thanks, and you?"},
     settings(max_new_tokens=12)),
    ("summary", "tweet", {"prompt": "Advice for entrepreneurs"}, settings(temperature=0.9, top_k=20, top_p=0.8,
                                                                         seed=7)),
    (None, "tweet", {"prompt": "coffee"}, settings(temperature=1.3, top_k=0, top_p=1.0, seed=11)),
    # PEFT cannot mix DoRA per row: these two decode in a batch of their own, beside the others.
    ("dora", "tweet", {"prompt": "Advice"}, GREEDY),
    ("dora", "tweet", {"prompt": "Advice for founders who ship on Fridays"}, settings(max_new_tokens=9)),
]
DORA_CASES = 2


@pytest.fixture(scope="module")
def sharp_lm(tiny_causal_lm: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with its weight matrices scaled up: the plain one answers every prompt with the
    same newlines, this one gives prompt- and adapter-dependent greedy answers that would show a mix-up."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("sharp-lm")
    model = AutoModelForCausalLM.from_pretrained(tiny_causal_lm)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 2:
                parameter.mul_(10)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_causal_lm).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def adapter_folders(sharp_lm: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("batching-adapters")
    return {"tweet": make_adapter(sharp_lm, root / "tweet", seed=1),
            "summary": make_adapter(sharp_lm, root / "summary", seed=2, targets=("q_proj", "v_proj", "o_proj")),
            "dora": make_adapter(sharp_lm, root / "dora", seed=3, targets=("v_proj",), use_dora=True)}


@pytest.fixture(scope="module")
def engine(sharp_lm: Path, adapter_folders: dict[str, Path]) -> Engine:
    engine = Engine(load_model(str(sharp_lm)))
    for key, folder in adapter_folders.items():
        engine.load_adapter(key, str(folder))
    return engine


@pytest.fixture(scope="module")
def alone(engine: Engine) -> list[str]:
    """Each case's answer when it is the only request."""
    return [answer(engine, case) for case in CASES]


def answer(engine: Engine, case: tuple, *, on_piece: Callable[[str], None] | None = None) -> str:
    key, slug, inputs, case_settings = case
    text = ""
    for text in engine.stream(TASKS[slug], inputs, case_settings, adapter=key):
        if on_piece is not None:
            on_piece(text)
    return text


def bare_generate(engine: Engine, case: tuple) -> str:
    """The answer of plain `generate` with the case's adapter set as PEFT's active adapter."""
    import torch

    key, slug, inputs, case_settings = case
    model = engine.model
    encoded = engine.encode(TASKS[slug], inputs)
    with engine._generate_lock, torch.inference_mode():
        if key is None:
            with model.disable_adapter():
                output = model.generate(**encoded, **case_settings.generate_kwargs(),
                                        pad_token_id=engine.tokenizer.pad_token_id)
        else:
            model.set_adapter(engine.adapters()[key].peft_name)
            output = model.generate(**encoded, **case_settings.generate_kwargs(),
                                    pad_token_id=engine.tokenizer.pad_token_id)
    return engine.tokenizer.decode(output[0, encoded["input_ids"].shape[1]:], skip_special_tokens=True)


def wait_until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 120
    while not condition():
        assert time.monotonic() < deadline, "condition never met"
        time.sleep(0.01)


def in_threads(engine: Engine, cases: list[tuple]) -> Callable[[], list[str]]:
    """Start answering every case, each in its own thread; the function returned waits for the answers."""
    results: list[str | BaseException] = [""] * len(cases)

    def run(index: int) -> None:
        try:
            results[index] = answer(engine, cases[index])
        except BaseException as error:  # noqa: BLE001 - re-raised in the test's thread
            results[index] = error

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(cases))]
    for thread in threads:
        thread.start()

    def answers() -> list[str]:
        for thread in threads:
            thread.join()
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return results  # type: ignore[return-value]

    return answers


def run_together(engine: Engine, cases: list[tuple]) -> list[str]:
    """Start every case while the model is held, so all of them join the batch in the same turn."""
    with engine._generate_lock:
        answers = in_threads(engine, cases)
        wait_until(lambda: engine.waiting == len(cases))
    return answers()


@contextmanager
def forward_shapes(model: Any) -> Iterator[list[tuple[int, int]]]:
    """The (rows, positions) of `input_ids` in each forward pass of the model while the block runs."""
    shapes: list[tuple[int, int]] = []
    handle = model.register_forward_pre_hook(
        lambda module, args, kwargs: shapes.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True)
    try:
        yield shapes
    finally:
        handle.remove()


@contextmanager
def batch_sizes(engine: Engine) -> Iterator[list[int]]:
    """The number of rows in each forward pass of the model while the block runs."""
    sizes: list[int] = []
    handle = engine.model.register_forward_pre_hook(
        lambda module, args, kwargs: sizes.append(kwargs["input_ids"].shape[0]), with_kwargs=True)
    try:
        yield sizes
    finally:
        handle.remove()


def test_one_request_alone_gives_what_generate_gives(engine: Engine, alone: list[str]) -> None:
    greedy = [i for i, case in enumerate(CASES) if case[3].temperature == 0]
    assert [alone[i] for i in greedy] == [bare_generate(engine, CASES[i]) for i in greedy]
    assert len(set(alone)) == len(alone)  # adapters and prompts really change the answers


def test_concurrent_requests_with_their_own_adapters_and_settings_match_one_at_a_time(
        engine: Engine, alone: list[str]) -> None:
    with batch_sizes(engine) as sizes:
        together = run_together(engine, CASES)
    assert max(sizes) == len(CASES) - DORA_CASES and DORA_CASES in sizes  # decoded as two batches
    assert together == alone


def test_requests_joining_in_one_turn_are_prefilled_in_one_forward_per_batch(
        engine: Engine, alone: list[str]) -> None:
    greedy = [i for i, case in enumerate(CASES) if case[3].temperature == 0]
    with forward_shapes(engine.model) as shapes:
        together = run_together(engine, [CASES[i] for i in greedy])
    prefills = sorted(rows for rows, positions in shapes if positions > 1)  # a decode step feeds one position
    assert prefills == [DORA_CASES, len(greedy) - DORA_CASES]  # one forward for the mixed adapters, one for DoRA
    assert together == [alone[i] for i in greedy]


def test_rows_join_a_running_batch_and_leave_it_at_their_own_length(engine: Engine, alone: list[str]) -> None:
    running = ("tweet", "tweet", {"prompt": "Advice for entrepreneurs"}, settings(max_new_tokens=40,
                                                                               repetition_penalty=1.3))
    newcomers = [CASES[2], CASES[4]]
    prompt_lengths = [engine.encode(TASKS[slug], inputs)["input_ids"].shape[1]
                      for _, slug, inputs, _ in (running, *newcomers)]
    # They join when the running row's cache holds its prompt and first token: longer than one
    # newcomer's prompt (that one is padded) and shorter than the other's (the batch is padded).
    assert prompt_lengths[1] < prompt_lengths[0] + 1 < prompt_lengths[2]
    paused, resume = threading.Event(), threading.Event()

    def pause_at_the_first_step(module: object, args: tuple, kwargs: dict) -> None:
        if kwargs["input_ids"].shape == (1, 1) and not resume.is_set():
            paused.set()
            resume.wait(timeout=120)

    handle = engine.model.register_forward_pre_hook(pause_at_the_first_step, with_kwargs=True)
    try:
        with batch_sizes(engine) as sizes:
            first = in_threads(engine, [running])
            assert paused.wait(timeout=120)
            later = in_threads(engine, newcomers)
            wait_until(lambda: engine.waiting == len(newcomers))
            resume.set()
            assert later() == [alone[2], alone[4]]
            running_answer = first()[0]
    finally:
        handle.remove()
    assert sizes[:2] == [1, 1] and max(sizes) == 3
    assert running_answer == answer(engine, running)


def test_a_cancelled_row_leaves_and_the_others_finish_unchanged(engine: Engine, alone: list[str]) -> None:
    endless = (None, "tweet", {"prompt": "Advice"}, settings(max_new_tokens=400))
    stream = engine.stream(TASKS["tweet"], endless[2], endless[3])
    with batch_sizes(engine) as sizes:
        next(stream)  # running now
        others = threading.Thread(target=lambda: results.extend(run_together(engine, CASES[:3])))
        results: list[str] = []
        others.start()
        wait_until(lambda: len(sizes) > 3 and sizes[-1] == 4)
        stream.close()  # what Gradio does when the client goes away
        others.join()
    assert results == alone[:3]
    assert len(sizes) < 400


def test_loading_the_first_adapter_mid_batch_leaves_rows_in_flight_unchanged(
        sharp_lm: Path, adapter_folders: dict[str, Path], alone: list[str]) -> None:
    engine = Engine(load_model(str(sharp_lm)))
    case = (None, *CASES[0][1:3], settings(max_new_tokens=400))
    expected = answer(engine, case)
    steps: list[int] = []  # counted inside the model: PEFT's wrapper calls the base model's forward directly
    handle = engine.model.model.embed_tokens.register_forward_hook(lambda *args: steps.append(1))
    try:
        stream = engine.stream(TASKS["tweet"], case[2], case[3])
        text = next(stream)
        engine.load_adapter("tweet", str(adapter_folders["tweet"]))  # wraps the model in PEFT between two steps
        steps_before_the_swap = len(steps)
        for text in stream:  # noqa: B007 - the last value is the whole answer
            pass
    finally:
        handle.remove()
    assert len(steps) > steps_before_the_swap  # the row went on decoding in the wrapped model
    assert text == expected
    assert answer(engine, CASES[1]) == alone[1]


def test_a_failing_request_fails_alone(engine: Engine, alone: list[str]) -> None:
    batcher = Batcher(lambda: engine.model, lock=ModelLock())
    encoded = engine.encode(TASKS["tweet"], CASES[1][2])
    kwargs = {**CASES[1][3].generate_kwargs(), "pad_token_id": engine.tokenizer.pad_token_id}
    good = batcher.submit(Request(encoded, kwargs, adapter=engine.adapters()["tweet"].peft_name, seed=None))
    bad = batcher.submit(Request(encoded, kwargs, adapter="no-such-adapter", seed=None))
    with pytest.raises(ValueError, match="no-such-adapter"):
        list(bad.tokens())
    ids = [token for chunk in good.tokens() for token in chunk]
    assert engine.tokenizer.decode(ids, skip_special_tokens=True) == alone[1]
    assert good.finished.is_set() and bad.finished.is_set()


def test_a_failing_request_prefilled_with_others_fails_alone(engine: Engine, alone: list[str]) -> None:
    lock = ModelLock()
    batcher = Batcher(lambda: engine.model, lock=lock)
    requests = []
    with forward_shapes(engine.model) as shapes:
        with lock:  # all three join the batch in the same turn
            for case, adapter in [(CASES[1], engine.adapters()["tweet"].peft_name), (CASES[1], "no-such-adapter"),
                                  (CASES[0], None)]:
                encoded = engine.encode(TASKS[case[1]], case[2])
                kwargs = {**case[3].generate_kwargs(), "pad_token_id": engine.tokenizer.pad_token_id}
                requests.append(batcher.submit(Request(encoded, kwargs, adapter=adapter, seed=None)))
            wait_until(lambda: batcher.waiting == len(requests))
        good, bad, base = requests
        with pytest.raises(ValueError, match="no-such-adapter"):
            list(bad.tokens())
        answers = [engine.tokenizer.decode([t for chunk in r.tokens() for t in chunk], skip_special_tokens=True)
                   for r in (good, base)]
    assert answers == [alone[1], alone[0]]
    # The forward of all three failed; each was then prefilled alone.
    assert [rows for rows, positions in shapes if positions > 1] == [3, 1, 1, 1]


def test_a_failing_step_fails_its_rows_and_the_next_requests_are_served(engine: Engine, alone: list[str]) -> None:
    from hub.errors import FlywheelError

    def fail_batched_steps(module: object, args: tuple, kwargs: dict) -> None:
        if kwargs["input_ids"].shape[0] > 1:
            raise RuntimeError("out of memory in a batched step")

    handle = engine.model.register_forward_pre_hook(fail_batched_steps, with_kwargs=True)
    try:
        with pytest.raises(FlywheelError, match="Generation failed: out of memory in a batched step"):
            run_together(engine, CASES[:2])
    finally:
        handle.remove()
    assert run_together(engine, CASES[:2]) == alone[:2]


def test_the_model_is_handed_over_between_two_steps(engine: Engine) -> None:
    stream = engine.stream(TASKS["tweet"], {"prompt": "Advice"}, settings(max_new_tokens=400))
    with batch_sizes(engine) as sizes:
        next(stream)
        assert engine._generate_lock.acquire(timeout=120)  # not starved by the decode loop
        held_at = len(sizes)
        engine._generate_lock.release()
        stream.close()
    assert held_at < 400  # handed over while the 400-token answer was still being decoded


def test_seq2seq_requests_at_once_are_served_one_after_another(tiny_seq2seq: Path) -> None:
    engine = Engine(load_model(str(tiny_seq2seq)))
    cases = [(None, "dialogue_summary", {"dialogue": text}, settings(max_new_tokens=8))
             for text in ("#Person1#: Hi", "#Person1#: Hello there #Person2#: Hi")]
    expected = [answer(engine, case) for case in cases]
    assert run_together(engine, cases) == expected


def test_a_task_prompt_prefix_is_prefilled_once_per_adapter_and_the_answers_do_not_change(
        engine: Engine, alone: list[str]) -> None:
    engine._batcher.prefixes = prefixes = PrefixCache()
    tweet = TASKS["tweet"]
    lengths = [engine.encode(tweet, case[2])["input_ids"].shape[1] for case in CASES[:4]]
    shared = engine.shared_prefix(tweet, engine.encode(tweet, CASES[0][2])["input_ids"][0].tolist())
    assert 0 < shared < min(lengths)
    with forward_shapes(engine.model) as shapes:
        answers = [answer(engine, case) for case in CASES[:4]]  # base, tweet, summary, tweet again
    assert answers == alone[:4]
    assert prefixes.computed == 3 and prefixes.adapters() == {
        BASE_ROW, engine.adapters()["tweet"].peft_name, engine.adapters()["summary"].peft_name}
    prefills = [positions for _, positions in shapes if positions > 1]
    assert prefills == [shared, lengths[0] - shared, shared, lengths[1] - shared, shared, lengths[2] - shared,
                        lengths[3] - shared]  # the second tweet request feeds only what follows the prefix


def test_rows_with_and_without_a_cached_prefix_are_prefilled_in_one_forward(engine: Engine, alone: list[str]) -> None:
    lock = ModelLock()
    batcher = Batcher(lambda: engine.model, lock=lock)
    cases = [CASES[1], CASES[4], CASES[0], CASES[1]]  # tweet and dialogue prefixes; the last one without
    shares = [True, True, True, False]
    for case in cases[:3]:  # their prefixes are cached before they are prefilled together
        list(submit(engine, batcher, case, share=True).tokens())
    with forward_shapes(engine.model) as shapes:
        with lock:
            requests = [submit(engine, batcher, case, share=share) for case, share in zip(cases, shares, strict=True)]
            wait_until(lambda: batcher.waiting == len(requests))
        answers = [engine.tokenizer.decode([t for chunk in r.tokens() for t in chunk], skip_special_tokens=True)
                   for r in requests]
    assert answers == [alone[1], alone[4], alone[0], alone[1]]
    assert [rows for rows, positions in shapes if positions > 1] == [len(cases)]


def submit(engine: Engine, batcher: Batcher, case: tuple, *, share: bool) -> Request:
    key, slug, inputs, case_settings = case
    encoded = engine.encode(TASKS[slug], inputs)
    prefix = engine.shared_prefix(TASKS[slug], encoded["input_ids"][0].tolist()) if share else 0
    kwargs = {**case_settings.generate_kwargs(), "pad_token_id": engine.tokenizer.pad_token_id}
    return batcher.submit(Request(encoded, kwargs, adapter=engine.adapters()[key].peft_name if key else None,
                                  seed=case_settings.seed, prefix=prefix))


def test_unloading_an_adapter_drops_its_cached_prefixes(sharp_lm: Path, adapter_folders: dict[str, Path]) -> None:
    engine = Engine(load_model(str(sharp_lm)))
    first = engine.load_adapter("tweet", str(adapter_folders["tweet"]))
    answer(engine, CASES[1])
    assert first.peft_name in engine._batcher.prefixes.adapters()
    second = engine.load_adapter("tweet", str(adapter_folders["summary"]))  # a new adapter under the same key
    answer(engine, CASES[1])
    assert engine._batcher.prefixes.adapters() == {second.peft_name}


def test_a_bug_in_the_loop_fails_the_requests_it_had_taken_instead_of_leaving_them_waiting(
        engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    from hub.errors import FlywheelError

    def broken_join(*args: Any) -> None:
        raise TypeError("a bug while joining")

    monkeypatch.setattr(Batcher, "_join", staticmethod(broken_join))
    failures: list[BaseException] = []

    def call() -> None:
        try:
            answer(engine, CASES[0])
        except FlywheelError as error:
            failures.append(error)

    thread = threading.Thread(target=call)
    thread.start()
    thread.join(timeout=120)
    assert not thread.is_alive(), "the request was left waiting"
    assert len(failures) == 1 and "a bug while joining" in str(failures[0])
