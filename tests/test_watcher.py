"""AdapterWatcher: new revisions swapped into a running engine, broken ones refused, Hub outages survived."""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi

from hub.errors import FlywheelError
from serving.engine import BASE_LABEL, Engine, GenerationSettings
from serving.models import load_model
from serving.watcher import AdapterWatcher
from tasks import get_task
from tests.adapter_factory import (
    adapter_files,
    make_adapter,
    missing_weights,
    other_base,
    pickled,
    wrong_shapes,
)

REPO = "user/flywheel-tweet-sft"
GREEDY = GenerationSettings(temperature=0, max_new_tokens=8)


@pytest.fixture
def engine(tiny_causal_lm: Path) -> Engine:
    return Engine(load_model(str(tiny_causal_lm)))


@pytest.fixture(scope="module")
def adapters(tiny_causal_lm: Path, tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, bytes]]:
    root = tmp_path_factory.mktemp("adapters")
    return [adapter_files(make_adapter(tiny_causal_lm, root / f"a{seed}", seed=seed)) for seed in (1, 2, 3)]


def write(folder: Path, files: dict[str, bytes]) -> Path:
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


def commit(files: dict[str, bytes], *, delete: tuple[str, ...] = ()) -> str:
    operations = [CommitOperationAdd(name, data) for name, data in files.items()]
    operations += [CommitOperationDelete(name) for name in delete]
    return HfApi().create_commit(REPO, operations=operations, commit_message="train").oid


def answer(engine: Engine, key: str | None = "tweet") -> str:
    *_, text = engine.stream(get_task("tweet"), {"prompt": "Advice for founders"}, GREEDY, adapter=key)
    return text


def refusals(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "serving.watcher" and "Refused" in r.getMessage()]


def test_new_folder_revision_is_swapped_in(engine: Engine, adapters, tmp_path: Path) -> None:
    folder = write(tmp_path / "tweet-adapter", adapters[0])
    watcher = AdapterWatcher(engine, {"tweet": str(folder)}, interval=60)
    assert watcher.check_now()["tweet"].startswith("loaded")
    first = engine.adapters()["tweet"].revision
    assert watcher.check_now()["tweet"].startswith("unchanged")

    write(folder, adapters[1])  # a retrained adapter saved in place
    assert watcher.check_now()["tweet"].startswith("loaded")
    second = engine.adapters()["tweet"]
    assert second.revision != first
    assert engine.label_for("tweet") == second.label
    assert watcher.status()["tweet"]["revision"] == second.revision


def test_request_in_flight_finishes_on_the_old_adapter(engine: Engine, adapters, tmp_path: Path) -> None:
    folder = write(tmp_path / "tweet-adapter", adapters[0])
    watcher = AdapterWatcher(engine, {"tweet": str(folder)}, interval=60)
    watcher.check_now()
    old = engine.adapters()["tweet"]
    old_answer = answer(engine)

    stream = engine.stream(get_task("tweet"), {"prompt": "Advice for founders"}, GREEDY, adapter="tweet")
    text = next(stream)  # this request now holds the old adapter
    write(folder, adapters[1])
    assert watcher.check_now()["tweet"].startswith("loaded")
    assert old.peft_name in engine.model.peft_config  # still there for the request in flight
    for text in stream:  # noqa: B007 - the last value is the whole answer
        pass
    assert text == old_answer
    assert old.peft_name not in engine.model.peft_config  # unloaded once that request finished
    assert answer(engine) != old_answer


BROKEN: dict[str, Callable[[dict[str, bytes]], dict[str, bytes]]] = {
    "another base model": other_base,
    "pickled weights": pickled,
    "missing weights": missing_weights,
    "wrong shapes": wrong_shapes,
}
REASONS = {"another base model": "trained on", "pickled weights": "pickled",
           "missing weights": "has no adapter_model.safetensors", "wrong shapes": "does not fit"}


@pytest.mark.parametrize("kind", list(BROKEN))
def test_broken_revision_is_refused_once_and_the_old_one_keeps_serving(
        kind: str, engine: Engine, adapters, hub_server, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    good = hub_server.seed(REPO, adapters[0])
    watcher = AdapterWatcher(engine, {"tweet": REPO}, interval=60)
    assert watcher.check_now()["tweet"] == f"loaded {REPO}@{good[:12]}"
    before = answer(engine)

    broken = BROKEN[kind](adapters[0])
    bad = commit(broken, delete=tuple(set(adapters[0]) - set(broken)))
    outcome = watcher.check_now()["tweet"]
    assert outcome.startswith(f"refused {REPO}@{bad[:12]}") and REASONS[kind] in outcome
    assert watcher.check_now()["tweet"].startswith("unchanged")  # not downloaded or logged again
    lines = refusals(caplog)
    assert len(lines) == 1 and REASONS[kind] in lines[0] and good[:12] in lines[0]
    assert engine.adapters()["tweet"].revision == good and answer(engine) == before
    assert watcher.status()["tweet"]["refused"] == bad

    fixed = commit(adapters[1], delete=tuple(set(broken) - set(adapters[1])))
    assert watcher.check_now()["tweet"] == f"loaded {REPO}@{fixed[:12]}"
    assert watcher.status()["tweet"]["refused"] is None


def test_hub_outage_is_logged_once_and_serving_goes_on(engine: Engine, adapters, hub_server,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    revision = hub_server.seed(REPO, adapters[0])
    watcher = AdapterWatcher(engine, {"tweet": REPO}, interval=60)
    watcher.check_now()
    hub_server.stop()
    caplog.set_level(logging.WARNING, logger="serving.watcher")
    assert watcher.check_now()["tweet"].startswith("unreachable")
    assert watcher.check_now()["tweet"].startswith("unreachable")
    assert len([r for r in caplog.records if "Cannot check" in r.getMessage()]) == 1
    assert engine.adapters()["tweet"].revision == revision and answer(engine)
    assert hub_server.token not in caplog.text
    hub_server.start()
    assert watcher.check_now()["tweet"].startswith("unchanged")
    assert watcher.status()["tweet"]["error"] is None


def test_missing_repo_serves_the_base_model_until_it_appears(engine: Engine, adapters, hub_server) -> None:
    watcher = AdapterWatcher(engine, {"tweet": REPO}, interval=60)
    assert watcher.check_now()["tweet"].startswith("unreachable")
    assert engine.label_for("tweet") == BASE_LABEL
    revision = hub_server.seed(REPO, adapters[0])
    assert watcher.check_now()["tweet"] == f"loaded {REPO}@{revision[:12]}"


def test_background_thread_picks_up_a_new_commit(engine: Engine, adapters, hub_server) -> None:
    hub_server.seed(REPO, adapters[0])
    watcher = AdapterWatcher(engine, {"tweet": REPO}, interval=0.1)
    watcher.check_now()
    watcher.start()
    try:
        new = commit(adapters[2])
        deadline = time.monotonic() + 60
        while engine.adapters()["tweet"].revision != new and time.monotonic() < deadline:
            time.sleep(0.05)
        assert engine.adapters()["tweet"].revision == new
    finally:
        watcher.stop()
    assert not watcher.running


def test_interval_must_be_positive(engine: Engine) -> None:
    with pytest.raises(FlywheelError, match="positive"):
        AdapterWatcher(engine, {}, interval=0)
