"""Uploading the feedback folder to a Hub dataset repo, in the background, whatever the Hub does.

`HubSync` keeps trying to create the repo (so a Hub that is down when the app starts only
delays uploads) and then runs a `FeedbackScheduler`: huggingface_hub's `CommitScheduler`
with these changes, which make it safe for append-only JSONL written by several processes:

- What was pushed is kept in `<folder>/.flywheel-sync/` (size per file; see
  `hub.feedback.sync_state`), so a restart, even after `kill -9`, pushes exactly the rows that
  had not reached the Hub yet; the stock scheduler keeps this in memory and re-uploads
  everything after a restart. A repo deleted (and maybe created again) is recognised by its
  creation time: it is recreated if needed and gets every row again.
- A push holds a file lock, so app processes sharing one folder never push stale copies
  over each other, and each uploads a file only up to its last complete line.
- Failures (5xx, timeouts, refused connections) are logged once, without the token, and
  retried at the next interval; every request of a push has a timeout, so a Hub that hangs
  cannot stall uploads forever, and every commit names its parent, so a timed-out commit
  that the Hub applies late cannot overwrite newer rows.
- At most one push waits behind the running one, so a long outage cannot pile up pushes.
- Sync health (last push, rows waiting, last error) is kept on disk for the status panel and
  `python -m hub feedback stats`; `close()` tries a last connection and push at once.

Example:
    >>> sync = HubSync(folder=Path("feedback"), repo_id="me/flywheel-feedback", every=5)  # doctest: +SKIP
    >>> sync.push(timeout=60)                  # upload now instead of waiting   # doctest: +SKIP
    True
    >>> sync.close()                           # last push, then stop            # doctest: +SKIP
    >>> describe_error(RuntimeError("401: bad token hf_AbCdEf123456\\nmore"))  # what gets logged
    'RuntimeError: 401: bad token hf_***'
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout
from huggingface_hub import CommitOperationAdd, CommitScheduler, HfApi, get_token
from huggingface_hub._commit_scheduler import PartialFileIO
from huggingface_hub.errors import RepositoryNotFoundError

from hub.feedback.sync_state import PushRecord, SyncHealth, SyncState
from tasks.base import first_line

logger = logging.getLogger(__name__)

DEFAULT_REQUEST_TIMEOUT = 60.0
"""Seconds any one Hub request of an upload may take (connect, send or wait for the answer)."""
_TIMEOUT: ContextVar[float | None] = ContextVar("flywheel_hub_timeout", default=None)


class FeedbackScheduler(CommitScheduler):
    """A `CommitScheduler` for the feedback folder: resumable, multi-process safe, never raising.

    Construction calls `create_repo` and raises if the Hub cannot be reached; `HubSync`
    retries it. Counters `commits` and `rows_pushed` and `last_error` describe progress.
    """

    def __init__(self, *, repo_id: str, folder_path: Path, every: float, private: bool,
                 token: str | None = None, request_timeout: float = 60.0,
                 hf_api: HfApi | None = None) -> None:
        api = hf_api or HfApi(token=token)
        folder = Path(folder_path).expanduser().resolve()
        self.state = SyncState(folder=folder, endpoint=api.endpoint, repo_id=repo_id)
        self._secret = token or api.token or get_token()
        self._private = private
        self._stopped = False
        self._trigger_lock = threading.Lock()
        self._queued: Future | None = None
        self.request_timeout = request_timeout
        self.commits = 0
        self.rows_pushed = 0
        self.last_error: str | None = None
        with bounded_http(request_timeout):
            super().__init__(repo_id=repo_id, folder_path=folder, every=every, repo_type="dataset",
                             private=private, token=token, hf_api=api)

    def stop(self) -> None:
        self._stopped = True
        super().stop()

    def trigger(self) -> Future:
        """Queue a push, unless one is already waiting to start (it will see the same rows).

        The stock scheduler queues one push per interval even while the previous one is still
        retrying against a failing Hub, so an outage would pile up pushes without bound.
        """
        with self._trigger_lock:
            queued = self._queued
            if queued is not None and not queued.running() and not queued.done():
                return queued
            self._queued = self.api.run_as_future(self._push_to_hub)
            return self._queued

    def _push_to_hub(self) -> Any:
        if self._stopped:
            return None
        try:
            info = self.push_to_hub()
        except Exception as error:  # noqa: BLE001 - the Hub's failures must never reach the app
            message = describe_error(error, secret=self._secret)
            if self.last_error is None:
                logger.warning("Feedback upload to %s failed (%s); rows stay local and are retried "
                               "every %g min.", self.repo_id, message, self.every)
            else:
                logger.debug("Feedback upload to %s failed again: %s", self.repo_id, message)
            self.last_error = message
            self.state.record_error(message)
            return None
        if self.last_error is not None:
            logger.info("Feedback uploads to %s work again.", self.repo_id)
        self.last_error = None
        self.state.record_push(committed=info is not None)
        return info

    def push_to_hub(self) -> Any:
        """Commit every row the repo does not hold (one commit), or do nothing if there is none."""
        with self.lock:
            self.state.lock_path.parent.mkdir(parents=True, exist_ok=True)
            lock = FileLock(self.state.lock_path)
            try:
                lock.acquire(timeout=max(300.0, 5 * self.request_timeout))
            except Timeout:
                raise TimeoutError("another process has held the feedback push lock for minutes") from None
            try:
                with bounded_http(self.request_timeout):
                    return self._push_locked()
            finally:
                lock.release()

    def _push_locked(self) -> Any:
        record = self.state.load()
        info = self._repo_info()
        created = info.created_at.isoformat() if info.created_at is not None else None
        if record.repo_created_at is not None and created is not None and created != record.repo_created_at:
            logger.warning("Feedback repo %s was deleted and created again; uploading every row to it again.",
                           self.repo_id)
            record = PushRecord()
        known = record.repo_created_at
        record.repo_created_at = created or known
        pending = list(self.state.pending(record))
        if not pending:
            if record.repo_created_at != known:
                self.state.save(record)
            return None
        rows = sum(item.rows for item in pending)
        operations = [CommitOperationAdd(path_or_fileobj=PartialFileIO(item.path, size_limit=item.size),
                                         path_in_repo=item.path_in_repo) for item in pending]
        # A commit that timed out here may still land on the Hub later; pinning the parent
        # makes such a late, shorter copy of a file fail (412) instead of overwriting a newer one.
        commit = self.api.create_commit(
            repo_id=self.repo_id, repo_type="dataset", revision=self.revision, operations=operations,
            commit_message=f"Add {rows} feedback row{'s' if rows != 1 else ''}", parent_commit=info.sha)
        for item in pending:
            record.files[item.path_in_repo] = [item.size, item.mtime_ns]
        self.state.save(record)
        self.commits += 1
        self.rows_pushed += rows
        return commit

    def _repo_info(self) -> Any:
        """The repo's info; a repo deleted since the app started is created again first."""
        try:
            return self.api.repo_info(self.repo_id, repo_type="dataset", revision=self.revision)
        except RepositoryNotFoundError:
            logger.warning("Feedback repo %s is gone; creating it again.", self.repo_id)
            self.api.create_repo(self.repo_id, repo_type="dataset", private=self._private, exist_ok=True)
            return self.api.repo_info(self.repo_id, repo_type="dataset", revision=self.revision)


class HubSync:
    """Background uploads of a feedback folder to `repo_id`; nothing here blocks the caller.

    The constructor returns at once: a thread creates the repo (retrying with backoff up to
    `every` minutes while the Hub is unreachable), then the scheduler commits every `every`
    minutes, one commit per interval however many rows were written.
    """

    def __init__(self, *, folder: Path, repo_id: str, every: float = 5, private: bool = True,
                 token: str | None = None, request_timeout: float | None = None) -> None:
        self.folder = Path(folder)
        self.repo_id = repo_id
        self.every = every
        api = HfApi(token=token)
        self.state = SyncState(folder=self.folder, endpoint=api.endpoint, repo_id=repo_id)
        self._kwargs = {"repo_id": repo_id, "folder_path": self.folder, "every": every, "private": private,
                        "token": token, "request_timeout": request_timeout or DEFAULT_REQUEST_TIMEOUT,
                        "hf_api": api}
        self._secret = token or get_token()
        self._stop = threading.Event()
        self._closing = threading.Event()
        self._wake = threading.Event()
        self._attempted = threading.Condition()
        self._started = 0  # connection attempts begun, and finished; each attempt has its number
        self._finished = 0
        self._wanted = 0  # the attempt some caller waits for: one begun after it asked
        self._lock = threading.Lock()
        self.scheduler: FeedbackScheduler | None = None
        self.last_error: str | None = None
        self._thread = threading.Thread(target=self._connect, name="flywheel-feedback-connect", daemon=True)
        self._thread.start()

    @property
    def connected(self) -> bool:
        """True once the repo exists and the scheduler runs."""
        return self.scheduler is not None

    def health(self) -> SyncHealth:
        """Last push, rows waiting and last error (token masked) of this folder's sync to `repo_id`."""
        scheduler = self.scheduler
        return self.state.health(last_error=scheduler.last_error if scheduler is not None else self.last_error)

    def _connect(self) -> None:
        delay = 1.0
        while not self._stop.is_set():
            with self._attempted:
                self._started += 1
            try:
                scheduler = FeedbackScheduler(**self._kwargs)
            except Exception as error:  # noqa: BLE001 - keep the app running whatever the Hub says
                message = describe_error(error, secret=self._secret)
                if self.last_error is None:
                    logger.warning("Feedback repo %s is unreachable (%s); rows stay in %s and will be "
                                   "uploaded when it answers.", self.repo_id, message, self.folder)
                self.last_error = message
                self.state.record_error(message)
                if self._attempt_finished() and self._closing.is_set():
                    return  # that was the last attempt `close()` asked for
                if self._wanted > self._finished:
                    self._wake.clear()
                    continue  # asked for during this attempt: the next one at once
                self._wake.wait(delay)  # `push()` and `close()` cut the wait short
                self._wake.clear()
                delay = min(delay * 2, max(self.every * 60, 0.05))
                continue
            with self._lock:
                if self._stop.is_set():
                    scheduler.stop()
                    return
                self.scheduler = scheduler
            if self.last_error is not None:
                logger.info("Feedback repo %s is reachable again.", self.repo_id)
            self.last_error = None
            self._attempt_finished()
            return

    def _attempt_finished(self) -> bool:
        """Count the attempt as done and wake its waiters; True if it was the one they asked for."""
        with self._attempted:
            self._finished = self._started
            self._attempted.notify_all()
            return self._finished >= self._wanted

    def _connect_now(self, timeout: float | None) -> FeedbackScheduler | None:
        """The scheduler, after one more connection attempt (at once, not after the backoff) if needed."""
        with self._attempted:
            if self.scheduler is None and self._thread.is_alive():
                # Not one already under way: the Hub may have come back since it began.
                self._wanted = max(self._wanted, self._started + 1)
                wanted = self._wanted
                self._wake.set()
                self._attempted.wait_for(lambda: self._finished >= wanted or self.scheduler is not None
                                         or not self._thread.is_alive(), timeout)
        return self.scheduler

    def push(self, *, timeout: float | None = None) -> bool:
        """Push now and wait; True when that push succeeded (or there was nothing to push).

        Not connected yet, it first makes one connection attempt at once.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        scheduler = self._connect_now(timeout)
        if scheduler is None:
            return False
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            scheduler.trigger().result(remaining)
        except TimeoutError:
            return False
        return scheduler.last_error is None

    def close(self, *, push: bool = True, timeout: float = 30.0) -> bool:
        """Stop uploading; with `push`, first try one last push for up to `timeout` seconds.

        A sync still waiting to reach the Hub makes one last attempt at once instead of
        after its backoff. Returns whether everything reached the repo (True without `push`).
        """
        if not push:
            self._stop.set()
        self._closing.set()
        ok = self.push(timeout=timeout) if push else True
        with self._lock:
            self._stop.set()
            self._wake.set()
            if self.scheduler is not None:
                self.scheduler.stop()
        return ok


def describe_error(error: BaseException, *, secret: str | None = None) -> str:
    """First line of an error, shortened, with anything that looks like a token masked."""
    text = first_line(error, secret)
    return (text if text == type(error).__name__ else f"{type(error).__name__}: {text}")[:300]


@contextlib.contextmanager
def bounded_http(seconds: float) -> Iterator[None]:
    """Give every huggingface_hub request made in this block (this thread) a timeout.

    huggingface_hub's shared HTTP client has no timeout at all, so a Hub that accepts a
    connection and never answers would hold the upload queue forever. A request hook on
    that client applies `seconds` only inside this block, leaving other callers untouched.
    """
    from huggingface_hub.utils import get_session

    hooks = get_session().event_hooks["request"]
    if _apply_timeout not in hooks:
        hooks.append(_apply_timeout)
    token = _TIMEOUT.set(seconds)
    try:
        yield
    finally:
        _TIMEOUT.reset(token)


def _apply_timeout(request: Any) -> None:
    seconds = _TIMEOUT.get()
    if seconds is None:
        return
    current = dict(request.extensions.get("timeout") or {})
    request.extensions["timeout"] = {key: current.get(key) or seconds
                                     for key in ("connect", "read", "write", "pool")}
