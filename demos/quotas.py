"""Who is asking (`Visitor`) and how often they may (`Quotas`): per-person and per-IP sliding windows.

A person is a signed-in Hugging Face user, else a Gradio session. Each action (`generation`,
`feedback`) has one limit per person and one per IP address; a call over either is refused
with a sentence saying which limit and when to come back, and is not counted.

Limits are written `N/WINDOW` (`120/hour`, `10/minute`) or `off`, and configured as
`name=N/WINDOW` pairs: `generation`, `generation-per-ip`, `feedback`, `feedback-per-ip`.

Example:
    >>> limits = Limits.parse("generation=2/minute,feedback-per-ip=off")
    >>> str(limits.rates["generation"]), limits.rates["feedback-per-ip"], str(limits.rates["feedback"])
    ('2/minute', None, '240/hour')
    >>> quotas, alice = Quotas(limits), Visitor(session="s1", ip="10.0.0.1")
    >>> for moment in (0.0, 1.0):
    ...     quotas.check("generation", alice, now=moment)
    >>> quotas.check("generation", alice, now=2.0)
    Traceback (most recent call last):
    ...
    demos.quotas.QuotaExceeded: Too many generation requests from you (the limit is 2/minute); try again in 58 seconds.
    >>> quotas.check("generation", alice, now=61.0)     # the window slid past the first call
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from tasks import InvalidInput

WINDOWS = {"second": 1.0, "minute": 60.0, "hour": 3600.0, "day": 86400.0}
ACTIONS = ("generation", "feedback")
_RATE = re.compile(r"^\s*(\d{1,9})\s*/\s*(second|minute|hour|day)s?\s*$")


class QuotaExceeded(InvalidInput):
    """A call over a limit; the message names the limit and when to retry."""


@dataclass(frozen=True)
class Rate:
    """At most `count` calls in any `seconds`-long window."""

    count: int
    seconds: float

    @classmethod
    def parse(cls, text: str) -> Rate | None:
        """`"120/hour"` -> Rate(120, 3600.0); `"off"` -> None. Raises `InvalidInput` for anything else."""
        if text.strip().lower() == "off":
            return None
        match = _RATE.match(text)
        if not match or int(match.group(1)) < 1:
            raise InvalidInput(f"A limit is written N/second, N/minute, N/hour or N/day (N >= 1) or off, "
                               f"got {text!r}.")
        return cls(int(match.group(1)), WINDOWS[match.group(2)])

    def __str__(self) -> str:
        unit = next((name for name, seconds in WINDOWS.items() if seconds == self.seconds), None)
        return f"{self.count}/{unit}" if unit else f"{self.count} per {self.seconds:g} seconds"


DEFAULT_RATES: dict[str, Rate | None] = {
    "generation": Rate(120, 3600), "generation-per-ip": Rate(360, 3600),
    "feedback": Rate(240, 3600), "feedback-per-ip": Rate(720, 3600),
}
"""Generous for a person (a generation every 30 s for an hour), tight for a script; several people
may share one IP address (an office, a campus), so its limits are three times a person's."""


@dataclass(frozen=True)
class Limits:
    """The four limits; None switches one off."""

    rates: dict[str, Rate | None] = field(default_factory=lambda: dict(DEFAULT_RATES))

    @classmethod
    def parse(cls, specs: str | Iterable[str]) -> Limits:
        """Defaults overridden by `name=N/WINDOW` pairs (comma separated, or a list of them)."""
        pairs = specs.split(",") if isinstance(specs, str) else [p for spec in specs for p in spec.split(",")]
        rates = dict(DEFAULT_RATES)
        for pair in filter(str.strip, pairs):
            name, sep, value = pair.partition("=")
            if not sep or name.strip() not in rates:
                raise InvalidInput(f"Limits are given as NAME=N/WINDOW with NAME one of "
                                   f"{', '.join(rates)}, got {pair.strip()!r}.")
            rates[name.strip()] = Rate.parse(value)
        return cls(rates)

    @classmethod
    def off(cls) -> Limits:
        """No limits at all (benchmarks, a machine of your own)."""
        return cls(dict.fromkeys(DEFAULT_RATES))


@dataclass(frozen=True)
class Visitor:
    """Who sent a request: a signed-in username, a Gradio session, an IP address (any may be None)."""

    username: str | None = None
    session: str | None = None
    ip: str | None = None

    @property
    def person(self) -> str | None:
        """The quota key of the person: their username when signed in, else their session."""
        if self.username:
            return f"user:{self.username}"
        return f"session:{self.session}" if self.session else None


def visitor_from(request: Any, username: str | None, *, proxy_hops: int = 0) -> Visitor:
    """The `Visitor` behind a `gr.Request` (None outside Gradio).

    `proxy_hops` is how many proxies in front of the app append to `X-Forwarded-For` (a
    Space: 1). The client address is the entry the outermost of them wrote; entries to its
    left come from the client and could be forged, so they are ignored.
    """
    if request is None:
        return Visitor(username=username)
    client = getattr(request, "client", None)
    ip = getattr(client, "host", None)
    headers = getattr(request, "headers", None) or {}
    forwarded = [part.strip() for part in str(headers.get("x-forwarded-for", ""))[-2048:].split(",")]
    forwarded = [part for part in forwarded if part]
    if proxy_hops > 0 and forwarded:
        ip = forwarded[-min(proxy_hops, len(forwarded))]
    return Visitor(username=username, session=getattr(request, "session_hash", None), ip=ip)


class Quotas:
    """Sliding-window counters for every action, person and IP address; thread-safe.

    At most `max_keys` keys are tracked per limit: idle ones are dropped first, then the
    oldest (a flood of new sessions cannot grow memory without bound; the IP limit still holds).
    """

    def __init__(self, limits: Limits | None = None, *, max_keys: int = 100_000) -> None:
        self.limits = limits or Limits()
        self.max_keys = max_keys
        self._calls: dict[str, dict[str, deque[float]]] = {name: {} for name in self.limits.rates}
        self._lock = threading.Lock()

    def check(self, action: str, visitor: Visitor, *, now: float | None = None) -> None:
        """Count one `action` call by `visitor`, or raise `QuotaExceeded` (and count nothing)."""
        moment = time.monotonic() if now is None else now
        checks = [(action, visitor.person, "you"), (f"{action}-per-ip", visitor.ip, "your IP address")]
        with self._lock:
            windows = []
            for name, key, who in checks:
                rate = self.limits.rates[name]
                if rate is None or key is None:
                    continue
                calls = self._window(name, key, rate, moment)
                if len(calls) >= rate.count:
                    wait = math.ceil(calls[0] + rate.seconds - moment)
                    raise QuotaExceeded(f"Too many {action} requests from {who} (the limit is {rate}); "
                                        f"try again in {_duration(wait)}.")
                windows.append(calls)
            for calls in windows:
                calls.append(moment)

    def _window(self, name: str, key: str, rate: Rate, moment: float) -> deque[float]:
        table = self._calls[name]
        calls = table.get(key)
        if calls is None:
            if len(table) >= self.max_keys:
                self._evict(table, rate, moment)
            calls = table[key] = deque()
        while calls and calls[0] <= moment - rate.seconds:
            calls.popleft()
        return calls

    def _evict(self, table: dict[str, deque[float]], rate: Rate, moment: float) -> None:
        for key in [key for key, calls in table.items() if not calls or calls[-1] <= moment - rate.seconds]:
            del table[key]
        while len(table) >= self.max_keys:
            del table[next(iter(table))]


def _duration(seconds: int) -> str:
    seconds = max(seconds, 1)
    if seconds < 120:
        return f"{seconds} second{'s' if seconds != 1 else ''}"
    if seconds < 7200:
        return f"{math.ceil(seconds / 60)} minutes"
    return f"{math.ceil(seconds / 3600)} hours"


@dataclass(frozen=True)
class Access:
    """How an app treats its visitors: limits, Hugging Face sign-in, proxies in front, queue length."""

    limits: Limits = field(default_factory=Limits)
    login: bool = False
    """Show "Sign in with Hugging Face" (on a Space this needs `hf_oauth: true` in its README)."""
    require_login: bool = False
    """Refuse feedback from visitors who are not signed in (implies `login`)."""
    proxy_hops: int = 0
    """Proxies in front of the app that append to `X-Forwarded-For` (see `visitor_from`)."""
    queue_size: int = 64
    """Requests waiting in Gradio's queue at most; more are refused with "queue is full"."""
