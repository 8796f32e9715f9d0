"""serving.compute_threads: after `reserve`, only the decode loop and `run_parallel` jobs compute on several threads."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from serving import compute_threads
from serving.engine import Engine, GenerationSettings
from serving.models import load_model
from tasks import get_task


@pytest.fixture()
def reserved_two() -> Iterator[None]:
    """`reserve(2)` for one test; torch's thread count and the module's state are put back after."""
    threads, saved = torch.get_num_threads(), compute_threads._reserved
    compute_threads._reserved = None
    assert compute_threads.reserve(2) == 2
    yield
    compute_threads._reserved = saved
    torch.set_num_threads(threads)


def threads_in_new_thread() -> int:
    seen: list[int] = []
    thread = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    return seen[0]


def test_reserve_puts_the_main_thread_and_new_threads_on_one(reserved_two: None) -> None:
    assert torch.get_num_threads() == 1
    assert threads_in_new_thread() == 1
    assert compute_threads.run_parallel(torch.get_num_threads) == 2
    assert threads_in_new_thread() == 1  # the job's count did not become the default
    assert torch.get_num_threads() == 1


def test_run_parallel_returns_results_and_raises_errors_in_the_caller(reserved_two: None) -> None:
    assert compute_threads.run_parallel(sum, [1, 2, 3]) == 6

    def fails() -> None:
        raise ValueError("bad job")

    with pytest.raises(ValueError, match="bad job"):
        compute_threads.run_parallel(fails)


def test_without_reserve_nothing_changes() -> None:
    saved = compute_threads._reserved
    compute_threads._reserved = None
    try:
        threads = torch.get_num_threads()
        compute_threads.use_reserved()
        assert compute_threads.run_parallel(lambda: threading.current_thread()) is threading.current_thread()
        assert torch.get_num_threads() == threads
    finally:
        compute_threads._reserved = saved


def test_the_decode_loop_computes_on_the_reserved_threads(reserved_two: None, tiny_causal_lm: Path) -> None:
    engine = Engine(load_model(str(tiny_causal_lm)))
    seen: list[int] = []

    def record(module: Any, args: Any, kwargs: Any) -> None:
        seen.append(torch.get_num_threads())

    engine.model.register_forward_pre_hook(record, with_kwargs=True)
    answer = list(engine.stream(get_task("tweet"), {"prompt": "Advice"}, GenerationSettings(max_new_tokens=3)))
    assert answer and seen and set(seen) == {2}
    assert torch.get_num_threads() == 1 and threads_in_new_thread() == 1
