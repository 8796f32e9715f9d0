"""In-memory repositories for the test Hub server (see ``tests/hub_server.py``).

Every commit is a full snapshot (``path -> bytes``), so any revision can be read back
exactly as the client left it. Nothing here speaks HTTP.
"""

from __future__ import annotations

import hashlib
import itertools
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

REPO_TYPES = ("model", "dataset", "space")

# Real Hub repos start with this file in an "initial commit"; clients never rely on it,
# but keeping it makes listings look like the real thing.
GITATTRIBUTES = (
    b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.bin filter=lfs diff=lfs merge=lfs -text\n"
)


class HubError(Exception):
    """An error the HTTP layer turns into a status code plus ``X-Error-Code``."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        body: dict | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = headers or {}
        self.body = body or {}


def git_blob_oid(data: bytes) -> str:
    """The git blob id of ``data``: what the Hub reports as a regular file's ``oid``/ETag."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def iso(dt: datetime) -> str:
    """Format like the Hub (``huggingface_hub.utils.parse_datetime`` accepts only this)."""
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


@dataclass
class Commit:
    """One commit; ``files`` is the complete tree at this commit."""

    oid: str
    title: str
    message: str
    date: datetime
    files: dict[str, bytes]
    parent: str | None = None


@dataclass
class Repo:
    """A repository with its history, branches and (for Spaces) settings."""

    repo_id: str
    repo_type: str
    private: bool = False
    sdk: str | None = None
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    variables: dict[str, dict] = field(default_factory=dict)
    secrets: dict[str, dict] = field(default_factory=dict)

    def history(self, revision: str = "main") -> list[Commit]:
        """Commits reachable from ``revision``, oldest first."""
        out: list[Commit] = []
        commit: Commit | None = self.resolve(revision)
        while commit is not None:
            out.append(commit)
            commit = self.commits.get(commit.parent) if commit.parent else None
        return out[::-1]

    def resolve(self, revision: str) -> Commit:
        """A branch name, a full commit id or a unique prefix of one (7+ chars)."""
        if revision in self.branches:
            return self.commits[self.branches[revision]]
        if revision in self.commits:
            return self.commits[revision]
        matches = [oid for oid in self.commits if len(revision) >= 7 and oid.startswith(revision)]
        if len(matches) == 1:
            return self.commits[matches[0]]
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")


class Store:
    """All repositories of one server, guarded by a single lock."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.repos: dict[tuple[str, str], Repo] = {}
        self._counter = itertools.count()
        self._last_created = datetime.min.replace(tzinfo=UTC)

    def get(self, repo_id: str, repo_type: str) -> Repo:
        """The repo or a ``RepoNotFound`` error."""
        try:
            return self.repos[(repo_type, repo_id)]
        except KeyError:
            raise HubError(404, f"Repository not found: {repo_type}s/{repo_id}", "RepoNotFound") from None

    def create(self, repo_id: str, repo_type: str, *, private: bool = False, sdk: str | None = None) -> Repo:
        """Create an empty repo holding only its initial commit; 409 if it exists."""
        with self.lock:
            if (repo_type, repo_id) in self.repos:
                raise HubError(409, f"You already created this {repo_type} repo", "RepoExists")
            # A repo deleted and created again is a new repo: its creation time (what clients can
            # tell them apart by) must differ even within one millisecond, the Hub's resolution.
            created_at = max(datetime.now(UTC), self._last_created + timedelta(milliseconds=1))
            self._last_created = created_at
            repo = Repo(repo_id=repo_id, repo_type=repo_type, private=private, sdk=sdk, created_at=created_at)
            self.repos[(repo_type, repo_id)] = repo
            self._add_commit(repo, "main", {".gitattributes": GITATTRIBUTES}, "initial commit", "")
            return repo

    def delete(self, repo_id: str, repo_type: str) -> None:
        """Remove a repo and its whole history."""
        with self.lock:
            self.get(repo_id, repo_type)
            del self.repos[(repo_type, repo_id)]

    def commit(
        self,
        repo: Repo,
        branch: str,
        *,
        title: str,
        message: str = "",
        upserts: dict[str, bytes] | None = None,
        deletes: list[str] | None = None,
        deleted_folders: list[str] | None = None,
        parent_commit: str | None = None,
    ) -> Commit:
        """Apply operations on top of ``branch`` and record the result as a new commit."""
        with self.lock:
            if branch not in repo.branches:
                raise HubError(404, f"Invalid rev id: {branch} (commits go to branches)", "RevisionNotFound")
            head = repo.commits[repo.branches[branch]]
            if parent_commit is not None and not head.oid.startswith(parent_commit):
                raise HubError(412, "A commit has happened since. Please refresh and try again.")
            files = dict(head.files)
            for path in deletes or []:
                if files.pop(path, None) is None:
                    raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
            for folder in deleted_folders or []:
                prefix = folder.rstrip("/") + "/"
                for path in [p for p in files if p.startswith(prefix)]:
                    del files[path]
            files.update(upserts or {})
            return self._add_commit(repo, branch, files, title, message)

    def squash(self, repo: Repo, branch: str, message: str) -> Commit:
        """Replace the branch history with one commit holding its current tree."""
        with self.lock:
            files = repo.resolve(branch).files
            return self._add_commit(repo, branch, dict(files), message, "", orphan=True)

    def _add_commit(
        self,
        repo: Repo,
        branch: str,
        files: dict[str, bytes],
        title: str,
        message: str,
        *,
        orphan: bool = False,
    ) -> Commit:
        parent = None if orphan else repo.branches.get(branch)
        seed = f"{repo.repo_type}/{repo.repo_id}:{next(self._counter)}:{parent}:{title}".encode()
        body = b"".join(p.encode() + git_blob_oid(d).encode() for p, d in sorted(files.items()))
        oid = hashlib.sha1(seed + body).hexdigest()
        commit = Commit(oid, title, message, datetime.now(UTC), files, parent or None)
        repo.commits[oid] = commit
        repo.branches[branch] = oid
        return commit


def tree_entries(files: dict[str, bytes], path: str = "", recursive: bool = False) -> list[dict]:
    """Entries in the shape of ``GET /api/{type}s/{id}/tree/{rev}/{path}`` (files and directories)."""
    prefix = path.strip("/") + "/" if path.strip("/") else ""
    if prefix and not any(p.startswith(prefix) for p in files):
        raise HubError(404, f"Entry not found: {path}", "EntryNotFound")
    out: dict[str, dict] = {}
    for file_path in sorted(files):
        if not file_path.startswith(prefix):
            continue
        parts = file_path[len(prefix) :].split("/")
        for depth in range(1, len(parts)):
            directory = prefix + "/".join(parts[:depth])
            if recursive or depth == 1:
                out.setdefault(directory, dir_entry(files, directory))
            if not recursive:
                break
        if recursive or len(parts) == 1:
            out[file_path] = file_entry(file_path, files[file_path])
    return list(out.values())


def path_entry(files: dict[str, bytes], path: str) -> dict | None:
    """A file or directory entry for ``paths-info``; ``None`` when the path does not exist."""
    path = path.strip("/")
    if path in files:
        return file_entry(path, files[path])
    if any(p.startswith(path + "/") for p in files):
        return dir_entry(files, path)
    return None


def file_entry(path: str, data: bytes) -> dict:
    """A regular (non-LFS) file entry."""
    return {"type": "file", "path": path, "size": len(data), "oid": git_blob_oid(data)}


def dir_entry(files: dict[str, bytes], path: str) -> dict:
    """A directory entry whose oid changes whenever anything below it changes."""
    below = sorted((p, git_blob_oid(d)) for p, d in files.items() if p.startswith(path + "/"))
    oid = hashlib.sha1(repr(below).encode()).hexdigest()
    return {"type": "directory", "path": path, "size": 0, "oid": oid}
