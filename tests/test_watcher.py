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
from hub.repos import AdapterSpec, HubLimits
from serving.engine import BASE_LABEL, Engine, GenerationSettings
from serving.injection import ModelRecord
from serving.models import load_model
from serving.watcher import AdapterWatcher
from tasks import get_task
from tests.adapter_factory import (
    adapter_files,
    base_weights_inside,
    make_adapter,
    missing_weights,
    nan_weights,
    other_base,
    overflowing,
    pickled,
    unknown_targets,
    wrong_rank,
    wrong_shapes,
)

REPO = "user/flywheel-tweet-sft"
# A high repetition penalty keeps the tiny model's greedy answers varied, so any change to the model shows.
GREEDY = GenerationSettings(temperature=0, max_new_tokens=12, repetition_penalty=2.0)


@pytest.fixture
def engine(tiny_causal_lm: Path) -> Engine:
    return Engine(load_model(str(tiny_causal_lm)))


@pytest.fixture(scope="module")
def adapters(tiny_causal_lm: Path, tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, bytes]]:
    root = tmp_path_factory.mktemp("adapters")
    return [adapter_files(make_adapter(tiny_causal_lm, root / f"a{seed}", seed=seed)) for seed in (1, 2, 3)]


@pytest.fixture(scope="module")
def other_targets(tiny_causal_lm: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """An adapter on k_proj and o_proj: loading it wraps layers that no other adapter uses."""
    folder = tmp_path_factory.mktemp("other-targets") / "a"
    return adapter_files(make_adapter(tiny_causal_lm, folder, seed=4, targets=("k_proj", "o_proj")))


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


def scores(engine: Engine, key: str | None = None) -> bytes:
    """The raw next-token scores of the base model (key None) or an adapter, as bytes."""
    import contextlib

    import torch

    task = get_task("tweet")
    model = engine.model
    if key is not None:
        model.set_adapter(engine.adapters()[key].peft_name)
    context = model.disable_adapter() if key is None and hasattr(model, "disable_adapter") else contextlib.nullcontext()
    with context, torch.no_grad():
        return model(**engine.encode(task, task.examples[0])).logits.numpy().tobytes()


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
    "wrong rank": wrong_rank,
    "NaN weights": nan_weights,
    "unknown targets": unknown_targets,
    "base weights inside": base_weights_inside,
    "overflowing weights": overflowing,
}
REASONS = {"another base model": "trained on", "pickled weights": "pickled",
           "missing weights": "has no adapter_model.safetensors", "wrong shapes": "does not fit",
           "wrong rank": "config says r=8", "NaN weights": "NaN or infinite values",
           "unknown targets": "which this base model does not have", "base weights inside": "not a LoRA matrix",
           "overflowing weights": "test answer scores are not finite"}


@pytest.mark.parametrize("kind", list(BROKEN))
def test_broken_revision_is_refused_once_and_the_old_one_keeps_serving(
        kind: str, engine: Engine, adapters, hub_server, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    good = hub_server.seed(REPO, adapters[0])
    watcher = AdapterWatcher(engine, {"tweet": REPO}, interval=60)
    assert watcher.check_now()["tweet"] == f"loaded {REPO}@{good[:12]}"
    before, base_before = answer(engine), answer(engine, None)

    broken = BROKEN[kind](adapters[0])
    bad = commit(broken, delete=tuple(set(adapters[0]) - set(broken)))
    outcome = watcher.check_now()["tweet"]
    assert outcome.startswith(f"refused {REPO}@{bad[:12]}") and REASONS[kind] in outcome
    assert watcher.check_now()["tweet"].startswith("unchanged")  # not downloaded or logged again
    lines = refusals(caplog)
    assert len(lines) == 1 and REASONS[kind] in lines[0] and good[:12] in lines[0]
    assert engine.adapters()["tweet"].revision == good and answer(engine) == before
    assert answer(engine, None) == base_before
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


REFUSED_BY_THE_MODEL = {"wrong rank": wrong_rank, "NaN weights": nan_weights, "overflowing weights": overflowing}


@pytest.mark.parametrize("kind", list(REFUSED_BY_THE_MODEL))
def test_a_refused_first_adapter_leaves_the_base_model_as_it_was(kind: str, engine: Engine, adapters,
                                                                 tmp_path: Path) -> None:
    base_model = engine.model
    record, before, base_scores = ModelRecord.of(base_model), answer(engine, None), scores(engine)
    folder = write(tmp_path / "broken", REFUSED_BY_THE_MODEL[kind](adapters[0]))
    with pytest.raises(FlywheelError, match=REASONS[kind]):
        engine.load_adapter("tweet", str(folder))
    assert engine.model is base_model and ModelRecord.of(base_model) == record
    assert engine.adapters() == {} and engine.label_for("tweet") == BASE_LABEL
    assert answer(engine, None) == before and answer(engine, "tweet") == before
    assert scores(engine) == base_scores


@pytest.mark.parametrize("kind", list(REFUSED_BY_THE_MODEL))
def test_a_refused_adapter_for_new_layers_leaves_the_others_byte_identical(
        kind: str, engine: Engine, adapters, other_targets, tmp_path: Path) -> None:
    engine.load_adapter("tweet", str(write(tmp_path / "tweet", adapters[0])))
    record = ModelRecord.of(engine.model)
    before = {key: (answer(engine, key), scores(engine, key)) for key in ("tweet", None)}
    folder = write(tmp_path / "broken", REFUSED_BY_THE_MODEL[kind](other_targets))
    for key in ("tweet", "arena"):  # replacing a served adapter, and adding one beside it
        with pytest.raises(FlywheelError, match=REASONS[kind]):
            engine.load_adapter(key, str(folder))
        assert ModelRecord.of(engine.model) == record
        assert {key: (answer(engine, key), scores(engine, key)) for key in ("tweet", None)} == before
    assert list(engine.adapters()) == ["tweet"]


def test_a_pinned_adapter_is_never_moved(engine: Engine, adapters, hub_server) -> None:
    pinned = hub_server.seed(REPO, adapters[0])
    commit(adapters[1])  # the repo has moved on before the app even starts
    watcher = AdapterWatcher(engine, {"tweet": f"{REPO}@{pinned}", "arena": AdapterSpec(REPO)}, interval=60)
    assert watcher.check_now()["tweet"] == f"loaded {REPO}@{pinned[:12]}"
    newest = commit(adapters[2])
    outcomes = watcher.check_now()
    assert outcomes["tweet"] == f"unchanged {REPO}@{pinned[:12]} (pinned)"
    assert outcomes["arena"] == f"loaded {REPO}@{newest[:12]}"  # the same repo, unpinned, follows
    assert engine.adapters()["tweet"].revision == pinned
    assert watcher.status()["tweet"]["pinned"] == pinned and watcher.status()["arena"]["pinned"] is None


def test_a_pin_to_a_branch_is_resolved_once(engine: Engine, adapters, hub_server) -> None:
    first = hub_server.seed(REPO, adapters[0])
    watcher = AdapterWatcher(engine, {"tweet": f"{REPO}@main"}, interval=60)
    assert watcher.check_now()["tweet"] == f"loaded {REPO}@{first[:12]}"
    commit(adapters[1])
    assert watcher.check_now()["tweet"].endswith("(pinned)")
    assert engine.adapters()["tweet"].revision == first


def test_an_adapter_over_the_size_limit_is_refused_without_downloading(engine: Engine, adapters,
                                                                       hub_server) -> None:
    revision = hub_server.seed(REPO, adapters[0])
    size = sum(len(data) for data in adapters[0].values())
    watcher = AdapterWatcher(engine, {"tweet": REPO}, interval=60, limits=HubLimits(max_bytes=size - 1))
    outcome = watcher.check_now()["tweet"]
    assert outcome.startswith(f"refused {REPO}@{revision[:12]}") and "limit" in outcome
    assert watcher.check_now()["tweet"] == f"unchanged {REPO}@{revision[:12]} (refused)"
    assert not [r for r in hub_server.requests if "/resolve/" in r.path]
    assert engine.label_for("tweet") == BASE_LABEL

    roomy = AdapterWatcher(engine, {"tweet": REPO}, interval=60, limits=HubLimits(max_bytes=size))
    assert roomy.check_now()["tweet"] == f"loaded {REPO}@{revision[:12]}"


def test_a_hanging_hub_is_reported_unreachable_within_the_timeout(engine: Engine, adapters, hub_server) -> None:
    revision = hub_server.seed(REPO, adapters[0])
    hub_server.faults.delay = 120  # far longer than the test could wait: only the timeout gets us out
    watcher = AdapterWatcher(engine, {"tweet": REPO}, interval=60, limits=HubLimits(timeout=0.5))
    assert watcher.check_now()["tweet"] == f"unreachable {REPO}: Adapter repo {REPO} did not answer within 0.5 s."
    assert engine.label_for("tweet") == BASE_LABEL
    hub_server.faults.reset()
    assert watcher.check_now()["tweet"] == f"loaded {REPO}@{revision[:12]}"


def test_a_download_that_hangs_is_abandoned_and_retried(engine: Engine, adapters, hub_server) -> None:
    from tests.hub_server_faults import DOWNLOADS

    revision = hub_server.seed(REPO, adapters[0])
    hub_server.faults.scope, hub_server.faults.delay = DOWNLOADS, 120
    watcher = AdapterWatcher(engine, {"tweet": REPO}, interval=60, limits=HubLimits(timeout=0.5))
    assert watcher.check_now()["tweet"].endswith("did not answer within 0.5 s.")
    hub_server.faults.reset()
    assert watcher.check_now()["tweet"] == f"loaded {REPO}@{revision[:12]}"


def test_interval_must_be_positive(engine: Engine) -> None:
    with pytest.raises(FlywheelError, match="positive"):
        AdapterWatcher(engine, {}, interval=0)
