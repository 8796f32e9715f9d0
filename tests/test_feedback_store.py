"""The local feedback store: durable appends, one file per process; safe under threads, processes, kill -9."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import datasets
import pytest
import yaml

import hub.feedback.records
import hub.feedback.store
from hub.errors import FlywheelError
from hub.feedback.callback import FeedbackCallback
from hub.feedback.loading import load_feedback
from hub.feedback.records import InvalidRecord, validate_record
from hub.feedback.store import FeedbackStore
from hub.paths import feedback_home
from tasks import SLUGS
from tests.feedback_worker import RATINGS, rate, rate_in_threads

ROOT = Path(__file__).resolve().parents[1]


def lines_of(folder: Path) -> list[bytes]:
    paths = sorted(folder.glob("data/*/*/*.jsonl"))
    return [line for path in paths for line in path.read_bytes().splitlines()]


def worker(folder: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tests.feedback_worker", "--folder", str(folder), *args],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


class FsyncWatch:
    """Wraps the real `os.fsync` (it still runs) and notes which file or directory each call made durable.

    A kill -9 test cannot catch a missing fsync (the page cache outlives the process), so this
    observes the calls instead: each is noted as (device, inode, size at that moment).
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[int, int, int]] = []
        real = os.fsync

        def fsync(fd: int) -> None:
            stat = os.fstat(fd)
            real(fd)
            self.calls.append((stat.st_dev, stat.st_ino, stat.st_size))

        monkeypatch.setattr(os, "fsync", fsync)

    def synced(self, path: Path, *, since: int = 0) -> list[int]:
        """Sizes `path` had at each fsync of it after call number `since`."""
        stat = path.stat()
        return [size for dev, ino, size in self.calls[since:] if (dev, ino) == (stat.st_dev, stat.st_ino)]


def test_log_fsyncs_the_row_and_the_new_names_before_returning(tmp_path: Path, monkeypatch) -> None:
    watch = FsyncWatch(monkeypatch)
    folder = tmp_path / "feedback"
    with FeedbackStore(folder=folder) as store:
        before = len(watch.calls)
        first = rate(store)
        day = folder / "data" / "tweet" / first["created_at"][:10]
        path = day / f"{store.writer_id}.jsonl"
        assert watch.synced(path, since=before) == [path.stat().st_size]  # after the whole row was written
        for directory in (day, day.parent, folder / "data"):  # each new name is in a synced directory
            assert watch.synced(directory, since=before), directory
        size, before = path.stat().st_size, len(watch.calls)
        second = rate(store, "Listen first.")
        assert watch.synced(path, since=before) == [path.stat().st_size] and path.stat().st_size > size
        assert not watch.synced(day, since=before)  # an existing file needs no directory fsync
        assert [json.loads(line) for line in path.read_bytes().splitlines()] == [first, second]
        assert store.count == 2


def test_concurrent_writers_share_fsyncs_and_each_returns_only_once_its_row_is_synced(tmp_path: Path,
                                                                                    monkeypatch) -> None:
    watch = FsyncWatch(monkeypatch)
    synced = os.fsync

    def slow_disk(fd: int) -> None:  # a slow disk makes writers overlap, as 32 visitors on a Space do
        threading.Event().wait(0.02)
        synced(fd)

    monkeypatch.setattr(os, "fsync", slow_disk)
    folder, writers, rows = tmp_path / "feedback", 16, 5
    returned: list[tuple[str, int]] = []  # (row id, fsync calls seen when log() returned)
    with FeedbackStore(folder=folder) as store:
        rate(store)  # creates the file and its directories
        start = threading.Barrier(writers)

        def write(n: int) -> None:
            start.wait()
            for k in range(rows):
                record = rate(store, f"Tweet {n}-{k}.")
                returned.append((record["id"], len(watch.calls)))

        threads = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        path = next((folder / "data" / "tweet").glob("*/*.jsonl"))
    data = path.read_bytes()
    ends = {json.loads(line)["id"]: data.index(line) + len(line) + 1 for line in data.splitlines()}
    stat = path.stat()
    for row_id, calls_seen in returned:
        sizes = [size for dev, ino, size in watch.calls[:calls_seen] if (dev, ino) == (stat.st_dev, stat.st_ino)]
        assert sizes and max(sizes) >= ends[row_id], row_id
    assert len(ends) == writers * rows + 1
    assert len(watch.synced(path)) < writers * rows / 2  # shared: far fewer fsyncs than rows


def test_a_closed_store_refuses_rows_so_its_last_push_holds_every_accepted_one(tmp_path: Path) -> None:
    store = FeedbackStore(folder=tmp_path)
    rate(store)
    store.close()
    with pytest.raises(FlywheelError, match="no longer accepted: the app is shutting down"):
        rate(store, "too late")
    assert len(lines_of(tmp_path)) == 1
    store.close()  # twice is fine


def test_default_folder_is_the_feedback_home() -> None:
    with FeedbackStore() as store:
        rate(store)
    assert store.folder == feedback_home() and len(lines_of(feedback_home())) == 1


def test_an_invalid_record_writes_nothing(tmp_path: Path) -> None:
    with FeedbackStore(folder=tmp_path) as store:
        with pytest.raises(InvalidRecord, match="clarity"):
            store.log(task="tweet", kind="rating", inputs={"prompt": "x"}, completion="y",
                      ratings={**RATINGS, "clarity": 9})
        assert lines_of(tmp_path) == []
        rate(store)
        with pytest.raises(InvalidRecord, match="cannot be stored as JSON"):
            store.log(task="tweet", kind="rating", inputs={"prompt": "x"}, completion="\ud800",
                      ratings=RATINGS)
    assert len(lines_of(tmp_path)) == 1


def test_constructor_refuses_bad_settings(tmp_path: Path) -> None:
    with pytest.raises(FlywheelError, match="positive number of minutes"):
        FeedbackStore(folder=tmp_path, every=0)
    with pytest.raises(FlywheelError, match="not a valid Hub repo id"):
        FeedbackStore(folder=tmp_path, repo_id="not a/valid//id")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(FlywheelError, match="not writable"):
        rate(FeedbackStore(folder=blocker))


def test_32_concurrent_writers_in_threads_and_processes_write_exactly_1600_rows(tmp_path: Path) -> None:
    children = [worker(tmp_path, "--threads", "8", "--records", "50") for _ in range(2)]
    store = FeedbackCallback(folder=tmp_path)
    rate_in_threads(store, threads=16, records=50, prefix="t")
    for child in children:
        assert child.wait(timeout=120) == 0, child.stderr.read()
    store.close()
    lines = lines_of(tmp_path)
    rows = [validate_record(json.loads(line)) for line in lines]
    assert len(rows) == 1600 and len({row["id"] for row in rows}) == 1600
    assert len(list(tmp_path.glob("data/tweet/*/*.jsonl"))) == 3  # one file per process
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(load_feedback(tmp_path, task="tweet")) == 1600


def test_kill_9_loses_no_row_whose_log_returned(tmp_path: Path) -> None:
    child = worker(tmp_path, "--threads", "4", "--records", "0", "--print-ids")
    printed = []
    while len(printed) < 300:
        line = child.stdout.readline()
        assert line, child.stderr.read()
        printed.append(line)
    os.kill(child.pid, signal.SIGKILL)
    rest, _ = child.communicate(timeout=30)
    assert child.returncode == -signal.SIGKILL
    printed += rest.splitlines(keepends=True)
    accepted = {line.strip() for line in printed if line.endswith("\n")}  # a half-printed id is not one
    stored = [validate_record(json.loads(line)) for line in lines_of(tmp_path)]  # every line parses
    assert accepted <= {row["id"] for row in stored}
    assert len(accepted) >= 300


def test_a_forked_child_writes_its_own_file(tmp_path: Path) -> None:
    store = FeedbackStore(folder=tmp_path)
    rate(store, "parent")
    process = multiprocessing.get_context("fork").Process(target=lambda: rate(store, "child"))
    process.start()
    process.join(timeout=60)
    assert process.exitcode == 0
    rate(store, "parent again")
    store.close()
    files = {path.name: path.read_text().count("\n") for path in tmp_path.glob("data/tweet/*/*.jsonl")}
    assert files[f"{store.writer_id}.jsonl"] == 2 and sorted(files.values()) == [1, 2]


def test_a_new_day_starts_a_new_file(tmp_path: Path, monkeypatch) -> None:
    with FeedbackStore(folder=tmp_path) as store:
        for day in ("2026-11-22", "2026-11-23"):
            monkeypatch.setattr(hub.feedback.records, "utc_now", lambda day=day: f"{day}T23:59:59Z")
            rate(store)
        assert len(store._files) == 1  # yesterday's file was closed
    days = sorted(path.parent.name for path in tmp_path.glob("data/tweet/*/*.jsonl"))
    assert days == ["2026-11-22", "2026-11-23"]


def test_session_ids_are_salted_hashes_or_none(tmp_path: Path) -> None:
    one, two = FeedbackStore(folder=tmp_path), FeedbackStore(folder=tmp_path)
    assert one.session_id("abc") == one.session_id("abc") != two.session_id("abc")
    assert one.session_id("abc") != one.session_id("abd") and len(one.session_id("abc")) == 32
    assert one.session_id(None) is None and one.session_id("") is None
    assert FeedbackStore(folder=tmp_path, session_ids=False).session_id("abc") is None
    rate(one)
    one.log(task="detox", kind="flag", inputs={"prompt": "x"}, completion="y", label="fine",
            session=one.session_id("raw-gradio-hash"))
    one.close()
    assert b"raw-gradio-hash" not in b"".join(lines_of(tmp_path))


def test_gradio_flagging_interface(tmp_path: Path) -> None:
    callback = FeedbackCallback(folder=tmp_path, task="detox")
    callback.setup([], str(tmp_path / "ignored"))
    assert callback.flag(["The fans", "cheered all night."], flag_option="fine", username="alice") == 1
    with pytest.raises(InvalidRecord, match="not one of detox's flags"):
        callback.flag(["The fans", "cheered."], flag_option="great")
    with pytest.raises(FlywheelError, match="task="):
        FeedbackCallback(folder=tmp_path).flag(["x", "y"], "fine")
    callback.close()
    (row,) = [json.loads(line) for line in lines_of(tmp_path)]
    assert row["label"] == "fine" and "alice" not in json.dumps(row)
    assert not (tmp_path / "ignored").exists()


def write_mixed(folder: Path) -> None:
    """Every kind, with fields null in some rows and set in others, spread over several files."""
    summary = {"dialogue": "#Person1#: Hi\n#Person2#: Hello"}
    generation = {"temperature": 0.7, "top_k": 50, "top_p": 0.9, "repetition_penalty": 1.1,
                  "max_new_tokens": 20, "seed": 1}
    with FeedbackStore(folder=folder) as first:
        first.log(task="dialogue_summary", kind="edit", inputs=summary, completion="Hi.",
                  edited="A greeting.")
        first.log(task="tweet", kind="rating", inputs={"prompt": "x"}, completion="y", ratings=RATINGS)
    with FeedbackStore(folder=folder) as second:
        second.log(task="dialogue_summary", kind="flag", inputs=summary, completion="Hi.", label="great",
                   model={"base": "tiny", "adapter": "me/a", "revision": "abc"}, generation=generation,
                   session=second.session_id("s"))
        second.log(task="arena", kind="preference", inputs={"prompt": "p"}, chosen="a", rejected="b",
                   label="A")
        second.log(task="arena", kind="preference", inputs={"prompt": "p"}, label="both-bad", tie=True)


def test_the_dataset_card_makes_load_dataset_work_on_the_folder(tmp_path: Path) -> None:
    write_mixed(tmp_path)
    card = (tmp_path / "README.md").read_text()
    meta = yaml.safe_load(card.split("---")[1])
    assert [c["config_name"] for c in meta["configs"]] == ["all", *SLUGS]
    assert meta["configs"][1]["data_files"] == [{"split": "train", "path": f"data/{SLUGS[0]}/**/*.jsonl"}]
    assert meta["license"] and meta["task_categories"] == ["text-generation"]
    summary = datasets.load_dataset(str(tmp_path), "dialogue_summary", split="train")
    assert sorted(summary["kind"]) == ["edit", "flag"]
    assert sorted(map(str, summary["label"])) == ["None", "great"]
    arena = datasets.load_dataset(str(tmp_path), "arena", split="train")
    assert sorted(arena["tie"]) == [False, True]
    tweet = datasets.load_dataset(str(tmp_path), "tweet", split="train")
    assert tweet[0]["ratings"] == RATINGS
    everything = datasets.load_dataset(str(tmp_path), split="train")  # the default config: all tasks
    assert len(everything) == 5


def test_a_failed_write_is_an_error_and_the_next_row_starts_a_clean_file(tmp_path: Path, monkeypatch) -> None:
    store = FeedbackStore(folder=tmp_path)
    day = rate(store, "before")["created_at"][:10]
    first = tmp_path / "data" / "tweet" / day / f"{store.writer_id}.jsonl"
    real_write = os.write

    def half_then_fail(fd: int, data: memoryview) -> int:
        real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(hub.feedback.store.os, "write", half_then_fail)
    with pytest.raises(FlywheelError, match="could not be saved.*No space left"):
        rate(store, "lost")
    monkeypatch.setattr(hub.feedback.store.os, "write", real_write)
    rate(store, "after")
    store.close()
    assert len(list(tmp_path.glob("data/tweet/*/*.jsonl"))) == 2
    assert not first.read_bytes().endswith(b"\n")  # the half row stays at the end of the old file
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no row was glued to the half one
        loaded = load_feedback(tmp_path, task="tweet")
    assert sorted(loaded["completion"]) == ["after", "before"]
