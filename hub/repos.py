"""Repo references: a Hub repo id or a local folder, and the revision each one is at.

Reading an adapter goes through `resolve_adapter` (a folder as it is, a Hub repo downloaded
at one commit); `latest_revision` asks which revision that would be without downloading.
For a folder the revision is a hash of the adapter's files, so an adapter retrained in place
counts as a new revision.

Example:
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> is_local_ref(folder), is_local_ref("me/flywheel-tweet-sft")
    (True, False)
    >>> len(latest_revision(folder))
    40
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from hub.errors import FlywheelError, first_line

BUNDLED = "bundled"
"""The model reference that means the embedded SmolLM2-135M-Instruct."""
BUNDLED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
"""The Hub id of the embedded model (what cards cite, what a Space downloads)."""
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_FILES = [ADAPTER_CONFIG, "*.safetensors", "*.bin", "*.pt", "*.pth", "README.md"]
"""What an adapter download fetches (pickles too, so that checks can refuse them by name)."""


def is_local_ref(ref: str) -> bool:
    """A repo reference is a local folder if it exists or looks like a path; otherwise a Hub repo id."""
    return Path(ref).expanduser().exists() or ref.startswith((".", "/", "~")) or ref.count("/") > 1


def resolve_adapter(ref: str, *, revision: str | None = None) -> tuple[Path, str]:
    """Return (local folder, revision) for an adapter given as a folder or a Hub repo id.

    For a Hub repo the revision is the commit sha that was downloaded.
    """
    path = Path(ref).expanduser()
    if path.exists():
        if not path.is_dir():
            raise FlywheelError(f"Adapter {ref} is not a folder.")
        return path.resolve(), content_revision(path)
    if is_local_ref(ref):
        raise FlywheelError(f"Adapter folder {ref} does not exist.")
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError

    try:
        sha = HfApi().model_info(ref, revision=revision).sha or (revision or "main")
        local = snapshot_download(ref, revision=sha, allow_patterns=ADAPTER_FILES)
    except (HfHubHTTPError, OSError, ValueError) as error:
        raise FlywheelError(f"Adapter repo {ref} could not be downloaded: {first_line(error)}") from error
    return Path(local), sha


def latest_revision(ref: str) -> str:
    """The revision `resolve_adapter` would load now (cheap: no download)."""
    path = Path(ref).expanduser()
    if path.exists():
        return content_revision(path)
    from huggingface_hub import HfApi

    return HfApi().model_info(ref).sha or "main"


def content_revision(path: Path) -> str:
    """A 40-hex revision for an adapter folder: the hash of its config and weights."""
    digest = hashlib.sha256()
    for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
        file = path / name
        if file.exists():
            digest.update(file.read_bytes())
    return digest.hexdigest()[:40]
