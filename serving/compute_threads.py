"""In a serving process only the thread computing right now runs torch on several CPU threads.

Why: PyTorch's CPU kernels run on OpenMP, and GNU OpenMP keeps a pool of worker threads for every
thread that has ever run a parallel region, for as long as that thread lives. Once the process
holds more OpenMP threads than CPUs, libgomp stops spinning between parallel regions (the
"throttled" spin count, documented with GOMP_SPINCOUNT) and every region pays a futex sleep and
wake-up. Loading the model in the main thread is enough to leave such a pool behind, and the decode
loop runs in another thread. Measured on 2 cores, 63 batch-8 decode steps of the bundled model:
in the main thread 2.0 cores busy and ~10 context switches; in a second thread after the main
thread had computed, 1.3 cores busy, 58,000 context switches and 0.17-0.21 s per step instead of
0.13-0.16 s; in a second thread when the main thread had stayed on one torch thread, the same as
the main thread.

So a serving process calls `reserve()` before it loads a model: the main thread, and every thread
started later, run torch on one thread. The decode loop calls `use_reserved()` when its thread
starts (the thread ends when the work does, and its pool with it); background work that computes
(online updates) runs through `run_parallel`, on a fresh thread that ends with the call.

    >>> from serving import compute_threads
    >>> threads = compute_threads.reserve()   # at start-up, before the model loads
    >>> compute_threads.run_parallel(sum, [1, 2, 3])   # on a fresh thread with the reserved threads
    6
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

_reserved: int | None = None
"""Torch threads for the computing thread; None: `reserve` was not called (nothing changes)."""


def reserve(threads: int | None = None) -> int:
    """Keep `threads` (default: torch's current count) for the computing threads; put the rest on one.

    Call it once, in the main thread, before any model loads. Returns the reserved count.
    """
    import torch

    global _reserved
    _reserved = threads or (_reserved or torch.get_num_threads())
    torch.set_num_threads(1)
    return _reserved


def use_reserved() -> None:
    """The calling thread runs torch on the reserved threads (nothing happens without `reserve`).

    Call it first thing in a thread that computes and then ends; other threads stay on one.
    """
    import torch

    if _reserved is None or _reserved == 1:
        return
    torch.get_num_threads()  # torch sets a thread's count from its default on first use: let that happen now
    torch.set_num_threads(_reserved)  # this thread's OpenMP setting, and torch's default for new threads:
    _on_fresh_thread(torch.set_num_threads, 1)  # put the default back without touching this thread's


def run_parallel(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`function(*args, **kwargs)` on a fresh thread with the reserved torch threads; its result or its error.

    Without `reserve` it runs in the calling thread, as a plain call.
    """
    if _reserved is None:
        return function(*args, **kwargs)

    def call() -> T:
        use_reserved()
        return function(*args, **kwargs)

    return _on_fresh_thread(call)


def _on_fresh_thread(function: Callable[..., T], *args: Any) -> T:
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = function(*args)
        except BaseException as error:  # noqa: BLE001 - handed to the caller's thread
            outcome["error"] = error

    thread = threading.Thread(target=target, name="flywheel-compute", daemon=True)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]
