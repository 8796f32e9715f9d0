"""A serving process takes its start-up objects out of the garbage collector's full passes.

Why: importing torch, transformers and Gradio and loading a model leaves 300,000-500,000 Python
objects that live as long as the process. CPython's oldest-generation collection walks all of them
whenever enough new long-lived objects have piled up (requests, tickets, cached prompts), and
every thread of the process, the decode loop included, stops while it runs. Measured with
`benchmarks/feedback.py --clients 32` and a `gc.callbacks` timer: full collections of 350-725 ms
on the 2-core VM, against a p50 latency of 35-45 ms; the p99 was 187-432 ms, and 117-161 ms with
the start-up heap frozen (clients in one process both times). `gc.freeze()` moves every object
alive now into a permanent generation that no collection walks; objects made later are collected
as before, and a frozen object whose last reference goes is still freed at once (only a reference
cycle among frozen objects would outlive its use, and start-up objects live as long as the
process anyway).

    >>> from serving import startup_heap
    >>> startup_heap.freeze() > 0   # once, after the model loads and the app is built, before serving
    True
"""

from __future__ import annotations

import gc


def freeze() -> int:
    """Collect what start-up left as garbage, then freeze every object alive; return how many are frozen.

    Call it in a serving process once everything that lives as long as the process has been built.
    """
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
