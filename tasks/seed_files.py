"""Reading rows (dicts) from a data file, a folder of them, or a Hub dataset, and naming their format.

Supported files: `.jsonl`, `.json` (a list of rows, or JSON lines), `.csv` and `.parquet`.
A format is recognised from the keys of a row: the public data sets the project develops on
(DialogSum, RealToxicityPrompts, HH-RLHF, Synthetic-Persona-Chat, DailyDialog, TweetTopic,
Twitter Financial News, the Kaggle "LLM Classification Finetuning" CSV) and Flywheel
feedback records.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from tasks.base import InvalidInput, first_line

SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
HUB_SPLITS = ("validation", "test", "train")
"""Split picked from a Hub dataset when none is named: evaluation splits first."""

Row = dict[str, Any]


def detect_format(row: Mapping[str, Any]) -> str | None:
    """Name the data format a row belongs to, or None if it is not one we know.

    Example:
        >>> detect_format({"id": "dev_0", "dialogue": "#Person1#: Hi", "summary": "They greet."})
        'dialogsum'
    """
    keys = set(row)
    if {"schema", "kind", "task"} <= keys:
        return "feedback"
    if {"prompt", "response_a", "response_b", "winner"} <= keys:
        return "hh_rlhf"
    if {"prompt", "response_a", "response_b"} <= keys:
        return "kaggle_arena"
    if {"chosen", "rejected"} <= keys and "prompt" not in keys:
        return "hh_rlhf_raw"
    if isinstance(row.get("dialogue"), str) and "summary" in keys:
        return "dialogsum"
    if "prompt" in keys and "continuation" in keys:
        return "rtp"
    if "user1_bio" in keys or "user2_bio" in keys:
        return "spc_starters"
    if isinstance(row.get("context"), list) and "response" in keys:
        return "dialogue_pairs"
    if {"opening_line", "reply"} <= keys:
        return "dailydialog_openers"
    if isinstance(row.get("turns"), list):
        return "dialogues"
    if "text" in keys and "topics" in keys:
        return "tweettopic"
    if "text" in keys and "label_name" in keys and "is_business_news" in keys:
        return "financial_news"
    if {"text", "count"} <= keys:
        return "persona_lines"
    if "text" in keys and "is_toxic" in keys:
        return "toxicity_labels"
    return None


def read_sources(source: str | Path, *, config: str | None = None,
                 split: str | None = None) -> Iterator[tuple[str, Iterator[Row]]]:
    """Yield (label, rows) for every data file under a local path, or for one Hub dataset split.

    A path that exists locally is read directly; anything else is taken as a Hub dataset id and
    loaded with `datasets.load_dataset` (config `config` if the dataset declares it, e.g. a
    Flywheel feedback repo with one config per task).

    Raises:
        InvalidInput: missing file or folder, unsupported file type, or a dataset that cannot load.
    """
    path = Path(source).expanduser()
    if path.is_file():
        yield str(path), read_file(path)
        return
    if path.is_dir():
        files = [f for f in sorted(path.rglob("*"))
                 if f.is_file() and f.suffix in SUFFIXES
                 and not any(part.startswith(".") for part in f.relative_to(path).parts)]
        if not files:
            raise InvalidInput(f"No data files ({', '.join(SUFFIXES)}) in folder {path}.")
        for file in files:
            yield str(file), read_file(file)
        return
    text = str(source)
    if text.startswith((".", "/", "~")) or text.count("/") > 1 or Path(text).suffix in SUFFIXES:
        raise InvalidInput(f"Data file or folder {source} does not exist.")
    yield text, _hub_rows(text, config=config, split=split)


def read_file(path: Path) -> Iterator[Row]:
    """Rows of one file, read lazily; bad JSON or an unknown extension raise `InvalidInput`."""
    if path.suffix not in SUFFIXES:
        raise InvalidInput(f"{path} is not a supported data file ({', '.join(SUFFIXES)}).")
    if path.suffix == ".csv":
        return _csv_rows(path)
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return iter(pq.read_table(path).to_pylist())
    if path.suffix == ".json":
        text = path.read_text(encoding="utf-8")
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            return _jsonl_rows(path)
        if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
            data = next(iter(data.values()))
        if not isinstance(data, list):
            raise InvalidInput(f"{path} holds JSON but not a list of rows.")
        return iter(data)
    return _jsonl_rows(path)


def _jsonl_rows(path: Path) -> Iterator[Row]:
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise InvalidInput(f"{path}:{number} is not valid JSON ({error.msg}).") from None
            if not isinstance(row, dict):
                raise InvalidInput(f"{path}:{number} is not a JSON object.")
            yield row


def _csv_rows(path: Path) -> Iterator[Row]:
    # Kaggle's arena CSV has cells far longer than the csv module's default limit.
    csv.field_size_limit(sys.maxsize)
    with path.open(encoding="utf-8", newline="") as handle:
        yield from csv.DictReader(handle)


def _hub_rows(dataset_id: str, *, config: str | None, split: str | None) -> Iterator[Row]:
    try:
        import datasets

        # Asking for the configs first also fails fast when the Hub is unreachable.
        names = datasets.get_dataset_config_names(dataset_id)
        loaded = datasets.load_dataset(dataset_id, config if config in names else None)
    except Exception as error:  # noqa: BLE001 - any loading failure becomes one clear line
        raise InvalidInput(f"Cannot load dataset {dataset_id!r}: {first_line(error)}") from error
    if split is None:
        split = next((s for s in HUB_SPLITS if s in loaded), next(iter(loaded)))
    if split not in loaded:
        raise InvalidInput(f"Dataset {dataset_id} has no split {split!r}; it has: {', '.join(loaded)}.")
    return iter(loaded[split])

