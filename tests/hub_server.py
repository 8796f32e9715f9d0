"""A local, in-memory Hugging Face Hub for tests: the real ``huggingface_hub`` client talks to it.

    def test_push(hub_server):                      # fixture defined below
        HfApi().create_repo("user/fb", repo_type="dataset")
        ...
        assert hub_server.read("user/fb", "data.jsonl", repo_type="dataset") == b"..."

The ``hub_server`` fixture points the client at the server twice over: environment
variables (``HF_ENDPOINT``, ``HF_TOKEN``, ``HF_HOME``...), inherited by subprocesses, and
the import-time copies that ``huggingface_hub`` and ``datasets`` keep of them (see
``HubServer.patch_client``).

Uploads never need LFS or Xet: ``preupload`` answers ``uploadMode: "regular"`` for every
file, so ``huggingface_hub`` inlines contents (base64) in the commit payload even with
``hf_xet`` installed. Downloads carry no ``X-Xet-Hash`` header, so they stay plain HTTP.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from .hub_server_faults import Faults
from .hub_server_routes import HubRequestHandler, RequestRecord
from .hub_server_store import Commit, Repo, Store


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], hub: HubServer) -> None:
        self.hub = hub
        self.open_sockets: set[socket.socket] = set()
        self.sockets_lock = threading.Lock()
        super().__init__(address, HubRequestHandler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.sockets_lock:
            self.open_sockets.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.sockets_lock:
            self.open_sockets.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that time out or get their connection cut are part of the tests, not errors.
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)

    def close_connections(self) -> None:
        """Cut keep-alive connections so a stopped server really stops answering."""
        with self.sockets_lock:
            sockets = list(self.open_sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class HubServer:
    """An in-memory Hub on ``127.0.0.1``; ``start()``/``stop()`` or use it as a context manager.

    Restarting after ``stop()`` reuses the same port, so ``stop()`` doubles as "connection refused".
    Error answers quote the request's token, and ``read_only_tokens`` get 403 on writes (see
    ``tests/hub_server_auth.py``): both exist so that tests of token masking and of sync health can fail.
    """

    def __init__(
        self,
        *,
        user: str = "user",
        token: str = "hf_test_token",
        require_token: bool = False,
        read_only_tokens: tuple[str, ...] = (),
    ) -> None:
        self.user = user
        self.token = token
        self.require_token = require_token
        self.read_only_tokens = set(read_only_tokens)
        """Tokens with the ``read`` role: every write with one is refused (403); add more at any time."""
        self.store = Store()
        self.faults = Faults()
        self.requests: list[RequestRecord] = []
        self._port = 0
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:54321`` (what ``HF_ENDPOINT`` must be)."""
        return f"http://127.0.0.1:{self._port}"

    endpoint = url

    def start(self) -> HubServer:
        self._httpd = _HTTPServer(("127.0.0.1", self._port), self)
        self._port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.close_connections()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = self._thread = None

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- pointing clients at the server -------------------------------------------------

    def env(self, home: str | Path | None = None) -> dict[str, str]:
        """Environment variables for a client process (``home`` becomes ``HF_HOME``)."""
        env = {
            "HF_ENDPOINT": self.url,
            "HF_TOKEN": self.token,
            "HF_HUB_OFFLINE": "0",
            "HF_DATASETS_OFFLINE": "0",
            "HF_HUB_DISABLE_TELEMETRY": "1",
        }
        if home is not None:
            env["HF_HOME"] = str(home)
            env["HF_DATASETS_CACHE"] = str(Path(home) / "datasets")
        return env

    def patch_client(self, monkeypatch: pytest.MonkeyPatch, home: str | Path) -> None:
        """Point this process's ``huggingface_hub``/``datasets`` at the server, undone by ``monkeypatch``.

        Environment variables alone are not enough once those libraries are imported: they
        copy ``HF_ENDPOINT`` and friends into module constants at import time.
        """
        for key, value in self.env(home).items():
            monkeypatch.setenv(key, value)
        from huggingface_hub import constants, hf_api

        monkeypatch.setattr(constants, "ENDPOINT", self.url)
        monkeypatch.setattr(
            constants, "HUGGINGFACE_CO_URL_TEMPLATE", self.url + "/{repo_id}/resolve/{revision}/{filename}"
        )
        monkeypatch.setattr(constants, "HF_URL_HOSTS", constants.HF_URL_HOSTS | {"127.0.0.1"})
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "HF_HOME", str(home))
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(Path(home) / "hub"))
        monkeypatch.setattr(hf_api.api, "endpoint", self.url)  # behind module-level upload_file & co
        if "datasets" in sys.modules:  # imported later, it reads the environment set above
            from datasets import config

            monkeypatch.setattr(config, "HF_ENDPOINT", self.url)
            monkeypatch.setattr(
                config, "HUB_DATASETS_URL", self.url + "/datasets/{repo_id}/resolve/{revision}/{path}"
            )
            monkeypatch.setattr(config, "HF_HUB_OFFLINE", False)
            monkeypatch.setattr(config, "HF_DATASETS_CACHE", Path(home) / "datasets")

    # -- seeding and inspection (no HTTP involved) --------------------------------------

    def repo(self, repo_id: str, repo_type: str = "model") -> Repo:
        """The stored repo (raises ``HubError`` if missing)."""
        return self.store.get(repo_id, repo_type)

    def exists(self, repo_id: str, repo_type: str = "model") -> bool:
        return (repo_type, repo_id) in self.store.repos

    def seed(
        self,
        repo_id: str,
        files: dict[str, bytes | str],
        repo_type: str = "model",
        *,
        private: bool = False,
        message: str = "seed",
    ) -> str:
        """Create the repo if needed and commit ``files`` to ``main``; returns the commit id."""
        with self.store.lock:
            if not self.exists(repo_id, repo_type):
                self.store.create(
                    repo_id, repo_type, private=private, sdk="gradio" if repo_type == "space" else None
                )
            data = {p: c.encode() if isinstance(c, str) else c for p, c in files.items()}
            return self.store.commit(self.repo(repo_id, repo_type), "main", title=message, upserts=data).oid

    def files(self, repo_id: str, repo_type: str = "model", revision: str = "main") -> dict[str, bytes]:
        """The full tree at ``revision``."""
        return dict(self.repo(repo_id, repo_type).resolve(revision).files)

    def read(self, repo_id: str, path: str, repo_type: str = "model", revision: str = "main") -> bytes:
        """One file at ``revision`` (``KeyError`` if absent)."""
        return self.files(repo_id, repo_type, revision)[path]

    def commits(self, repo_id: str, repo_type: str = "model", revision: str = "main") -> list[Commit]:
        """History reachable from ``revision``, oldest first, including the initial commit."""
        return self.repo(repo_id, repo_type).history(revision)

    def commit_count(self, repo_id: str, repo_type: str = "model", revision: str = "main") -> int:
        """Commits made after ``create_repo`` (its initial commit is not counted)."""
        return len(self.commits(repo_id, repo_type, revision)) - 1

    def variables(self, repo_id: str) -> dict[str, str]:
        """A Space's variables as ``key -> value``."""
        return {k: v["value"] for k, v in self.repo(repo_id, "space").variables.items()}

    def secrets(self, repo_id: str) -> dict[str, str]:
        """A Space's secrets as ``key -> value`` (the API never returns values; tests may)."""
        return {k: v["value"] for k, v in self.repo(repo_id, "space").secrets.items()}


@pytest.fixture
def hub_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubServer]:
    """A running ``HubServer`` with this process (and its subprocesses) pointed at it."""
    with HubServer() as server:
        server.patch_client(monkeypatch, tmp_path / "hf_home")
        yield server


if __name__ == "__main__":  # a throwaway Hub for manual runs: python -m tests.hub_server
    with HubServer() as server:
        print(f"HF_ENDPOINT={server.url}", flush=True)
        threading.Event().wait()
