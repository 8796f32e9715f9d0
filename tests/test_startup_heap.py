"""`serving.startup_heap.freeze`: start-up objects leave the collector's passes, start-up garbage does not stay."""

from __future__ import annotations

import gc
import weakref

from serving import startup_heap


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


def test_objects_alive_at_freeze_are_out_of_every_collection_and_garbage_cycles_were_collected_first() -> None:
    kept = [_Node()]
    cycle = _Node()
    cycle.other = _Node()
    cycle.other.other = cycle  # garbage that only the collector frees
    left_over = weakref.ref(cycle)
    del cycle
    try:
        frozen = startup_heap.freeze()
        assert frozen == gc.get_freeze_count() > 0
        assert left_over() is None  # collected, not frozen for the life of the process
        assert not any(tracked is kept for tracked in gc.get_objects())
        later = [_Node()]
        assert any(tracked is later for tracked in gc.get_objects())  # made after: collected as before
    finally:
        gc.unfreeze()  # the test process goes on making and dropping models
