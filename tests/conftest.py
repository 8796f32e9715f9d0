"""Shared fixtures: an isolated FLYWHEEL_HOME per test, tiny models built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.tiny_models import build_causal_lm, build_seq2seq

# Tests never touch the network: the Hub is either absent or our local test server.
os.environ.setdefault("HF_HUB_OFFLINE", "0")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
# One torch thread per process (inherited by the trainers, apps and CLIs tests start): the tiny models'
# ops are too small to split, and two threads waiting on each other on a busy 2-core machine made the
# suite ~2x slower (DPO's test 75 s -> 4 s). Set before anything imports torch, which reads it once.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True)
def flywheel_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test writes under its own FLYWHEEL_HOME; the model cache is shared per session."""
    home = tmp_path / "flywheel-home"
    monkeypatch.setenv("FLYWHEEL_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def tiny_causal_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_causal_lm(tmp_path_factory.mktemp("tiny-causal"))


@pytest.fixture(scope="session")
def tiny_seq2seq(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_seq2seq(tmp_path_factory.mktemp("tiny-t5"))


# The local Hub-compatible server (function-scoped fixture `hub_server`).
from tests.hub_server import hub_server  # noqa: E402,F401
