"""Fault injection for the test Hub server (see ``tests/hub_server.py``).

Faults are matched against ``"METHOD /path"`` (path without query string) with
``re.search``. ``Faults.scope`` limits every knob to matching requests; one-shot faults
(``fail_next``/``drop_next``) may carry their own ``match`` instead.

    server.faults.scope = COMMITS         # only commit POSTs are affected from now on
    server.faults.fail_next(2, status=500)
    server.faults.delay = 2.0
    server.faults.down = True              # 503 for everything in scope
    server.faults.drop_all = True          # close the socket without answering
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass

# Handy scopes.
COMMITS = r"^POST /api/(models|datasets|spaces)/[^/]+/[^/]+/commit/"
UPLOADS = r"^POST /api/(models|datasets|spaces)/[^/]+/[^/]+/(preupload|commit)/"
DOWNLOADS = r"^(GET|HEAD) /((datasets|spaces)/)?[^/]+/[^/]+/resolve/"


@dataclass
class Decision:
    """What the server should do with one request before handling it."""

    delay: float = 0.0
    status: int | None = None
    drop: bool = False


@dataclass
class _OneShot:
    remaining: int
    status: int | None  # None means drop the connection
    match: str | None


class Faults:
    """Runtime-controllable failures, safe to change from the test thread at any time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._planned: list[_OneShot] = []
        self.scope: str | None = None
        self.delay: float = 0.0
        self.down: bool = False
        self.drop_all: bool = False
        self.injected: list[str] = []

    def fail_next(self, n: int = 1, status: int = 500, *, match: str | None = None) -> None:
        """Answer the next ``n`` in-scope requests with ``status`` (JSON error body)."""
        with self._lock:
            self._planned.append(_OneShot(n, status, match))

    def drop_next(self, n: int = 1, *, match: str | None = None) -> None:
        """Close the connection of the next ``n`` in-scope requests without answering."""
        with self._lock:
            self._planned.append(_OneShot(n, None, match))

    def pending(self) -> int:
        """How many one-shot faults have not fired yet."""
        with self._lock:
            return sum(p.remaining for p in self._planned)

    def reset(self) -> None:
        """Back to a healthy server (the ``injected`` log is kept)."""
        with self._lock:
            self._planned.clear()
            self.scope, self.delay, self.down, self.drop_all = None, 0.0, False, False

    def decide(self, method: str, path: str) -> Decision:
        """Consume and return the fault (if any) for this request."""
        target = f"{method} {path}"
        in_scope = self.scope is None or re.search(self.scope, target) is not None
        decision = Decision(delay=self.delay if in_scope else 0.0)
        with self._lock:
            if in_scope and self.down:
                decision.status = 503
            elif in_scope and self.drop_all:
                decision.drop = True
            else:
                for planned in self._planned:
                    pattern = planned.match if planned.match is not None else self.scope
                    if pattern is None or re.search(pattern, target):
                        planned.remaining -= 1
                        decision.status, decision.drop = planned.status, planned.status is None
                        break
                self._planned = [p for p in self._planned if p.remaining > 0]
            if decision.status is not None or decision.drop:
                self.injected.append(f"{'drop' if decision.drop else decision.status} {target}")
        return decision
