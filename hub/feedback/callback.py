"""Feedback for the demos: `FeedbackCallback` is the feedback store as a Gradio `FlaggingCallback`.

The demos call `log()` (one validated record, fsynced before it returns) and
`session_id()`; Gradio's `Interface` flagging calls `setup()` and `flag()`. Records land in
`<folder>/data/<task>/<YYYY-MM-DD>/<writer-uuid>.jsonl`, and with `repo_id` also in a Hub
dataset repo (see `hub.feedback.store` and `hub.feedback.sync`).

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> from hub.feedback.callback import FeedbackCallback
    >>> with FeedbackCallback(folder=Path(tempfile.mkdtemp())) as feedback:
    ...     record = feedback.log(task="arena", kind="preference", inputs={"prompt": "Hi"},
    ...                           chosen="Hello! How can I help?", rejected="What.", label="A",
    ...                           session=feedback.session_id("gradio-session-hash"))
    >>> record["tie"], len(record["session"])
    (False, 32)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gradio import FlaggingCallback

from hub.errors import FlywheelError
from hub.feedback.records import InvalidRecord, build_record
from hub.feedback.store import FeedbackStore
from tasks import get_task

__all__ = ["FeedbackCallback", "FeedbackStore", "InvalidRecord", "build_record"]


class FeedbackCallback(FeedbackStore, FlaggingCallback):
    """`FeedbackStore` usable as `gr.Interface(flagging_callback=...)`.

    Takes the keywords of `FeedbackStore` plus `task`, the task that Interface flagging
    records (the demos' own buttons call `log()`, which names its task).

    Example:
        >>> callback = FeedbackCallback(folder=Path("feedback"), task="detox")  # doctest: +SKIP
        >>> callback.setup([prompt_box, output_box], "ignored")               # doctest: +SKIP
        >>> callback.flag(["The fans", "cheered."], flag_option="fine")        # doctest: +SKIP
        1
    """

    def __init__(self, *, folder: Path | None = None, repo_id: str | None = None, every: float = 5,
                 private: bool = True, token: str | None = None, session_ids: bool = True,
                 task: str | None = None) -> None:
        super().__init__(folder=folder, repo_id=repo_id, every=every, private=private, token=token,
                         session_ids=session_ids)
        self.task = get_task(task).slug if task is not None else None
        self.components: list[Any] = []

    def setup(self, components: Sequence[Any] = (), flagging_dir: str | Path | None = None) -> None:
        """Create the folder, its dataset card and Hub sync; `flagging_dir` is ignored (records
        always go to `folder`). Safe to call more than once."""
        self.components = list(components)
        super().setup()

    def flag(self, flag_data: list[Any], flag_option: str | None = "", username: str | None = None) -> int:
        """Record one flag: `flag_data` is the task's inputs in order, then the output.

        `flag_option` is the record's label; `username` is never stored. Returns how many
        records this callback has written.
        """
        if self.task is None:
            raise FlywheelError("Gradio flagging needs FeedbackCallback(task=...) to know the task.")
        fields = get_task(self.task).field_names
        if len(flag_data) < len(fields) + 1:
            raise InvalidRecord(f"Flagging {self.task} needs {len(fields)} input(s) and the output.")
        inputs = dict(zip(fields, flag_data[:len(fields)], strict=True))
        self.log(task=self.task, kind="flag", inputs=inputs, completion=flag_data[len(fields)],
                 label=flag_option or None)
        return self.count
