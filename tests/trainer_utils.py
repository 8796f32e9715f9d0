"""Helpers for the trainer tests: small data files, feedback through the real callback, in-process runs."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

FAST = ["--max-steps", "2", "--eval-limit", "2", "--eval-max-new-tokens", "4", "--eval-batch-size", "2",
        "--per-device-train-batch-size", "2", "--max-length", "320", "--lora-r", "4", "--lora-alpha", "8",
        "--report-to", "none", "--min-rows", "4"]
"""Flags that keep a trainer run to a few seconds on a tiny model."""


def dialogsum_file(path: Path, rows: int = 12) -> Path:
    """A DialogSum-format JSONL file (`dialogue`, `summary`)."""
    with path.open("w", encoding="utf-8") as handle:
        for i in range(rows):
            dialogue = f"#Person1#: Hi, I am {i}.\n#Person2#: Hello {i}!"
            row = {"id": f"dev_{i}", "dialogue": dialogue, "summary": f"Person1 greets person {i}."}
            handle.write(json.dumps(row) + "\n")
    return path


def log_feedback(task: str, records: list[dict[str, Any]], *, folder: Path | None = None,
                 repo_id: str | None = None) -> None:
    """Write `records` through the real `FeedbackCallback` (and push them when `repo_id` is given)."""
    from hub.feedback.callback import FeedbackCallback

    with FeedbackCallback(folder=folder, repo_id=repo_id, every=60) as feedback:
        for record in records:
            feedback.log(task=task, **record)
        if repo_id:
            assert feedback.push(timeout=60)


def summary_feedback(n: int) -> list[dict[str, Any]]:
    """Edits and flags for dialogue_summary."""
    out = []
    for i in range(n):
        inputs = {"dialogue": f"#Person1#: Shall we meet at {i}?\n#Person2#: Yes, at {i} sharp."}
        if i % 2:
            out.append({"kind": "edit", "inputs": inputs, "completion": "They talk.",
                        "edited": f"They agree to meet at {i}."})
        else:
            out.append({"kind": "flag", "inputs": inputs, "completion": f"They meet at {i}.",
                        "label": "great"})
    return out


def votes(n: int) -> list[dict[str, Any]]:
    """Arena votes with a clear winner."""
    return [{"kind": "preference", "inputs": {"prompt": f"Name a colour number {i}."},
             "chosen": f"Blue, number {i}.", "rejected": "No.", "label": "A"} for i in range(n)]


def flags(n: int, *, good_and_bad: bool = True) -> list[dict[str, Any]]:
    """conversation_starter flags, alternating great / generic."""
    return [{"kind": "flag", "inputs": {"bio": f"Nurse who sails, {i}", "interests": "sailing, jazz"},
             "completion": f"How was sailing last weekend, {i}?" if i % 2 or not good_and_bad else "Hello.",
             "label": "great" if i % 2 or not good_and_bad else "generic"} for i in range(n)]


def train(main: Callable[[Any], Any], options: type, argv: list[str],
          capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run a trainer's `main` through `trainers.common.run` in this process: (exit code, stdout, stderr)."""
    from trainers.common import run

    capsys.readouterr()
    try:
        run(main, options, argv)
        code = 0
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def front_matter(readme: str) -> dict[str, Any]:
    """The YAML metadata of a model card."""
    import yaml

    assert readme.startswith("---\n"), readme[:80]
    return yaml.safe_load(readme.split("---\n", 2)[1])


def error_lines(stderr: str) -> list[str]:
    """The `error: ...` lines a trainer printed (progress bars also go to stderr)."""
    return [line for line in stderr.replace("\r", "\n").splitlines() if line.startswith("error:")]
