"""The KV cache of the prompt prefix a task's requests share, computed once per adapter and reused.

Why: every prompt of a tab starts with the same tokens (chat template, system prompt, the task's
instruction up to the first field): 38 of the 44-48 tokens of a tweet prompt with the bundled
model. A prefill is compute-bound (~4-6 ms per token on 2 cores) and every row of the running
batch waits while it runs; with eight visitors, prefills took ~13 % of the wall time. The keys
and values of those shared tokens depend only on the tokens, their positions (0, 1, ...) and the
adapter's weights, so they are computed once per (adapter, prefix) and each new row prefills only
the rest of its prompt (`serving.batch_rows.prefill`).

An adapter's weights never change under its PEFT name (a newer revision or online update loads
under a new name), so an entry stays valid until its adapter is unloaded (`forget`). Entries are
evicted least recently used first beyond `max_entries` (~1.8 MB each for the bundled model's
38-token prefix). Only the decode loop reads and fills the cache; `forget` is called while the
model is held whole (`ModelLock`), so no lock of its own is needed.

    >>> cache = PrefixCache(max_entries=2)
    >>> cache.entries
    0
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

MAX_ENTRIES = 32
"""(adapter, prefix) pairs kept at most."""

Layers = list[tuple[Any, Any]]
"""Keys and values per decoder layer, each [1, heads, prefix tokens, head dim]."""


class PrefixCache:
    """Keys and values of shared prompt prefixes, per adapter, least recently used evicted first."""

    def __init__(self, *, max_entries: int = MAX_ENTRIES) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[str, tuple[int, ...]], Layers] = OrderedDict()
        self.computed = 0
        """Prefixes computed so far (cache misses)."""

    @property
    def entries(self) -> int:
        return len(self._entries)

    def adapters(self) -> set[str]:
        """The adapters (PEFT names; `serving.batch_rows.BASE_ROW` for the base model) with a cached prefix."""
        return {adapter for adapter, _ in self._entries}

    def get(self, adapter: str, prefix: tuple[int, ...], compute: Callable[[], Layers]) -> Layers:
        """The cached layers of `prefix` under `adapter`, or `compute()`'s, stored for the next request."""
        key = (adapter, prefix)
        layers = self._entries.get(key)
        if layers is None:
            layers = compute()
            self.computed += 1
            self._entries[key] = layers
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        self._entries.move_to_end(key)
        return layers

    def forget(self, adapter: str) -> None:
        """Drop every prefix computed with `adapter` (it is being unloaded)."""
        for key in [key for key in self._entries if key[0] == adapter]:
            del self._entries[key]
