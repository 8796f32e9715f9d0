"""Where Flywheel keeps things on this machine: `FLYWHEEL_HOME` and `FLYWHEEL_CACHE`.

Example:
    >>> import tempfile
    >>> storage = Path(tempfile.mkdtemp())                  # stands in for a Space's /data
    >>> choose_home({"SPACE_ID": "me/flywheel"}, persistent_root=storage).path == storage / "flywheel"
    True
    >>> choose_home({"SPACE_ID": "me/flywheel"}, persistent_root=storage / "absent").warning[:31]
    'This Space has no persistent st'
    >>> choose_home({}).warning is None                     # not on a Space: nothing to warn about
    True
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

PERSISTENT_STORAGE = Path("/data")
"""Where a Hugging Face Space mounts its persistent storage, when the Space has some."""
HOME_ENV, SPACE_ENV = "FLYWHEEL_HOME", "SPACE_ID"


@dataclass(frozen=True)
class Home:
    """The chosen `FLYWHEEL_HOME` and, on a Space, why it may not survive a restart."""

    path: Path
    warning: str | None = None
    """None, or a sentence for the Space's status panel: this home is wiped when the Space restarts."""


def choose_home(environ: Mapping[str, str] | None = None, *, persistent_root: Path | None = None) -> Home:
    """The one rule for `FLYWHEEL_HOME` (`environ` defaults to `os.environ`).

    `FLYWHEEL_HOME` when set; else, on a Space (`SPACE_ID` set) whose persistent storage
    `persistent_root` (default `PERSISTENT_STORAGE`) is a writable directory,
    `<persistent_root>/flywheel`; else `./.flywheel`.
    On a Space, a home outside writable persistent storage carries a warning: a Space's own
    disk is reset on every restart, so feedback not yet pushed to the Hub would be lost.
    """
    env = os.environ if environ is None else environ
    root = Path(persistent_root if persistent_root is not None else PERSISTENT_STORAGE)
    persistent = root.is_dir() and os.access(root, os.W_OK | os.X_OK)
    configured = env.get(HOME_ENV)
    if configured:
        path = Path(configured).expanduser().resolve()
    elif env.get(SPACE_ENV) and persistent:
        path = root.resolve() / "flywheel"
    else:
        path = Path(".flywheel").resolve()
    if not env.get(SPACE_ENV) or (persistent and path.is_relative_to(root.resolve())):
        return Home(path)
    where = (f"{HOME_ENV}={path} is outside the persistent storage {root}" if persistent
             else f"This Space has no persistent storage ({root})")
    return Home(path, f"{where}: feedback is kept in {path}, which is wiped when the Space restarts, so rows "
                      "not yet pushed to the Hub are lost then. Enable persistent storage in the Space "
                      f"settings (it is mounted at {root}) and leave {HOME_ENV} unset.")


def flywheel_home() -> Path:
    """Root of everything Flywheel writes locally (see `choose_home`; default `./.flywheel`)."""
    return choose_home().path


def flywheel_cache() -> Path:
    """Converted models shared between homes (default `FLYWHEEL_HOME/cache`)."""
    configured = os.environ.get("FLYWHEEL_CACHE")
    return Path(configured).expanduser().resolve() if configured else flywheel_home() / "cache"


def feedback_home() -> Path:
    """The local feedback dataset folder."""
    return flywheel_home() / "feedback"


def adapters_home() -> Path:
    """Where trainers save adapters that are not pushed to the Hub."""
    return flywheel_home() / "adapters"
