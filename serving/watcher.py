"""Hot reload: poll adapter repos and swap a newer revision into a running engine.

`AdapterWatcher` runs one daemon thread that, every `interval` seconds, asks each adapter
reference (Hub repo id or folder) for its latest revision. A new revision is downloaded and
checked in that thread, then `Engine.load_adapter` swaps it in atomically: requests already
streaming finish on the old adapter, the next ones get the new one. An adapter that is
broken, too large or made for another base model is refused with one log line per revision
and the old one keeps serving; a Hub that is down or hangs is logged once and retried at the
next poll (every Hub call is bounded by `HubLimits`). A pinned adapter (`user/repo@rev`) is
loaded once and never moved. Nothing here ever raises into the serving path.

Example:
    >>> from serving.engine import Engine
    >>> from serving.models import load_model
    >>> engine = Engine(load_model())                                        # doctest: +SKIP
    >>> watcher = AdapterWatcher(engine, {"tweet": "me/flywheel-tweet-sft"}, interval=60)
    ...                                                                      # doctest: +SKIP
    >>> watcher.check_now()          # load what is there now, before serving  # doctest: +SKIP
    {'tweet': 'loaded me/flywheel-tweet-sft@3f2a9c01d2e4'}
    >>> watcher.start()              # then keep polling in the background    # doctest: +SKIP
    >>> watcher.stop()                                                        # doctest: +SKIP
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hub.errors import FlywheelError, first_line
from hub.repos import DEFAULT_LIMITS, AdapterSpec, AdapterTooLarge, HubLimits, latest_revision, resolve_adapter

logger = logging.getLogger(__name__)
LOADED, UNCHANGED, REFUSED, UNREACHABLE = "loaded", "unchanged", "refused", "unreachable"
"""Outcomes of one check, as the first word of the strings `check_now()` returns."""


@dataclass
class WatchState:
    """What the watcher knows about one adapter key (see `AdapterWatcher.status()`)."""

    spec: AdapterSpec
    """Hub repo id or local folder being watched, and its pinned revision if any."""
    serving: str | None = None
    """Revision the engine serves for this key (None: the base model answers)."""
    refused: str | None = None
    """Latest revision that was refused (it is not tried again)."""
    reason: str | None = None
    """Why `refused` was refused."""
    error: str | None = None
    """Last failure to reach the repo, cleared by the next successful check."""
    checked_at: float | None = None
    """`time.time()` of the last check."""


class AdapterWatcher:
    """Keeps the adapters of a running `Engine` at the newest valid revision of their repos.

    Args:
        engine: the engine serving requests; only `load_adapter` and `adapters` are used.
        refs: adapter key (a task slug) -> `AdapterSpec` or its text (`user/repo`, `user/repo@rev`, a folder).
        interval: seconds between polls of the background thread (`start()`).
        limits: timeout and size limits of every Hub call.
    """

    def __init__(self, engine: Any, refs: Mapping[str, AdapterSpec | str], *, interval: float = 60.0,
                 limits: HubLimits = DEFAULT_LIMITS) -> None:
        if interval <= 0:
            raise FlywheelError(f"Poll interval must be a positive number of seconds ({interval}).")
        self.engine = engine
        self.refs = {key: AdapterSpec.of(ref) for key, ref in refs.items()}
        self.interval = float(interval)
        self.limits = limits
        self._states = {key: WatchState(spec=spec) for key, spec in self.refs.items()}
        self._check_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.checks = 0
        """Completed polls (all keys), for tests and status pages."""

    # -- public API ----------------------------------------------------------------------------

    def check_now(self) -> dict[str, str]:
        """Check every adapter once, loading any new revision; return one outcome line per key.

        Outcomes start with `loaded`, `unchanged`, `refused` or `unreachable`. Never raises.
        """
        with self._check_lock:
            outcomes = {key: self._check(key) for key in self.refs}
            self.checks += 1
        return outcomes

    def start(self) -> AdapterWatcher:
        """Poll every `interval` seconds in a daemon thread until `stop()`; returns self."""
        if self._thread is not None and self._thread.is_alive():
            return self
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="flywheel-adapter-watcher", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop polling; waits for a check in progress (at most `timeout` seconds)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout)
            self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def status(self) -> dict[str, dict[str, Any]]:
        """Per key: ref and pin, the revision and label served, the last refusal or error, last check time."""
        served = self.engine.adapters()
        report = {}
        for key, state in self._states.items():
            info = served.get(key)
            report[key] = {
                "ref": state.spec.ref,
                "pinned": state.spec.revision,
                "revision": info.revision if info else None,
                "label": info.label if info else "base model (adapter not loaded)",
                "refused": state.refused,
                "reason": state.reason,
                "error": state.error,
                "checked_at": _iso(state.checked_at),
            }
        return report

    # -- internals -----------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.check_now()
            except Exception:  # noqa: BLE001 - the poller must outlive any bug in one check
                logger.exception("Adapter check failed; trying again in %.0f s", self.interval)

    def _check(self, key: str) -> str:
        state = self._states[key]
        spec, ref = state.spec, state.spec.ref
        state.checked_at = time.time()
        current = self.engine.adapters().get(key)
        state.serving = current.revision if current else None
        settled = state.serving or state.refused
        if spec.revision and settled:  # a pin is resolved once; it never moves
            return f"{UNCHANGED} {ref}@{settled[:12]} (pinned{', refused' if settled == state.refused else ''})"
        revision = None
        try:
            revision = latest_revision(ref, revision=spec.revision, limits=self.limits)
            if revision in (state.serving, state.refused):
                state.error = None
                return f"{UNCHANGED} {ref}@{revision[:12]}" + (" (refused)" if revision == state.refused else "")
            # Download (and find the exact commit) outside the engine; failures here are transient.
            _, revision = resolve_adapter(ref, revision=revision, limits=self.limits)
        except AdapterTooLarge as error:  # a fact about this revision: refuse it, do not fetch it again
            return self._refuse(key, state, revision, error, current)
        except Exception as error:  # noqa: BLE001 - Hub down, repo gone, bad token: keep serving
            return self._unreachable(key, state, error)
        state.error = None
        try:
            info = self.engine.load_adapter(key, ref, revision=revision, limits=self.limits)
        except Exception as error:  # noqa: BLE001 - any refusal keeps the old adapter serving
            return self._refuse(key, state, revision, error, current)
        state.serving, state.refused, state.reason = info.revision, None, None
        if current is not None and current.revision != info.revision:
            logger.info("Switched %s from %s to %s", key, current.label, info.label)
        return f"{LOADED} {info.label}"

    def _refuse(self, key: str, state: WatchState, revision: str, error: BaseException, current: Any) -> str:
        state.error = None
        state.refused, state.reason = revision, first_line(error)
        still = current.label if current else "the base model"
        logger.warning("Refused adapter %s@%s for %s: %s; still serving %s.",
                       state.spec.ref, revision[:12], key, state.reason, still)
        return f"{REFUSED} {state.spec.ref}@{revision[:12]}: {state.reason}"

    def _unreachable(self, key: str, state: WatchState, error: BaseException) -> str:
        message = first_line(error)
        if message != state.error:  # one line per distinct failure, not one per poll
            logger.warning("Cannot check adapter %s for %s: %s; still serving %s.", state.spec.ref, key, message,
                           "revision " + state.serving[:12] if state.serving else "the base model")
        state.error = message
        return f"{UNREACHABLE} {state.spec.ref}: {message}"


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))
