"""Which adapter serves each key, while requests still hold the ones a newer revision replaced.

Both backends (`serving.engine.Engine`, `serving.openai_backend.OpenAIBackend`) swap adapters
with this one rule: the swap is immediate, and a replaced adapter is unloaded once the last
request holding it ends.

Example:
    >>> slots = AdapterSlots()
    >>> slots.install("tweet", "v1"), slots.acquire("tweet")
    (None, 'v1')
    >>> slots.install("tweet", "v2")    # v1 is still held: nothing to unload yet
    >>> slots.release("v1")             # ... now it is
    'v1'
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Generic, TypeVar


def adapter_label(ref: str, revision: str) -> str:
    """How an adapter revision is named in served-by boxes, status panels and logs."""
    return f"{ref}@{revision[:12]}"


@dataclass
class ServedAdapter:
    """An adapter revision a backend serves under `key`; each backend adds how it names it."""

    key: str
    """What requests ask for: usually a task slug."""
    ref: str
    """Hub repo id or local folder it came from."""
    revision: str
    """Commit sha (Hub) or content hash (folder) of the loaded files."""

    @property
    def label(self) -> str:
        return adapter_label(self.ref, self.revision)


Held = TypeVar("Held")


class AdapterSlots(Generic[Held]):
    """The adapter serving each key, and the replaced ones that requests still hold.

    `install` makes a new adapter serve its key at once; a request that `acquire`d the old one
    keeps it until it calls `release`. Both return a replaced adapter once nothing holds it any
    more, exactly once, for the caller to unload.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._serving: dict[str, Held] = {}
        self._holders: dict[int, int] = {}
        """id(adapter) -> requests holding it."""
        self._replaced: set[int] = set()
        """ids of adapters no longer serving that requests still hold."""

    def serving(self) -> dict[str, Held]:
        with self._lock:
            return dict(self._serving)

    def acquire(self, key: str | None) -> Held | None:
        """The adapter serving `key` (None: the base model answers), held until `release`."""
        with self._lock:
            adapter = self._serving.get(key) if key is not None else None
            if adapter is not None:
                self._holders[id(adapter)] = self._holders.get(id(adapter), 0) + 1
            return adapter

    def release(self, adapter: Held | None) -> Held | None:
        """Let go of `adapter`; returns it if it was replaced and nothing holds it now."""
        if adapter is None:
            return None
        with self._lock:
            ident = id(adapter)
            self._holders[ident] -= 1
            if self._holders[ident] > 0:
                return None
            del self._holders[ident]
            if ident not in self._replaced:
                return None
            self._replaced.discard(ident)
            return adapter

    def install(self, key: str, adapter: Held) -> Held | None:
        """Serve `adapter` under `key` from now on; returns the one it replaces if nothing holds that."""
        with self._lock:
            old = self._serving.get(key)
            self._serving[key] = adapter
            if old is None or old is adapter:
                return None
            if self._holders.get(id(old)):
                self._replaced.add(id(old))
                return None
            return old
