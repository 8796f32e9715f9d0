"""Reading feedback: one task's records from a Hub repo or a local folder, and counts per task and kind.

`load_feedback` reads the JSONL files itself rather than through `datasets.load_dataset`,
because a single malformed line (a crashed writer, a hand edit) must cost that line, not
the whole dataset: malformed rows are skipped and counted in one warning, rows are
deduplicated by `id` and sorted by time. Hub repos are fetched with `snapshot_download`
at one commit, whose sha is the revision that model cards cite.

Which record becomes which training row is decided in one place, `trainers.rows`.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> from hub.feedback.store import FeedbackStore
    >>> folder = Path(tempfile.mkdtemp())
    >>> with FeedbackStore(folder=folder) as store:
    ...     _ = store.log(task="detox", kind="flag", inputs={"prompt": "The fans"},
    ...                   completion="cheered.", label="fine")
    >>> snapshot = load_feedback_snapshot(folder, task="detox")
    >>> len(snapshot.dataset), snapshot.revision.startswith("local-")
    (1, True)
    >>> snapshot.dataset[0]["label"], snapshot.dataset[0]["prompt"][-1]["role"]
    ('fine', 'user')
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hub.errors import FlywheelError, first_line
from hub.feedback.card import record_features
from hub.feedback.records import KINDS, InvalidRecord, validate_record
from hub.paths import feedback_home
from tasks import SLUGS, get_task


class MalformedFeedbackWarning(UserWarning):
    """Some feedback rows could not be read and were skipped."""


@dataclass(frozen=True)
class FeedbackSnapshot:
    """Rows of one task as read at one revision."""

    dataset: Any
    """A `datasets.Dataset` with the features of the task's config."""
    source: str
    """The folder (absolute path) or Hub repo id read."""
    revision: str
    """Hub commit sha, or `local-<hash>` of the rows read from a folder."""
    skipped: int = 0
    """Malformed rows left out."""
    duplicates: int = 0
    """Rows left out because an earlier row had the same id."""


@dataclass(frozen=True)
class FeedbackCounts:
    """How many valid rows each task has, per kind."""

    counts: dict[str, Counter] = field(default_factory=dict)
    source: str = ""
    revision: str = ""
    skipped: int = 0


def load_feedback(source: str | Path | None = None, *, task: str, kind: str | None = None,
                  revision: str | None = None) -> Any:
    """One task's feedback as a `datasets.Dataset` (see `load_feedback_snapshot` for the revision).

    `source` is a Hub dataset repo id, a local folder, or None for `hub.paths.feedback_home()`.
    """
    return load_feedback_snapshot(source, task=task, kind=kind, revision=revision).dataset


def load_feedback_snapshot(source: str | Path | None = None, *, task: str, kind: str | None = None,
                           revision: str | None = None) -> FeedbackSnapshot:
    """One task's deduplicated, valid rows (optionally of one `kind`) and the revision they came from.

    Raises `FlywheelError` for a missing folder or an unreadable repo, `InvalidInput` for an
    unknown task or kind.
    """
    slug = get_task(task).slug
    if kind is not None and kind not in KINDS:
        raise FlywheelError(f"Unknown feedback kind {kind!r}; choose one of: {', '.join(KINDS)}.")
    root, label, hub_revision = _open(source, revision=revision, tasks=(slug,))
    scan = _scan(root, (slug,))
    resolved = _revision(label, hub_revision, scan.digest, revision)
    _warn_skipped(scan, label)
    rows = [row for row in scan.rows[slug] if kind is None or row["kind"] == kind]
    return FeedbackSnapshot(dataset=_dataset(rows, record_features(slug)), source=label, revision=resolved,
                            skipped=scan.skipped, duplicates=scan.duplicates)


def feedback_counts(source: str | Path | None = None, *, revision: str | None = None) -> FeedbackCounts:
    """Valid rows per task and kind, across all tasks (what `python -m hub feedback stats` prints)."""
    root, label, hub_revision = _open(source, revision=revision, tasks=SLUGS)
    scan = _scan(root, SLUGS)
    counts = {slug: Counter(row["kind"] for row in scan.rows[slug]) for slug in SLUGS}
    return FeedbackCounts(counts=counts, source=label, skipped=scan.skipped,
                          revision=_revision(label, hub_revision, scan.digest, revision))


def _dataset(rows: list[dict[str, Any]], features: Any) -> Any:
    from datasets import Dataset

    return Dataset.from_dict({name: [row[name] for row in rows] for name in features}, features=features)


# -- reading -----------------------------------------------------------------------------------


@dataclass
class _Scan:
    rows: dict[str, list[dict[str, Any]]]
    digest: str
    skipped: int = 0
    duplicates: int = 0
    first_problem: str = ""


def _open(source: str | Path | None, *, revision: str | None,
          tasks: tuple[str, ...]) -> tuple[Path, str, str | None]:
    """(local root, label, Hub commit sha or None) for a folder or a Hub repo id."""
    if source is None:
        return feedback_home(), str(feedback_home()), None
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir():
            raise FlywheelError(f"Feedback source {source} is a file, not a folder.")
        return path.resolve(), str(path.resolve()), None
    text = str(source)
    if isinstance(source, Path) or text.startswith((".", "/", "~")) or text.count("/") != 1:
        raise FlywheelError(f"Feedback folder {source} does not exist.")
    import httpx2
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    try:
        sha = HfApi().dataset_info(text, revision=revision).sha or revision or "main"
        local = snapshot_download(text, repo_type="dataset", revision=sha,
                                  allow_patterns=[f"data/{slug}/**" for slug in tasks])
    except RepositoryNotFoundError:
        raise FlywheelError(f"Feedback repo {text} was not found on the Hub "
                            "(if it is private, set HF_TOKEN).") from None
    except RevisionNotFoundError:
        raise FlywheelError(f"Feedback repo {text} has no revision {revision}.") from None
    except (OSError, ValueError, httpx2.HTTPError) as error:  # network, HTTP and validation errors
        first = first_line(error)
        raise FlywheelError(f"Feedback repo {text} could not be read: {first}") from None
    return Path(local), text, sha


def _scan(root: Path, tasks: tuple[str, ...]) -> _Scan:
    digest = hashlib.sha256()
    scan = _Scan(rows={slug: [] for slug in tasks}, digest="")
    seen: set[str] = set()
    for slug in tasks:
        for path in sorted((root / "data" / slug).glob("*/*.jsonl")):
            relative = path.relative_to(root).as_posix()
            data = path.read_bytes()
            data = data[:data.rfind(b"\n") + 1]  # a line still being written is not a row yet
            digest.update(relative.encode() + b"\0" + data)
            for number, line in enumerate(data.split(b"\n")[:-1], start=1):
                if not line.strip():
                    continue
                try:
                    row = validate_record(json.loads(line))
                    if row["task"] != slug:
                        raise InvalidRecord(f"a {row['task']} row in the {slug} folder")
                except (ValueError, InvalidRecord) as error:
                    scan.skipped += 1
                    scan.first_problem = scan.first_problem or f"{relative}:{number}: {error}"
                    continue
                if row["id"] in seen:
                    scan.duplicates += 1
                    continue
                seen.add(row["id"])
                scan.rows[slug].append(row)
        scan.rows[slug].sort(key=lambda row: (row["created_at"], row["id"]))
    scan.digest = digest.hexdigest()
    return scan


def _revision(label: str, hub_revision: str | None, digest: str, wanted: str | None) -> str:
    if hub_revision is not None:
        return hub_revision
    local = f"local-{digest[:16]}"
    if wanted is not None and wanted != local:
        raise FlywheelError(f"Feedback folder {label} is at revision {local}, not {wanted}; "
                            "a folder can only be read as it is now.")
    return local


def _warn_skipped(scan: _Scan, label: str) -> None:
    if scan.skipped:
        warnings.warn(MalformedFeedbackWarning(
            f"Skipped {scan.skipped} malformed feedback row(s) in {label} (first: {scan.first_problem})"),
            stacklevel=3)
