"""Feedback rows reach a Hub dataset repo in batches, whatever the Hub does, without ever blocking log()."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import datasets
import pytest

import hub.feedback.sync
from hub.cli import main as hub_main
from hub.feedback.callback import FeedbackCallback
from hub.feedback.loading import load_feedback, load_feedback_snapshot
from tests.feedback_worker import rate, rate_in_threads
from tests.hub_server import HubServer
from tests.hub_server_faults import COMMITS, UPLOADS

ROOT = Path(__file__).resolve().parents[1]
REPO = "user/flywheel-feedback"


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """huggingface_hub retries a failing request 5 times over ~23 s; shorten its waits for tests."""
    from huggingface_hub.utils import _http

    monkeypatch.setattr(_http, "time", SimpleNamespace(sleep=lambda seconds: time.sleep(min(seconds, 0.02))))


def hub_ids(server: HubServer, repo: str = REPO, revision: str = "main") -> list[str]:
    if not server.exists(repo, "dataset"):
        return []
    files = server.files(repo, "dataset", revision)
    return [json.loads(line)["id"] for path, data in sorted(files.items()) if path.endswith(".jsonl")
            for line in data.splitlines()]


def wait_for(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_many_rows_go_up_in_one_commit_per_interval(hub_server: HubServer, tmp_path: Path) -> None:
    store = FeedbackCallback(folder=tmp_path / "feedback", repo_id=REPO, every=60)
    store.setup()
    assert store.push(timeout=30)  # the card
    rate_in_threads(store, threads=8, records=25)
    before = hub_server.commit_count(REPO, "dataset")
    assert store.push(timeout=30)
    assert hub_server.commit_count(REPO, "dataset") == before + 1
    assert hub_server.commits(REPO, "dataset")[-1].title == "Add 200 feedback rows"
    assert len(hub_ids(hub_server)) == 200
    assert hub_server.repo(REPO, "dataset").private
    assert store.push(timeout=30) and hub_server.commit_count(REPO, "dataset") == before + 1  # nothing new
    store.close()


def test_a_short_interval_still_batches(hub_server: HubServer, tmp_path: Path) -> None:
    store = FeedbackCallback(folder=tmp_path / "feedback", repo_id=REPO, every=0.005)  # 0.3 s
    written = [rate(store, f"row {i}")["id"] for i in range(300) if not time.sleep(0.003)]
    wait_for(lambda: len(hub_ids(hub_server)) == 300)
    commits = hub_server.commit_count(REPO, "dataset")
    assert 1 <= commits <= 30, commits
    assert sorted(hub_ids(hub_server)) == sorted(written)
    store.close()


def test_hub_down_at_start_then_back(hub_server: HubServer, tmp_path: Path, fast_retries: None,
                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    hub_server.faults.down = True  # every request answers 503, create_repo included
    store = FeedbackCallback(folder=tmp_path / "feedback", repo_id=REPO, every=0.005)
    ids = [rate(store, f"row {i}")["id"] for i in range(20)]  # each call returns: nothing waits for the Hub
    assert len(ids) == 20 and not hub_server.exists(REPO, "dataset")
    wait_for(lambda: store.sync.last_error is not None)
    hub_server.faults.reset()
    wait_for(lambda: sorted(hub_ids(hub_server)) == sorted(ids))
    assert "unreachable" in caplog.text and hub_server.token not in caplog.text
    store.close()


def test_failed_pushes_are_retried_after_5xx_drops_and_refusals(hub_server: HubServer, tmp_path: Path,
                                                                fast_retries: None) -> None:
    store = FeedbackCallback(folder=tmp_path / "feedback", repo_id=REPO, every=60)
    assert store.push(timeout=30)
    ids = []
    hub_server.faults.scope = UPLOADS
    for fault in ("down", "drop_all", "stopped"):
        if fault == "stopped":
            hub_server.faults.reset()
            hub_server.stop()  # connection refused
        else:
            setattr(hub_server.faults, fault, True)
        ids += [rate(store, f"{fault} {i}")["id"] for i in range(5)]
        assert store.push(timeout=30) is False, fault
        assert store.sync.scheduler.last_error
    hub_server.start()
    assert hub_ids(hub_server) == []
    assert store.push(timeout=30)
    assert sorted(hub_ids(hub_server)) == sorted(ids)
    store.close()


def test_a_hanging_hub_times_out_and_log_still_returns(hub_server: HubServer, tmp_path: Path,
                                                       fast_retries: None,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hub.feedback.sync, "DEFAULT_REQUEST_TIMEOUT", 0.3)
    store = FeedbackCallback(folder=tmp_path / "feedback", repo_id=REPO, every=60)
    assert store.push(timeout=30)
    hub_server.faults.scope, hub_server.faults.delay = COMMITS, 1.5
    ids = [rate(store, "before")["id"]]
    pushing = store.sync.scheduler.trigger()
    ids += [rate(store, f"during {i}")["id"] for i in range(20)]  # returns while the push hangs
    pushing.result(timeout=30)
    assert "Timeout" in store.sync.scheduler.last_error
    hub_server.faults.reset()
    assert store.push(timeout=30)
    assert sorted(hub_ids(hub_server)) == sorted(ids)
    time.sleep(2)  # the timed-out commit reaches the server late: it must not replace the newer file
    assert sorted(hub_ids(hub_server)) == sorted(ids)
    store.close()


def test_restart_after_kill_9_uploads_rows_that_never_reached_the_hub(hub_server: HubServer,
                                                                      tmp_path: Path) -> None:
    folder = tmp_path / "feedback"
    hub_server.faults.down = True
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.feedback_worker", "--folder", str(folder), "--repo", REPO,
         "--every", "0.005", "--records", "0", "--threads", "2", "--print-ids"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    printed = [child.stdout.readline() for _ in range(100)]
    os.kill(child.pid, signal.SIGKILL)
    rest, _ = child.communicate(timeout=30)
    accepted = {line.strip() for line in printed + rest.splitlines(keepends=True) if line.endswith("\n")}
    (written,) = folder.glob("data/tweet/*/*.jsonl")
    with written.open("ab") as handle:
        handle.write(b'{"id": "a row cut by a crash')  # never complete: must not be uploaded
    hub_server.faults.reset()
    assert hub_ids(hub_server) == []

    restarted = FeedbackCallback(folder=folder, repo_id=REPO, every=60)
    assert restarted.push(timeout=30)
    assert accepted <= set(hub_ids(hub_server))
    assert len(hub_ids(hub_server)) == written.read_bytes().count(b"\n")  # the cut row stayed local
    restarted.close()
    commits = hub_server.commit_count(REPO, "dataset")
    again = FeedbackCallback(folder=folder, repo_id=REPO, every=60)
    assert again.push(timeout=30) and hub_server.commit_count(REPO, "dataset") == commits  # nothing re-sent
    again.close()


def test_load_dataset_and_load_feedback_read_the_hub_repo(hub_server: HubServer, tmp_path: Path) -> None:
    store = FeedbackCallback(folder=tmp_path / "feedback", repo_id=REPO, every=60)
    summary = {"dialogue": "#Person1#: Hi\n#Person2#: Hello"}
    store.log(task="dialogue_summary", kind="edit", inputs=summary, completion="Hi.", edited="A greeting.")
    store.log(task="dialogue_summary", kind="flag", inputs=summary, completion="Hi.", label="great",
              model={"base": "tiny", "adapter": None, "revision": None})
    store.log(task="arena", kind="preference", inputs={"prompt": "p"}, chosen="a", rejected="b", label="B")
    assert store.push(timeout=30)
    first = hub_server.commits(REPO, "dataset")[-1].oid

    loaded = datasets.load_dataset(REPO, "dialogue_summary", split="train")
    assert sorted(loaded["kind"]) == ["edit", "flag"]
    snapshot = load_feedback_snapshot(REPO, task="dialogue_summary", kind="flag")
    assert (len(snapshot.dataset), snapshot.revision, snapshot.source) == (1, first, REPO)

    store.log(task="dialogue_summary", kind="flag", inputs=summary, completion="Hello.", label="inaccurate")
    assert store.push(timeout=30)
    assert len(load_feedback(REPO, task="dialogue_summary")) == 3
    assert len(load_feedback(REPO, task="dialogue_summary", revision=first)) == 2
    assert len(load_feedback(REPO, task="arena")) == 1
    store.close()


def test_the_token_is_never_written_or_logged(hub_server: HubServer, tmp_path: Path, fast_retries: None,
                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "hf_SecretTokenForFeedback42"
    folder = tmp_path / "feedback"
    hub_server.faults.fail_next(3, status=500)
    store = FeedbackCallback(folder=folder, repo_id=REPO, every=0.005, token=secret)
    rate(store)
    wait_for(lambda: len(hub_ids(hub_server)) == 1)
    hub_server.faults.scope, hub_server.faults.down = UPLOADS, True
    rate(store)
    assert store.push(timeout=30) is False
    hub_server.faults.reset()
    assert store.push(timeout=30)
    store.close()
    assert any(request.token == secret for request in hub_server.requests)
    for token in (secret, hub_server.token):
        assert token not in caplog.text
        assert all(token.encode() not in path.read_bytes() for path in folder.rglob("*") if path.is_file())
        assert all(token.encode() not in data for data in hub_server.files(REPO, "dataset").values())


def test_two_processes_sharing_a_folder_push_every_row_once(hub_server: HubServer, tmp_path: Path) -> None:
    folder = tmp_path / "feedback"
    one = FeedbackCallback(folder=folder, repo_id=REPO, every=0.005)
    two = FeedbackCallback(folder=folder, repo_id=REPO, every=0.005)  # as a second app process would
    ids = [rate(store, f"{n}")["id"] for n in range(40) for store in (one, two)]
    wait_for(lambda: sorted(hub_ids(hub_server)) == sorted(ids))
    assert one.push(timeout=30) and two.push(timeout=30)
    titles = [commit.title for commit in hub_server.commits(REPO, "dataset")]
    assert sum(int(title.split()[1]) for title in titles if title.startswith("Add ")) == 80  # none twice
    one.close()
    two.close()


def test_hub_read_errors_and_stats_of_a_hub_repo(hub_server: HubServer, tmp_path: Path, capsys) -> None:
    from hub.cli import main
    from hub.errors import FlywheelError

    with pytest.raises(FlywheelError, match="was not found on the Hub"):
        load_feedback("user/missing", task="tweet")
    store = FeedbackCallback(folder=tmp_path / "feedback", repo_id=REPO, every=60)
    rate(store)
    assert store.push(timeout=30)
    store.close()
    with pytest.raises(FlywheelError, match="has no revision nope"):
        load_feedback(REPO, task="tweet", revision="nope")
    assert main(["feedback", "stats", "--repo", REPO]) == 0
    out = capsys.readouterr().out
    assert f"Feedback in {REPO} (revision {hub_server.commits(REPO, 'dataset')[-1].oid})" in out
    assert out.splitlines()[-1].split() == ["total", "0", "1", "0", "0", "1"]  # the home never synced to it
    hub_server.stop()
    assert main(["feedback", "stats", "--repo", REPO]) == 2
    assert capsys.readouterr().err.startswith(f"error: Feedback repo {REPO} could not be read")


def test_pushes_do_not_pile_up_while_one_is_slow(hub_server: HubServer, tmp_path: Path) -> None:
    store = FeedbackCallback(folder=tmp_path / "feedback", repo_id=REPO, every=60)
    assert store.push(timeout=30)
    hub_server.faults.scope, hub_server.faults.delay = COMMITS, 1.0
    rate(store)
    scheduler = store.sync.scheduler
    futures = [scheduler.trigger() for _ in range(20)]
    assert len({id(future) for future in futures}) <= 2  # the running push and at most one waiting
    rate(store, "written while a push waits")
    assert store.push(timeout=30)  # a push asked for after a row was written includes it
    assert len(hub_ids(hub_server)) == 2
    store.close()


@pytest.mark.parametrize("repo_exists", [True, False], ids=["commit-refused", "create-refused"])
def test_a_read_only_token_is_a_403_in_sync_health_with_the_token_masked(
        hub_server: HubServer, tmp_path: Path, capsys, caplog: pytest.LogCaptureFixture, repo_exists: bool) -> None:
    caplog.set_level(logging.DEBUG, logger="hub")  # ours at every level; libraries' warnings and errors
    reader = "readonly-token-for-feedback-42"  # not shaped like hf_...: only deliberate masking hides it
    hub_server.read_only_tokens.add(reader)
    if repo_exists:
        hub_server.seed(REPO, {}, "dataset", private=True)
    folder = tmp_path / "feedback"
    store = FeedbackCallback(folder=folder, repo_id=REPO, every=60, token=reader)
    ids = [rate(store, f"row {i}")["id"] for i in range(3)]
    assert store.push(timeout=30) is False
    health = store.health()["sync"]
    assert (health["repo_id"], health["rows_waiting"], health["last_push"]) == (REPO, 3, None)
    assert "403 Forbidden: You don't have the rights to write" in health["last_error"]
    assert "(request token: ***)" in health["last_error"] and health["last_error_at"]
    assert any(r.status == 403 and r.token == reader for r in hub_server.requests)  # the Hub quoted it

    assert hub_main(["feedback", "stats", "--repo", str(folder)]) == 0  # as another process sees it
    line = capsys.readouterr().out.splitlines()[-1]
    assert line.startswith(f"Hub sync of {folder} to {REPO} ({hub_server.url}): last push never, 3 rows waiting")
    assert "403 Forbidden" in line
    store.close()  # the last push is refused too: the rows stay local
    assert "not pushed" in caplog.text and "403" in caplog.text
    assert reader not in caplog.text and reader not in line and reader not in json.dumps(health)
    assert all(reader.encode() not in path.read_bytes() for path in folder.rglob("*") if path.is_file())
    assert hub_ids(hub_server) == []

    fixed = FeedbackCallback(folder=folder, repo_id=REPO, every=60)  # restarted with a write token
    assert fixed.push(timeout=30)
    assert sorted(hub_ids(hub_server)) == sorted(ids)
    health = fixed.health()["sync"]
    assert (health["rows_waiting"], health["last_error"], health["last_error_at"]) == (0, None, None)
    assert health["last_push"]
    fixed.close()


def test_a_repo_deleted_and_created_again_gets_every_row_again(hub_server: HubServer, tmp_path: Path) -> None:
    from huggingface_hub import HfApi

    store = FeedbackCallback(folder=tmp_path / "feedback", repo_id=REPO, every=60)
    ids = [rate(store, f"row {i}")["id"] for i in range(5)]
    assert store.push(timeout=30) and sorted(hub_ids(hub_server)) == sorted(ids)
    HfApi().delete_repo(REPO, repo_type="dataset")
    HfApi().create_repo(REPO, repo_type="dataset", private=True)
    ids.append(rate(store, "after the repo came back")["id"])
    assert store.push(timeout=30)
    assert sorted(hub_ids(hub_server)) == sorted(ids)
    assert "README.md" in hub_server.files(REPO, "dataset")  # the card too: load_dataset works again

    HfApi().delete_repo(REPO, repo_type="dataset")  # and not created again: the sync creates it
    assert store.push(timeout=30)
    assert sorted(hub_ids(hub_server)) == sorted(ids) and hub_server.repo(REPO, "dataset").private
    assert store.health()["sync"]["rows_waiting"] == 0
    store.close()


def test_close_makes_a_last_connection_attempt_at_once(hub_server: HubServer, tmp_path: Path,
                                                       fast_retries: None) -> None:
    hub_server.faults.down = True
    store = FeedbackCallback(folder=tmp_path / "feedback", repo_id=REPO, every=60)  # backoff up to an hour
    ids = [rate(store, f"row {i}")["id"] for i in range(3)]
    wait_for(lambda: store.sync.last_error is not None)
    assert not store.sync.connected and store.health()["sync"]["rows_waiting"] == 3
    hub_server.faults.reset()
    store.close(timeout=60)
    assert sorted(hub_ids(hub_server)) == sorted(ids)
