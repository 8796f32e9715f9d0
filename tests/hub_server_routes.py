"""HTTP endpoints of the test Hub server (see ``tests/hub_server.py``), one method each.

Shapes follow what ``huggingface_hub`` 2.x parses; fields it ignores are left out.
"""

from __future__ import annotations

import base64
import json
import re
import socket
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

from .hub_server_auth import (
    INVALID_CREDENTIALS,
    check_can_write,
    error_answer,
    role,
    unauthenticated,
    with_token,
)
from .hub_server_store import HubError, Repo, git_blob_oid, iso, path_entry, tree_entries

if TYPE_CHECKING:
    from .hub_server import HubServer

_API = r"/api/(?P<type>model|dataset|space)s/(?P<repo>[^/]+/[^/]+)"
_SPACE = r"/api/spaces/(?P<repo>[^/]+/[^/]+)"
ROUTES: list[tuple[str, re.Pattern[str], str]] = [
    (methods, re.compile(pattern), name)
    for methods, pattern, name in [
        ("GET", r"/api/whoami-v2", "whoami"),
        ("POST", r"/api/repos/create", "create_repo"),
        ("DELETE", r"/api/repos/delete", "delete_repo"),
        ("POST", r"/api/validate-yaml", "validate_yaml"),
        ("GET", _API + r"(/revision/(?P<rev>[^/]+))?", "repo_info"),
        ("PUT", _API + r"/settings", "settings"),
        ("GET", _API + r"/tree/(?P<rev>[^/]+)(/(?P<path>.*))?", "tree"),
        ("POST", _API + r"/paths-info/(?P<rev>[^/]+)", "paths_info"),
        ("POST", _API + r"/preupload/(?P<rev>[^/]+)", "preupload"),
        ("POST", _API + r"/commit/(?P<rev>[^/]+)", "commit"),
        ("GET", _API + r"/refs", "refs"),
        ("GET", _API + r"/commits/(?P<rev>[^/]+)", "list_commits"),
        ("POST", _API + r"/super-squash/(?P<rev>[^/]+)", "squash"),
        ("POST DELETE", _API + r"/branch/(?P<rev>[^/]+)", "branch"),
        ("GET POST DELETE", _SPACE + r"/(?P<kind>variables|secrets)", "space_settings"),
        ("GET POST", _SPACE + r"/(runtime|restart)", "runtime"),
        (
            "GET HEAD",
            r"/((?P<prefix>datasets|spaces)/)?(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)",
            "resolve",
        ),
    ]
]
URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
RUNTIME = {
    "stage": "RUNNING",
    "hardware": {"current": "cpu-basic", "requested": "cpu-basic"},
    "gcTimeout": 172800,
}


@dataclass
class RequestRecord:
    """One request as the server saw it (``status`` 0 means the connection was dropped)."""

    method: str
    path: str
    status: int
    token: str | None


class HubRequestHandler(BaseHTTPRequestHandler):
    """Parses one request, applies faults, routes it to an endpoint method below."""

    protocol_version = "HTTP/1.1"  # keep-alive, like the Hub
    timeout = 15  # idle keep-alive connections free their thread eventually

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    @property
    def hub(self) -> HubServer:
        return self.server.hub

    def _dispatch(self, method: str) -> None:
        split = urlsplit(self.path)
        self.method, self.query = method, parse_qs(split.query)
        self.body = self._read_body()
        scheme, _, credentials = self.headers.get("Authorization", "").partition(" ")
        self.token = credentials.strip() if scheme.lower() == "bearer" and credentials.strip() else None
        self.recorded = False
        decision = self.hub.faults.decide(method, split.path)
        try:
            if decision.delay:
                time.sleep(decision.delay)
            if decision.drop:
                self._record(0)
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
            elif decision.status is not None:
                self.send_json({"error": with_token("Injected fault", self.token)}, decision.status)
            elif self.hub.require_token and self.token is None:
                self.send_json({"error": "Missing token"}, 401, {"X-Error-Message": INVALID_CREDENTIALS})
            else:
                try:
                    self.route(method, split.path)
                except HubError as err:
                    body, headers = error_answer(err, self.token)
                    self.send_json(body, err.status, headers)
                except Exception as exc:  # a bug in this server: make it visible to the client
                    self.send_json({"error": repr(exc)}, 500, {"X-Error-Message": repr(exc)[:200]})
        finally:
            self._record(0)

    def _record(self, status: int) -> None:
        # Recorded before the client can see the outcome, so tests may assert right after a call.
        if not self.recorded:
            self.recorded = True
            self.hub.requests.append(RequestRecord(self.method, urlsplit(self.path).path, status, self.token))

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            self.rfile.readline()
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def json_body(self) -> Any:
        """The request body as JSON, or as a form (``paths-info`` posts ``paths=a&paths=b``)."""
        if not self.body:
            return {}
        if "application/x-www-form-urlencoded" in self.headers.get("Content-Type", ""):
            return parse_qs(self.body.decode())
        return json.loads(self.body)

    def send_json(self, obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> None:
        self.send_bytes(
            json.dumps(obj).encode(), status, {"Content-Type": "application/json", **(headers or {})}
        )

    def send_bytes(self, data: bytes, status: int = 200, headers: dict[str, str] | None = None) -> None:
        self._record(status)
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value.encode("ascii", "replace").decode())  # headers are latin-1 only
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.method != "HEAD":
            self.wfile.write(data)

    # -- endpoints ---------------------------------------------------------------------

    def route(self, method: str, path: str) -> None:
        for methods, pattern, name in ROUTES:
            if method in methods.split() and (match := pattern.fullmatch(path)):
                # Revisions and tree paths arrive %-encoded (slashes too), so decode per group.
                args = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
                return getattr(self, name)(**args)
        raise HubError(404, f"The test Hub has no endpoint {method} {path}")

    def _can_write(self, target: str) -> None:
        check_can_write(self.token, self.hub.read_only_tokens, target)

    def _repo(self, repo: str, type: str = "model", *, write: bool = False) -> Repo:
        if write:
            self._can_write(f"{type} {repo}")
        found = self.hub.store.get(repo, type)
        if found.private and self.token is None:
            raise HubError(401, "Repository not found", "RepoNotFound")
        return found

    def whoami(self) -> None:
        if self.token is None:
            raise unauthenticated()
        user, token_role = self.hub.user, role(self.token, self.hub.read_only_tokens)
        self.send_json(
            {
                "type": "user",
                "id": "0" * 24,
                "name": user,
                "fullname": user,
                "avatarUrl": f"/avatars/{user}.svg",
                "email": f"{user}@example.com",
                "emailVerified": True,
                "isPro": False,
                "orgs": [],
                "auth": {"type": "access_token", "accessToken": {"displayName": "test", "role": token_role}},
            }
        )

    def create_repo(self) -> None:
        body = self.json_body()
        repo_id = f"{body.get('organization') or self.hub.user}/{body['name']}"
        repo_type = body.get("type") or "model"
        self._can_write(f"a new {repo_type} {repo_id}")
        private = body.get("visibility", "public") != "public" or bool(body.get("private"))
        url = f"{self.hub.url}/{URL_PREFIX[repo_type]}{repo_id}"
        try:
            repo = self.hub.store.create(repo_id, repo_type, private=private, sdk=body.get("sdk"))
        except HubError as err:
            err.body["url"] = url  # `create_repo(exist_ok=True)` reads it from the 409
            raise
        now = iso(datetime.now(UTC))
        for kind in ("variables", "secrets"):
            for item in body.get(kind) or []:
                getattr(repo, kind)[item["key"]] = {**item, "updatedAt": now}
        self.send_json({"url": url, "name": repo_id, "id": repo_id})

    def delete_repo(self) -> None:
        body = self.json_body()
        repo_id = f"{body.get('organization') or self.hub.user}/{body['name']}"
        repo_type = body.get("type") or "model"
        self._can_write(f"{repo_type} {repo_id}")
        self.hub.store.delete(repo_id, repo_type)
        self.send_json({})

    def validate_yaml(self) -> None:
        self.send_json({"errors": [], "warnings": []})

    def repo_info(self, type: str, repo: str, rev: str = "main") -> None:
        found = self._repo(repo, type)
        commit = found.resolve(rev)
        info: dict[str, Any] = {
            "_id": git_blob_oid(f"{type}/{repo}".encode())[:24],
            "id": repo,
            "author": repo.split("/")[0],
            "sha": commit.oid,
            "lastModified": iso(commit.date),
            "createdAt": iso(found.created_at),
            "private": found.private,
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": [
                {"rfilename": path, "size": len(data), "blobId": git_blob_oid(data)}
                for path, data in sorted(commit.files.items())
            ],
            "usedStorage": sum(len(data) for data in commit.files.values()),
        }
        if type == "space":
            info.update(sdk=found.sdk, runtime=RUNTIME, subdomain=repo.replace("/", "-"))
        self.send_json(info)

    def settings(self, type: str, repo: str) -> None:
        found = self._repo(repo, type, write=True)
        body = self.json_body()
        if "visibility" in body or "private" in body:
            found.private = body.get("visibility", "public") != "public" or bool(body.get("private"))
        self.send_json({})

    def tree(self, type: str, repo: str, rev: str, path: str = "") -> None:
        recursive = self.query.get("recursive", ["false"])[0].lower() in ("true", "1")
        self.send_json(tree_entries(self._repo(repo, type).resolve(rev).files, path, recursive))

    def paths_info(self, type: str, repo: str, rev: str) -> None:
        files = self._repo(repo, type).resolve(rev).files
        entries = [path_entry(files, path) for path in self.json_body().get("paths", [])]
        self.send_json([entry for entry in entries if entry is not None])

    def preupload(self, type: str, repo: str, rev: str) -> None:
        commit = self._repo(repo, type, write=True).resolve(rev)
        # "regular" for every file keeps huggingface_hub away from LFS and Xet uploads.
        self.send_json(
            {
                "commitOid": commit.oid,
                "files": [
                    {
                        "path": f["path"],
                        "uploadMode": "regular",
                        "shouldIgnore": False,
                        "oid": git_blob_oid(commit.files[f["path"]]) if f["path"] in commit.files else None,
                    }
                    for f in self.json_body().get("files", [])
                ],
            }
        )

    def commit(self, type: str, repo: str, rev: str) -> None:
        found = self._repo(repo, type, write=True)
        header: dict[str, Any] = {}
        upserts: dict[str, bytes] = {}
        deletes: list[str] = []
        folders: list[str] = []
        for line in self.body.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                header = value
            elif key == "file":
                content = value["content"]
                upserts[value["path"]] = (
                    base64.b64decode(content) if value.get("encoding") == "base64" else content.encode()
                )
            elif key == "deletedFile":
                deletes.append(value["path"])
            elif key == "deletedFolder":
                folders.append(value["path"])
            else:
                raise HubError(400, f"The test Hub does not support {key!r} commit operations")
        commit = self.hub.store.commit(
            found,
            rev,
            title=header.get("summary") or "commit",
            message=header.get("description", ""),
            upserts=upserts,
            deletes=deletes,
            deleted_folders=folders,
            parent_commit=header.get("parentCommit"),
        )
        url = f"{self.hub.url}/{URL_PREFIX[type]}{repo}/commit/{commit.oid}"
        self.send_json({"success": True, "commitOid": commit.oid, "commitUrl": url, "pullRequestUrl": None})

    def refs(self, type: str, repo: str) -> None:
        branches = [
            {"name": name, "ref": f"refs/heads/{name}", "targetCommit": oid}
            for name, oid in self._repo(repo, type).branches.items()
        ]
        self.send_json({"branches": branches, "converts": [], "tags": [], "pullRequests": []})

    def list_commits(self, type: str, repo: str, rev: str) -> None:
        self.send_json(
            [
                {
                    "id": c.oid,
                    "title": c.title,
                    "message": c.message,
                    "date": iso(c.date),
                    "authors": [{"user": self.hub.user}],
                }
                for c in reversed(self._repo(repo, type).history(rev))
            ]
        )

    def squash(self, type: str, repo: str, rev: str) -> None:
        found = self._repo(repo, type, write=True)
        commit = self.hub.store.squash(found, rev, self.json_body().get("message") or "Super-squash branch")
        self.send_json({"commitOid": commit.oid})

    def branch(self, type: str, repo: str, rev: str) -> None:
        found = self._repo(repo, type, write=True)
        with self.hub.store.lock:
            if self.method == "DELETE":
                if found.branches.pop(rev, None) is None:
                    raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
            elif rev in found.branches:
                raise HubError(409, f"Reference already exists: refs/heads/{rev}")
            else:
                found.branches[rev] = found.resolve(self.json_body().get("startingPoint") or "main").oid
        self.send_json({})

    def space_settings(self, repo: str, kind: str) -> None:
        found = self._repo(repo, "space", write=self.method != "GET")
        entries: dict[str, dict] = getattr(found, kind)
        body = self.json_body()
        if self.method == "POST":
            entries[body["key"]] = {**body, "updatedAt": iso(datetime.now(UTC))}
        elif self.method == "DELETE":
            entries.pop(body["key"], None)
        hidden = {"value", "key"} if kind == "secrets" else {"key"}
        self.send_json({k: {f: v for f, v in e.items() if f not in hidden} for k, e in entries.items()})

    def runtime(self, repo: str) -> None:
        self._repo(repo, "space", write=self.method == "POST")
        self.send_json(RUNTIME)

    def resolve(self, repo: str, rev: str, path: str, prefix: str | None = None) -> None:
        found = self._repo(repo, {"datasets": "dataset", "spaces": "space"}.get(prefix or "", "model"))
        commit = found.resolve(rev)
        if path not in commit.files:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound", {"X-Repo-Commit": commit.oid})
        data = commit.files[path]
        headers = {
            "ETag": f'"{git_blob_oid(data)}"',
            "X-Repo-Commit": commit.oid,
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        status, body = 200, data
        if match := re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", "")):
            start = int(match[1]) if match[1] else max(len(data) - int(match[2] or 0), 0)
            end = min(int(match[2]), len(data) - 1) if match[1] and match[2] else len(data) - 1
            if start >= len(data):
                raise HubError(
                    416, "Range not satisfiable", headers={"Content-Range": f"bytes */{len(data)}"}
                )
            status, body = 206, data[start : end + 1]
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        self.send_bytes(body, status, headers)
