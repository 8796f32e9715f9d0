"""Repo references: a Hub repo id or a local folder, the revision each one is at, adapter downloads.

An adapter is named by an `AdapterSpec`: `user/repo` follows the repo's newest commit,
`user/repo@rev` pins a commit, tag or branch; a folder is read as it is. `parse_adapter_specs`
is the one parser of `KEY=REF[@REV]` pairs (`--adapter` flags and `FLYWHEEL_ADAPTERS`).

Reading an adapter goes through `resolve_adapter` (a folder as it is, a Hub repo downloaded
at one commit); `latest_revision` asks which revision that would be without downloading.
For a folder the revision is a hash of the adapter's files, so an adapter retrained in place
counts as a new revision.

Every Hub call here is bounded by `HubLimits`: a request gets no answer for `timeout` seconds,
a download runs past `download_seconds`, or an adapter's files exceed `max_bytes` (checked from
the Hub's listing before downloading, and again while streaming) and it is abandoned.
`snapshot_download` bounds neither time nor size, so adapter files are streamed here through the
`huggingface_hub` session into `FLYWHEEL_CACHE/adapters/<owner>--<name>/<commit>/`; a commit never
changes, so a cached commit is used again without asking the Hub.

Example:
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> is_local_ref(folder), is_local_ref("me/flywheel-tweet-sft")
    (True, False)
    >>> len(latest_revision(folder))
    40
    >>> parse_adapter_specs("tweet=me/flywheel-tweet-sft@v2, arena=me/flywheel-arena-dpo")["tweet"]
    AdapterSpec(ref='me/flywheel-tweet-sft', revision='v2')
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2

from hub.errors import FlywheelError, first_line
from hub.paths import flywheel_cache

BUNDLED = "bundled"
"""The model reference that means the embedded SmolLM2-135M-Instruct."""
BUNDLED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
"""The Hub id of the embedded model (what cards cite, what a Space downloads)."""
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl")
"""Weights in pickle files: fetched with an adapter only so that its checks can refuse them by name."""
MIB = 2**20
HUB_ERRORS = (httpx2.HTTPError, OSError, ValueError)
"""What a Hub call raises when the Hub is down, slow, or refuses (HfHubHTTPError is an OSError)."""
_COMMIT = re.compile(r"[0-9a-f]{40}")


@dataclass(frozen=True)
class HubLimits:
    """How long and how much an adapter check may take from the Hub."""

    timeout: float = 10.0
    """Seconds one Hub request may wait for the server (to connect, or for the next bytes)."""
    max_bytes: int = 512 * MIB
    """Largest adapter accepted, all its downloaded files together."""
    download_seconds: float = 600.0
    """Wall-clock limit of one adapter download, so a server trickling bytes cannot hold it forever."""


DEFAULT_LIMITS = HubLimits()


class AdapterTooLarge(FlywheelError):
    """An adapter revision over `HubLimits.max_bytes`: a fact about that revision, not an outage."""


@dataclass(frozen=True)
class AdapterSpec:
    """An adapter reference: a Hub repo id or a folder, and for a Hub repo an optional pinned revision."""

    ref: str
    revision: str | None = None
    """Commit, tag or branch to serve instead of the newest commit (None: follow the repo)."""

    @classmethod
    def parse(cls, text: str) -> AdapterSpec:
        """`user/repo`, `user/repo@rev` or a folder (a folder cannot be pinned: it has no history)."""
        text = text.strip()
        if not text:
            raise FlywheelError("An adapter reference is empty; give a Hub repo id or a folder.")
        ref, sep, revision = text.rpartition("@")
        if not sep or Path(text).expanduser().exists():
            return cls(text)
        if not ref or not revision or any(ch.isspace() for ch in revision):
            raise FlywheelError(f"Adapter {text!r} is not REPO@REVISION.")
        if is_local_ref(ref):
            raise FlywheelError(f"Adapter folder {ref} cannot be pinned to a revision (@{revision}); "
                                "only Hub repos have revisions.")
        return cls(ref, revision)

    @classmethod
    def of(cls, value: AdapterSpec | str) -> AdapterSpec:
        """Accept a spec or its text form."""
        return value if isinstance(value, AdapterSpec) else cls.parse(value)

    def __str__(self) -> str:
        return f"{self.ref}@{self.revision}" if self.revision else self.ref


def parse_adapter_specs(pairs: str | Iterable[str], *,
                        arena_sides: Iterable[str | None] = ("arena",)) -> dict[str, AdapterSpec]:
    """Parse `KEY=REF[@REV]` pairs: one string (comma, space or newline separated) or a list of pairs.

    Keys are task slugs, or names used as an arena side (to compare two adapters there).
    """
    from tasks import SLUGS

    sides = [side for side in arena_sides if side]
    items = re.split(r"[,\s]+", pairs.strip()) if isinstance(pairs, str) else list(pairs)
    specs: dict[str, AdapterSpec] = {}
    for pair in filter(None, items):
        key, sep, ref = pair.partition("=")
        key, ref = key.strip(), ref.strip()
        if not sep or not key or not ref:
            raise FlywheelError(f"Adapters are given as SLUG=REPO or SLUG=REPO@REVISION, got {pair!r}.")
        if key not in SLUGS and key not in sides:
            raise FlywheelError(f"Adapter key {key!r} is neither a task ({', '.join(SLUGS)}) "
                                f"nor an arena side ({', '.join(sides) or 'none'}).")
        specs[key] = AdapterSpec.parse(ref)
    return specs


def is_local_ref(ref: str) -> bool:
    """A repo reference is a local folder if it exists or looks like a path; otherwise a Hub repo id."""
    return Path(ref).expanduser().exists() or ref.startswith((".", "/", "~")) or ref.count("/") > 1


def resolve_adapter(ref: str, *, revision: str | None = None,
                    limits: HubLimits = DEFAULT_LIMITS) -> tuple[Path, str]:
    """Return (local folder, revision) for an adapter given as a folder or a Hub repo id.

    For a Hub repo the revision is the commit sha that was downloaded. Raises FlywheelError
    (`AdapterTooLarge` for a revision over `limits.max_bytes`).
    """
    path = Path(ref).expanduser()
    if path.exists():
        if not path.is_dir():
            raise FlywheelError(f"Adapter {ref} is not a folder.")
        return path.resolve(), content_revision(path)
    if is_local_ref(ref):
        raise FlywheelError(f"Adapter folder {ref} does not exist.")
    if revision is not None and _COMMIT.fullmatch(revision) and adapter_cache(ref, revision).is_dir():
        return adapter_cache(ref, revision), revision
    info = _model_info(ref, revision, limits, files_metadata=True)
    sha = info.sha or revision or "main"
    files = {sibling.rfilename: sibling.size for sibling in info.siblings or []
             if _is_adapter_file(sibling.rfilename)}
    listed = sum(size or 0 for size in files.values())
    if listed > limits.max_bytes:
        raise AdapterTooLarge(f"Adapter repo {ref}@{sha[:12]} holds {_mib(listed)} of adapter files, "
                              f"over the {_mib(limits.max_bytes)} limit.")
    return download_commit(ref, sha, sorted(files), limits=limits), sha


def latest_revision(ref: str, *, revision: str | None = None, limits: HubLimits = DEFAULT_LIMITS) -> str:
    """The revision `resolve_adapter` would load now (cheap: no download); `revision` pins a Hub repo."""
    path = Path(ref).expanduser()
    if path.exists():
        return content_revision(path)
    return _model_info(ref, revision, limits).sha or revision or "main"


def content_revision(path: Path) -> str:
    """A 40-hex revision for an adapter folder: the hash of its config and weights."""
    digest = hashlib.sha256()
    for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
        file = path / name
        if file.exists():
            digest.update(file.read_bytes())
    return digest.hexdigest()[:40]


def adapter_cache(ref: str, commit: str) -> Path:
    """Where the files of one commit of a Hub adapter repo are kept."""
    return flywheel_cache() / "adapters" / ref.replace("/", "--") / commit


def _is_adapter_file(name: str) -> bool:
    return "/" not in name and (name == ADAPTER_CONFIG or name.endswith((".safetensors", *PICKLE_SUFFIXES)))


def _model_info(ref: str, revision: str | None, limits: HubLimits, *, files_metadata: bool = False) -> Any:
    from huggingface_hub import HfApi

    try:
        return HfApi().model_info(ref, revision=revision, timeout=limits.timeout, files_metadata=files_metadata)
    except HUB_ERRORS as error:
        raise _unreachable(ref, error, limits) from error


def download_commit(ref: str, sha: str, names: list[str], *, limits: HubLimits = DEFAULT_LIMITS) -> Path:
    """Stream the files `names` of commit `sha` into the adapter cache, within `limits`; return the folder.

    The byte count is checked while streaming, so the size limit holds even when the Hub's listing
    gave no sizes (or wrong ones). Nothing is left in the cache unless every file arrived.
    """
    target = adapter_cache(ref, sha)
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{sha[:12]}-", dir=target.parent))
    try:
        budget, deadline = limits.max_bytes, time.monotonic() + limits.download_seconds
        for name in names:
            budget -= _fetch(ref, sha, name, staging / name, budget=budget, deadline=deadline, limits=limits)
        try:
            os.rename(staging, target)
        except OSError:
            if not target.is_dir():  # otherwise another process finished the same commit first
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _fetch(ref: str, sha: str, name: str, out: Path, *, budget: int, deadline: float, limits: HubLimits) -> int:
    """Download one file, giving up past `budget` bytes or `deadline`; return its size."""
    from huggingface_hub import get_session, hf_hub_url
    from huggingface_hub.utils import build_hf_headers, hf_raise_for_status

    written = 0
    try:
        with get_session().stream("GET", hf_hub_url(ref, name, revision=sha), headers=build_hf_headers(),
                                  timeout=limits.timeout) as response, out.open("wb") as file:
            if response.status_code >= 400:
                response.read()  # the error text is in the body
            hf_raise_for_status(response)
            for chunk in response.iter_bytes():
                written += len(chunk)
                if written > budget:
                    raise AdapterTooLarge(f"Adapter repo {ref}@{sha[:12]} is over the "
                                          f"{_mib(limits.max_bytes)} limit (at {name}).")
                if time.monotonic() > deadline:
                    raise FlywheelError(f"Adapter repo {ref}@{sha[:12]} took longer than "
                                        f"{limits.download_seconds:g} s to download.")
                file.write(chunk)
    except HUB_ERRORS as error:
        raise _unreachable(ref, error, limits) from error
    return written


def _unreachable(ref: str, error: BaseException, limits: HubLimits) -> FlywheelError:
    if isinstance(error, httpx2.TimeoutException):
        return FlywheelError(f"Adapter repo {ref} did not answer within {limits.timeout:g} s.")
    return FlywheelError(f"Adapter repo {ref} could not be read: {first_line(error)}")


def _mib(size: int) -> str:
    return f"{size / MIB:.1f} MiB"
