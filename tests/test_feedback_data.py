"""Reading feedback: dedup, malformed rows, revisions, the stats command (rows for trainers: test_rows.py)."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from hub.cli import main
from hub.errors import FlywheelError
from hub.feedback.loading import MalformedFeedbackWarning, feedback_counts, load_feedback, load_feedback_snapshot
from hub.feedback.store import FeedbackStore
from tasks import get_task

ROOT = Path(__file__).resolve().parents[1]
RATINGS = {"relevance": 4, "clarity": 5, "originality": 3, "engagement": 4}
PITCH = {"position": "a student", "experience": "an intern", "goals": "to learn", "strengths": "focus"}


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Two writers' worth of every kind of feedback."""
    folder = tmp_path / "feedback"
    with FeedbackStore(folder=folder) as store:
        store.log(task="elevator_pitch", kind="flag", inputs=PITCH, completion="I am great.", label="great")
        store.log(task="elevator_pitch", kind="flag", inputs=PITCH, completion="Hello.", label="generic")
        store.log(task="elevator_pitch", kind="edit", inputs=PITCH, completion="Hello.",
                  edited="I am a student who interned and wants to learn.")
        store.log(task="tweet", kind="rating", inputs={"prompt": "Hiring"}, completion="Join us!",
                  ratings=RATINGS)
    with FeedbackStore(folder=folder) as store:
        for label in ("A", "B", "tie", "both-bad"):
            store.log(task="arena", kind="preference", inputs={"prompt": "Tips?"}, chosen=f"good {label}",
                      rejected=f"bad {label}", label=label, tie=label in ("tie", "both-bad"))
    return folder


def append(folder: Path, task: str, lines: list[bytes]) -> None:
    path = next(folder.glob(f"data/{task}/*/*.jsonl"))
    with path.open("ab") as handle:
        handle.write(b"".join(lines))


def test_load_feedback_reads_one_task_and_filters_kinds(folder: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pitch = load_feedback(folder, task="elevator_pitch")
    assert sorted(pitch["kind"]) == ["edit", "flag", "flag"]
    assert list(pitch.features["inputs"]) == list(get_task("elevator_pitch").field_names)
    assert pitch["created_at"] == sorted(pitch["created_at"])
    assert len(load_feedback(folder, task="elevator_pitch", kind="flag")) == 2
    assert len(load_feedback(folder, task="detox")) == 0
    assert load_feedback(folder, task="tweet")[0]["ratings"] == RATINGS


def test_default_source_is_the_feedback_home(flywheel_home: Path) -> None:
    assert len(load_feedback(task="tweet")) == 0
    with FeedbackStore() as store:
        store.log(task="tweet", kind="rating", inputs={"prompt": "x"}, completion="y", ratings=RATINGS)
    assert len(load_feedback(task="tweet")) == 1


def test_duplicates_are_dropped_and_malformed_rows_counted_in_one_warning(folder: Path) -> None:
    rows = [line + b"\n" for path in folder.glob("data/elevator_pitch/*/*.jsonl")
            for line in path.read_bytes().splitlines()]
    broken = [b"not json\n", b"[1, 2]\n", b'{"id": "x"}\n', b"\n",
              json.dumps({**json.loads(rows[0]), "id": "8d3f2c9e-1d8e-4a5e-9b38-1c9d8f0e2a11",
                          "label": "toxic"}).encode() + b"\n",
              json.dumps({**json.loads(rows[0]), "id": "9d3f2c9e-1d8e-4a5e-9b38-1c9d8f0e2a11",
                          "task": "detox"}).encode() + b"\n",
              b'{"id": "cut by a crash']
    append(folder, "elevator_pitch", [*rows, *broken])  # every row twice, then junk
    with pytest.warns(MalformedFeedbackWarning) as caught:
        snapshot = load_feedback_snapshot(folder, task="elevator_pitch")
    assert len(caught) == 1
    assert "Skipped 5 malformed feedback row(s)" in str(caught[0].message)
    assert (len(snapshot.dataset), snapshot.skipped, snapshot.duplicates) == (3, 5, 3)
    assert len(set(snapshot.dataset["id"])) == 3


def test_local_revision_names_the_content_read(folder: Path) -> None:
    first = load_feedback_snapshot(folder, task="tweet")
    assert first.revision.startswith("local-") and first.source == str(folder)
    assert load_feedback_snapshot(folder, task="tweet", revision=first.revision).revision == first.revision
    with FeedbackStore(folder=folder) as store:
        store.log(task="tweet", kind="rating", inputs={"prompt": "x"}, completion="y", ratings=RATINGS)
    assert load_feedback_snapshot(folder, task="tweet").revision != first.revision
    with pytest.raises(FlywheelError, match="can only be read as it is now"):
        load_feedback(folder, task="tweet", revision=first.revision)


@pytest.mark.parametrize(("source", "message"), [
    ("/no/such/folder", "does not exist"),
    ("./relative/missing", "does not exist"),
    ("a/b/c", "does not exist"),
])
def test_bad_sources_are_clear_errors(source: str, message: str) -> None:
    with pytest.raises(FlywheelError, match=message):
        load_feedback(source, task="tweet")


def test_bad_task_or_kind_is_refused(folder: Path) -> None:
    with pytest.raises(ValueError, match="Unknown task"):
        load_feedback(folder, task="poetry")
    with pytest.raises(FlywheelError, match="Unknown feedback kind"):
        load_feedback(folder, task="tweet", kind="likes")


def test_feedback_counts_and_the_stats_command(folder: Path, capsys) -> None:
    counts = feedback_counts(folder)
    assert counts.counts["elevator_pitch"] == {"flag": 2, "edit": 1}
    assert counts.counts["arena"] == {"preference": 4}
    assert main(["feedback", "stats", "--repo", str(folder)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith(f"Feedback in {folder} (revision local-")
    assert table[1].split() == ["task", "flag", "rating", "preference", "edit", "total"]
    rows = {line.split()[0]: line.split()[1:] for line in table[2:]}
    assert rows["elevator_pitch"] == ["2", "-", "-", "1", "3"]
    assert table[-1].split() == ["total", "2", "1", "4", "1", "8"]


def test_stats_command_as_a_process_and_its_bad_input(folder: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "hub", *args], cwd=ROOT, capture_output=True, text=True)

    ok = run("feedback", "stats", "--repo", str(folder))
    assert ok.returncode == 0 and "arena" in ok.stdout
    for args in (["feedback", "stats", "--repo", "/no/such/folder"], ["feedback", "stats", "--bogus"],
                 ["feedback"], []):
        bad = run(*args)
        assert bad.returncode == 2, args
        assert bad.stderr.startswith("error: ") and bad.stderr.count("\n") == 1, bad.stderr
        assert "Traceback" not in bad.stderr
