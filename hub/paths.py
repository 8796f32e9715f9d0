"""Where Flywheel keeps things on this machine: `FLYWHEEL_HOME` and `FLYWHEEL_CACHE`."""

from __future__ import annotations

import os
from pathlib import Path


def flywheel_home() -> Path:
    """Root of everything Flywheel writes locally (default `./.flywheel`)."""
    return Path(os.environ.get("FLYWHEEL_HOME", ".flywheel")).expanduser().resolve()


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
