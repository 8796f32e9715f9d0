"""What a feedback folder knows about its syncs to Hub repos, kept on disk beside the rows.

Per repo (endpoint and repo id), `<folder>/.flywheel-sync/` holds:

- `<key>.json`: how many bytes of each file the repo holds, and which repo that was (its
  creation time, so a repo deleted and created again is recognised and gets every row
  again). Written only by a push holding `<key>.lock`.
- `<key>.health.json`: when a push last reached the repo and the last error (token masked),
  so another process (`python -m hub feedback stats`) can tell whether sync is healthy.

Nothing in this folder is uploaded.

Example:
    >>> import tempfile
    >>> state = SyncState(folder=Path(tempfile.mkdtemp()), endpoint="https://huggingface.co",
    ...                   repo_id="me/flywheel-feedback")
    >>> state.record_error("HfHubHTTPError: 403 Forbidden: read-only token")
    >>> health = state.health()
    >>> health.rows_waiting, health.last_push, health.last_error
    (0, None, 'HfHubHTTPError: 403 Forbidden: read-only token')
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hub.feedback.records import utc_now

STATE_DIR = ".flywheel-sync"
"""Inside the feedback folder; never uploaded (it only says what was uploaded where)."""
CARD = "README.md"
DATA_FILES = "data/*/*/*.jsonl"


@dataclass(frozen=True)
class Pending:
    """Part of a local file that the repo does not hold yet."""

    path: Path
    path_in_repo: str
    size: int
    """Bytes to upload (the file up to its last complete row)."""
    mtime_ns: int
    rows: int


@dataclass
class PushRecord:
    """What the repo held after the last push: bytes per file, and the repo's creation time."""

    files: dict[str, list[int]] = field(default_factory=dict)
    repo_created_at: str | None = None


@dataclass(frozen=True)
class SyncHealth:
    """How sync of one folder to one repo is doing (shown in the Space's status panel and by `stats`)."""

    repo_id: str
    endpoint: str
    last_push: str | None
    """UTC time a push last committed rows to the repo, or None if none has yet."""
    rows_waiting: int
    """Complete rows in the folder that the repo does not hold yet."""
    last_error: str | None
    """The last push's or connection's error (first line, token masked), None once a push succeeds."""
    last_error_at: str | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        """One line, e.g. `user/fb: last push 2026-11-22T10:00:00Z, 3 rows waiting, last error: ...`."""
        text = (f"{self.repo_id} ({self.endpoint}): last push {self.last_push or 'never'}, "
                f"{self.rows_waiting} row{'s' if self.rows_waiting != 1 else ''} waiting")
        if self.last_error:
            text += f", last error at {self.last_error_at}: {self.last_error}"
        return text


class SyncState:
    """The on-disk record of syncing `folder` to `repo_id` on `endpoint` (see the module docstring)."""

    def __init__(self, *, folder: Path, endpoint: str, repo_id: str) -> None:
        self.folder = Path(folder).expanduser().resolve()
        self.endpoint = endpoint
        self.repo_id = repo_id
        key = hashlib.sha256(f"{endpoint}|{repo_id}".encode()).hexdigest()[:16]
        self.path = self.folder / STATE_DIR / f"{key}.json"
        self.lock_path = self.folder / STATE_DIR / f"{key}.lock"
        self.health_path = self.folder / STATE_DIR / f"{key}.health.json"

    @classmethod
    def all_in(cls, folder: Path) -> list[SyncState]:
        """Every repo this folder has been synced to (or has tried to be), from the files they left."""
        found: dict[tuple[str, str], SyncState] = {}
        for path in sorted((Path(folder) / STATE_DIR).glob("*.json")):
            data = _read_json(path)
            if isinstance(data.get("repo_id"), str) and isinstance(data.get("endpoint"), str):
                found.setdefault((data["endpoint"], data["repo_id"]),
                                 cls(folder=folder, endpoint=data["endpoint"], repo_id=data["repo_id"]))
        return list(found.values())

    # -- what the repo holds (read by anyone, written by a push holding the lock) --------------

    def load(self) -> PushRecord:
        data = _read_json(self.path)
        try:
            files = {str(k): [int(v[0]), int(v[1])] for k, v in data["files"].items()}
        except (KeyError, TypeError, ValueError, IndexError, AttributeError):
            return PushRecord()  # unreadable or absent: uploading everything again is safe, just slower
        created = data.get("repo_created_at")
        return PushRecord(files=files, repo_created_at=created if isinstance(created, str) else None)

    def save(self, record: PushRecord) -> None:
        self._write(self.path, {"repo_id": self.repo_id, "endpoint": self.endpoint,
                                "repo_created_at": record.repo_created_at, "files": record.files})

    def pending(self, record: PushRecord) -> Iterator[Pending]:
        """The card if it changed, and every data file's complete rows beyond what the repo holds."""
        card = self.folder / CARD
        if card.is_file():
            stat = card.stat()
            if record.files.get(CARD) != [stat.st_size, stat.st_mtime_ns]:
                yield Pending(card, CARD, stat.st_size, stat.st_mtime_ns, 0)
        for path in sorted(self.folder.glob(DATA_FILES)):
            relative = path.relative_to(self.folder).as_posix()
            done = record.files.get(relative, [0, 0])[0]
            size = complete_prefix(path)
            if size > done:
                yield Pending(path, relative, size, 0, count_lines(path, start=done, end=size))

    # -- health (last writer wins: it is informational) ----------------------------------------

    def record_push(self, *, committed: bool) -> None:
        """A push succeeded (`committed`: it made a commit); clears the last error."""
        health = self._health_data()
        if committed:
            health["last_push"] = utc_now()
        health["last_error"] = health["last_error_at"] = None
        self._write_health(health)

    def record_error(self, message: str) -> None:
        """A push or connection failed with `message` (already masked)."""
        self._write_health({**self._health_data(), "last_error": message, "last_error_at": utc_now()})

    def health(self, *, last_error: str | None = None) -> SyncHealth:
        """Health from disk; `last_error` (this process's, if fresher) replaces the recorded one."""
        data = self._health_data()
        rows = sum(item.rows for item in self.pending(self.load()))
        error = last_error or data.get("last_error")
        return SyncHealth(repo_id=self.repo_id, endpoint=self.endpoint, last_push=data.get("last_push"),
                          rows_waiting=rows, last_error=error,
                          last_error_at=data.get("last_error_at") if error else None)

    def _health_data(self) -> dict[str, Any]:
        data = _read_json(self.health_path)
        return {"repo_id": self.repo_id, "endpoint": self.endpoint, "last_push": data.get("last_push"),
                "last_error": data.get("last_error"), "last_error_at": data.get("last_error_at")}

    def _write_health(self, data: dict[str, Any]) -> None:
        with contextlib.suppress(OSError):  # a full disk must not turn a report into a failure
            self._write(self.health_path, data)

    def _write(self, path: Path, data: dict[str, Any]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.{id(data)}.tmp")
        tmp.write_text(json.dumps(data), encoding="utf-8")
        os.replace(tmp, path)


def complete_prefix(path: Path, size: int | None = None) -> int:
    """Bytes of `path` up to and including its last newline (a row still being written is left out)."""
    with open(path, "rb") as handle:
        end = os.fstat(handle.fileno()).st_size if size is None else size
        while end > 0:
            start = max(0, end - (1 << 16))
            handle.seek(start)
            cut = handle.read(end - start).rfind(b"\n")
            if cut >= 0:
                return start + cut + 1
            end = start
    return 0


def count_lines(path: Path, *, start: int, end: int) -> int:
    """Newlines between byte offsets `start` and `end`."""
    count = 0
    with open(path, "rb") as handle:
        handle.seek(start)
        remaining = end - start
        while remaining > 0:
            chunk = handle.read(min(remaining, 1 << 20))
            if not chunk:
                break
            count += chunk.count(b"\n")
            remaining -= len(chunk)
    return count


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
