"""Model loading: folders, seq2seq, the bundled GGUF with its safetensors cache, clear errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hub.errors import FlywheelError
from serving import models
from serving.engine import Engine, GenerationSettings
from serving.models import load_model
from tasks import get_task
from tests.test_tasks import EXPECTED_SLUGS

ROOT = Path(__file__).resolve().parents[1]
SHORT = GenerationSettings(max_new_tokens=6, seed=0)


def final_text(engine: Engine, slug: str) -> str:
    task = get_task(slug)
    pieces = list(engine.stream(task, task.examples[0], SHORT))
    return pieces[-1] if pieces else ""


def test_causal_lm_from_a_folder_streams_text(tiny_causal_lm: Path) -> None:
    loaded = load_model(str(tiny_causal_lm))
    assert not loaded.is_seq2seq and loaded.has_chat_template
    pieces = list(Engine(loaded).stream(get_task("tweet"), {"prompt": "Advice"}, SHORT))
    assert pieces and pieces[-1].strip()
    assert all(later.startswith(earlier) for earlier, later in zip(pieces, pieces[1:], strict=False))


def test_seq2seq_model_loads_and_generates(tiny_seq2seq: Path) -> None:
    loaded = load_model(str(tiny_seq2seq))
    assert loaded.is_seq2seq
    assert final_text(Engine(loaded), "dialogue_summary").strip()


def test_folder_without_config_is_refused(tmp_path: Path) -> None:
    with pytest.raises(FlywheelError, match="no config.json"):
        load_model(str(tmp_path))


def test_missing_folder_is_refused() -> None:
    with pytest.raises(FlywheelError, match="does not exist"):
        load_model("./no/such/model/folder")


def test_cli_reports_a_broken_model_in_one_line_with_exit_2(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "demos", "--model", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error:") and len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_cli_reports_an_unknown_hub_id_with_exit_2(hub_server) -> None:
    env = {"HF_ENDPOINT": hub_server.endpoint, "HF_HUB_ETAG_TIMEOUT": "5", "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-m", "demos", "--model", "nobody/no-such-model"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert result.returncode == 2, result.stderr
    assert "Cannot load model 'nobody/no-such-model'" in result.stderr
    assert "Traceback" not in result.stderr


def test_list_tasks_needs_no_model() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "demos", "--list-tasks"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0
    assert tuple(result.stdout.split()) == EXPECTED_SLUGS


@pytest.fixture(scope="session")
def bundled_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bundled-cache")


def test_bundled_model_converts_once_then_loads_from_cache(
    bundled_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLYWHEEL_CACHE", str(bundled_cache))
    converted = models.bundled_model_dir()
    assert (converted / "model.safetensors").exists() and (converted / "tokenizer.json").exists()

    def must_not_convert(*args, **kwargs):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(models, "_convert_gguf", must_not_convert)
    loaded = load_model()
    assert loaded.base_id == models.BUNDLED_HUB_ID and loaded.has_chat_template
    text = final_text(Engine(loaded), "tweet")
    assert len(text.split()) >= 2
