"""The feedback store: validated records appended to a local JSONL dataset, optionally synced to the Hub.

`FeedbackStore.log()` validates a record (see `hub.feedback.records`), appends it to
`<folder>/data/<task>/<YYYY-MM-DD>/<writer-uuid>.jsonl` and fsyncs it (and, for a new file,
the directories naming it) before returning, so an accepted row survives a crash of the
machine; `append()` writes the row at once and returns a future that the store's fsync thread
answers, for callers that must not wait on the disk (an event loop). One fsync covers every row
written before it, so concurrent writers share it. Each process writes its own file, so any number
of threads and processes can share one folder. With `repo_id`, a background `HubSync` commits the
folder to a private Hub dataset repo every `every` minutes; the Hub being slow or down never
delays or breaks `log()`. `close()` (which the apps call on SIGTERM) refuses further rows and
pushes the rest; `health()` reports where rows are kept and how the Hub sync is doing.
`hub.feedback.callback.FeedbackCallback` is this store as a Gradio `FlaggingCallback`; this
module itself does not import Gradio.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> with FeedbackStore(folder=Path(tempfile.mkdtemp())) as feedback:
    ...     record = feedback.log(task="detox", kind="flag", inputs={"prompt": "The fans"},
    ...                           completion="cheered all night.", label="fine",
    ...                           session=feedback.session_id("gradio-session-hash"))
    >>> record["kind"], len(record["session"])
    ('flag', 32)
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import secrets
import threading
import uuid
import weakref
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hub.errors import FlywheelError
from hub.feedback.card import write_card
from hub.feedback.records import build_record, encode_record
from hub.feedback.sync import HubSync
from hub.paths import feedback_home

logger = logging.getLogger(__name__)

FEEDBACK_REPO_ENV = "FLYWHEEL_FEEDBACK_REPO"
_INSTANCES: weakref.WeakSet[FeedbackStore] = weakref.WeakSet()


def feedback_repo_from_env() -> str | None:
    """The Hub repo named by `FLYWHEEL_FEEDBACK_REPO`, or None for local-only feedback."""
    return os.environ.get(FEEDBACK_REPO_ENV) or None


class FeedbackStore:
    """Stores feedback records locally (and on the Hub with `repo_id`); thread- and process-safe.

    Args:
        folder: the local dataset folder (default `hub.paths.feedback_home()`).
        repo_id: a Hub dataset repo (`user/name`) to sync the folder to; None keeps it local.
        every: minutes between Hub commits.
        private: create the Hub repo private (ignored if it exists).
        token: Hub token (default: `HF_TOKEN` or the saved login); never written anywhere.
        session_ids: store a salted hash of the Gradio session with each record.

    Example:
        >>> feedback = FeedbackStore(repo_id="me/flywheel-feedback", every=1)  # doctest: +SKIP
        >>> feedback.log(task="tweet", kind="rating", inputs={"prompt": "Hiring"},  # doctest: +SKIP
        ...              completion="We're hiring!", ratings={"relevance": 4, "clarity": 5,
        ...                                                    "originality": 2, "engagement": 3})
    """

    def __init__(self, *, folder: Path | None = None, repo_id: str | None = None, every: float = 5,
                 private: bool = True, token: str | None = None, session_ids: bool = True) -> None:
        if isinstance(every, bool) or not isinstance(every, int | float) or not every > 0:
            raise FlywheelError(f"Feedback upload interval must be a positive number of minutes ({every}).")
        if repo_id is not None:
            _check_repo_id(repo_id)
        self.folder = Path(folder if folder is not None else feedback_home()).expanduser().resolve()
        self.repo_id = repo_id
        self.every = float(every)
        self.private = private
        self.session_ids = session_ids
        self._token = token
        self._salt = secrets.token_bytes(32)
        self._setup_lock = threading.Lock()
        self._ready = False
        self._closed = False
        self.sync: HubSync | None = None
        self.count = 0
        """Records this store has written."""
        self._reset_writer()
        _INSTANCES.add(self)

    def _reset_writer(self) -> None:
        # Called again in a forked child: it must not share the parent's file or a held lock.
        self._lock = threading.Lock()
        self._writer_id = str(uuid.uuid4())
        self._files: dict[str, int] = {}
        self._dirty: set[int] = set()
        self._waiting: list[_Waiting] = []
        """Rows written and not yet answered, in order (`_sync_rows` answers them)."""
        self._rows_written = threading.Condition(self._lock)
        self._syncer: threading.Thread | None = None

    @property
    def writer_id(self) -> str:
        """The uuid naming this process's files."""
        return self._writer_id

    def setup(self) -> None:
        """Create the folder and its dataset card, and start Hub sync. Idempotent; `log()` calls it."""
        self._ensure_ready()

    # -- the API the demos use ------------------------------------------------------------

    def log(self, **fields: Any) -> dict[str, Any]:
        """Validate, append and fsync one record; return it once it is on disk.

        Takes the keywords of `append` (those of `hub.feedback.records.build_record`). Raises
        `InvalidRecord` for a bad record and `FlywheelError` if the disk refuses it or the store is
        closed; either way it was not stored.
        """
        return self.append(**fields).result()

    def append(self, *, task: str, kind: str, inputs: dict[str, Any], prompt: list[dict[str, str]] | None = None,
               completion: str | None = None, label: str | None = None, ratings: dict[str, int] | None = None,
               reward: float | None = None, chosen: str | None = None, rejected: str | None = None,
               tie: bool | None = None, edited: str | None = None, model: dict[str, str | None] | None = None,
               generation: dict[str, Any] | None = None, session: str | None = None, user: str | None = None,
               source: str = "person", sides: dict[str, Any] | None = None) -> Future[dict[str, Any]]:
        """Validate and append one record now; the returned future gives it back once it is fsynced.

        For callers that must not block on the disk, such as an event loop
        (`record = await asyncio.wrap_future(store.append(...))`). Raises at once, with nothing
        stored, what `log()` raises for a bad record, a closed store or a refused write; the future
        fails with `FlywheelError` if the fsync that should cover the row fails.

        Example:
            >>> import tempfile
            >>> with FeedbackStore(folder=Path(tempfile.mkdtemp())) as feedback:
            ...     pending = feedback.append(task="detox", kind="flag", inputs={"prompt": "The fans"},
            ...                               completion="cheered all night.", label="fine")
            ...     pending.result(timeout=30)["label"]
            'fine'
        """
        record = build_record(task=task, kind=kind, inputs=inputs, prompt=prompt, completion=completion,
                              label=label, ratings=ratings, reward=reward, chosen=chosen, rejected=rejected,
                              tie=tie, edited=edited, model=model, generation=generation, session=session,
                              user=user, source=source, sides=sides)
        line = encode_record(record)
        self._ensure_ready()
        relative = f"data/{record['task']}/{record['created_at'][:10]}"
        pending: Future[dict[str, Any]] = Future()
        with self._lock:
            if self._closed:
                # Whatever close() pushed must include every row acknowledged to someone.
                raise FlywheelError("Feedback is no longer accepted: the app is shutting down.")
            try:
                fd = self._file(relative)
                view = memoryview(line)
                while view:
                    view = view[os.write(fd, view):]
            except OSError as error:
                # The file may now end in half a row; the next row must not be glued to it.
                self._rotate()
                raise FlywheelError(self._not_saved(error)) from error
            self._dirty.add(fd)
            self._waiting.append(_Waiting(record, pending))
            if self._syncer is None:
                self._syncer = threading.Thread(target=self._sync_rows, name="feedback-fsync", daemon=True)
                self._syncer.start()
            self._rows_written.notify()
        return pending

    def _sync_rows(self) -> None:
        """The store's fsync thread: one fsync makes every row written before it durable (group commit),
        so concurrent writers share it instead of queueing for one each; then their futures are answered."""
        while True:
            with self._lock:
                while not self._waiting and not self._closed:
                    self._rows_written.wait()
                if not self._waiting:
                    return
                waiting, self._waiting = self._waiting, []
                # dup: a new day or a rotation may close the writer's fd meanwhile
                dirty = [os.dup(fd) for fd in self._dirty]
                self._dirty.clear()
            failure = None
            try:
                for fd in dirty:
                    os.fsync(fd)
            except OSError as error:
                failure = error
                with self._lock:
                    self._rotate()
            finally:
                for fd in dirty:
                    os.close(fd)
            errors = [row.failure or failure for row in waiting]
            with self._lock:  # counted before anyone hears back, as `log()` promises
                self.count += errors.count(None)
            for row, error in zip(waiting, errors, strict=True):
                if error is None:
                    row.pending.set_result(row.record)
                else:
                    row.pending.set_exception(FlywheelError(self._not_saved(error)))

    def _not_saved(self, error: OSError) -> str:
        return f"Feedback could not be saved in {self.folder}: {error}"

    def session_id(self, raw: str | None) -> str | None:
        """A salted sha256 of a Gradio session hash (the salt lives as long as this object).

        Returns None when `session_ids` is off or there is no session.

        Example:
            >>> feedback = FeedbackStore(folder=Path("unused"))
            >>> feedback.session_id("abc") == feedback.session_id("abc") != feedback.session_id("abd")
            True
        """
        if not self.session_ids or not raw:
            return None
        return hashlib.sha256(self._salt + str(raw).encode("utf-8", "replace")).hexdigest()[:32]

    # -- Hub sync ---------------------------------------------------------------------------

    def push(self, *, timeout: float | None = None) -> bool:
        """Upload pending rows now instead of at the next interval; True if the push succeeded.

        Without `repo_id` there is nothing to push and this returns True.
        """
        self._ensure_ready()
        return True if self.sync is None else self.sync.push(timeout=timeout)

    def health(self) -> dict[str, Any]:
        """Where rows are kept and, with `repo_id`, the Hub sync's health (for a status panel).

        `sync` holds `last_push` (UTC), `rows_waiting` and `last_error` (token masked); see
        `hub.feedback.sync_state.SyncHealth`. It is None until `setup()` or the first row.
        """
        sync = self.sync.health().as_dict() if self.sync is not None else None
        return {"folder": str(self.folder), "repo": self.repo_id, "rows_written": self.count, "sync": sync}

    def close(self, *, push: bool = True, timeout: float = 30.0) -> None:
        """Refuse further rows, close this process's files and stop Hub sync (after one last push, if `push`).

        Rows left unpushed (Hub down, token refused, `timeout` reached) stay in the folder and
        go up with the next push from any process syncing this folder to the same repo.
        """
        with self._lock:
            self._closed = True
            for fd in self._files.values():
                self._close_durably(fd)
            self._files.clear()
            syncer = self._syncer
            self._rows_written.notify()
        if syncer is not None and syncer is not threading.current_thread():
            syncer.join(timeout)  # every accepted row is answered before close() returns
        if self.sync is not None and not self.sync.close(push=push, timeout=timeout):
            health = self.sync.health()
            logger.warning("Feedback sync to %s stopped with %d row(s) not pushed (%s); they stay in %s and "
                           "are pushed by the next run.", self.repo_id, health.rows_waiting,
                           health.last_error or "timed out", self.folder)

    def __enter__(self) -> FeedbackStore:
        self.setup()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals --------------------------------------------------------------------------

    def _ensure_ready(self) -> None:
        if self._ready:
            return
        with self._setup_lock:
            if self._ready:
                return
            try:
                (self.folder / "data").mkdir(parents=True, exist_ok=True)
                write_card(self.folder)
            except OSError as error:
                raise FlywheelError(f"Feedback folder {self.folder} is not writable: {error}") from error
            if self.repo_id is not None:
                self.sync = HubSync(folder=self.folder, repo_id=self.repo_id, every=self.every,
                                    private=self.private, token=self._token)
            self._ready = True

    def _rotate(self) -> None:
        for fd in self._files.values():
            self._close_durably(fd)
        self._files.clear()
        self._writer_id = str(uuid.uuid4())

    def _close_durably(self, fd: int) -> None:
        """Close a writer's file (under `_lock`), fsyncing it first if rows wait for a group fsync."""
        if fd in self._dirty:
            self._dirty.discard(fd)
            try:
                os.fsync(fd)
            except OSError as error:  # the rows waiting on it must not be acknowledged
                for row in self._waiting:
                    row.failure = row.failure or error
        with contextlib.suppress(OSError):
            os.close(fd)

    def _file(self, relative: str) -> int:
        fd = self._files.get(relative)
        if fd is not None:
            return fd
        task_dir = relative.rsplit("/", 1)[0]
        for old in [key for key in self._files if key.startswith(task_dir + "/")]:
            self._close_durably(self._files.pop(old))  # a new day: yesterday's file is done
        directory = self.folder / relative
        _make_dirs_durably(directory)
        fd = os.open(directory / f"{self._writer_id}.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        _fsync_dir(directory)  # the new file's name must survive a crash as well as its rows
        self._files[relative] = fd
        return fd


@dataclass
class _Waiting:
    """A row written and waiting for the fsync that makes it durable."""

    record: dict[str, Any]
    pending: Future[dict[str, Any]]
    failure: OSError | None = None
    """Set when closing its file failed to fsync it: the row must not be acknowledged."""


def _make_dirs_durably(directory: Path) -> None:
    """`mkdir -p`, fsyncing the parent of each directory it creates so that its name survives a crash."""
    missing = []
    while not directory.is_dir():
        missing.append(directory)
        directory = directory.parent
    for created in reversed(missing):
        created.mkdir(exist_ok=True)
        _fsync_dir(created.parent)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems cannot fsync a directory; the row itself was fsynced
    finally:
        os.close(fd)


def _check_repo_id(repo_id: str) -> None:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise FlywheelError(f"Feedback repo {repo_id!r} is not a valid Hub repo id: {error}") from None


def _after_fork() -> None:
    for instance in list(_INSTANCES):
        instance._reset_writer()
        instance.sync = None  # the parent's upload threads do not exist here; its syncer uploads our files


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)
