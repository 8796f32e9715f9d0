"""The feedback folder's dataset card: one `datasets` config per task, with explicit features.

Explicit features matter: without them the JSON builder infers a type per file, and a file
whose `label` (or `model`, `ratings`...) happens to be all null cannot be merged with one
where it is text, so `load_dataset` fails as soon as two kinds of feedback coexist.

The first config, `all` (the default), spans every task with the union of their features.
It has to come first: `datasets` picks the file format from the first config's files, so a
first config without files yet (a task nobody gave feedback on) would break every config.

Example:
    >>> import tempfile
    >>> from datasets import Features
    >>> from pathlib import Path
    >>> from hub.feedback.card import write_card
    >>> folder = Path(tempfile.mkdtemp())
    >>> write_card(folder)
    True
    >>> write_card(folder)                    # unchanged card: nothing written
    False
    >>> record_features("tweet")["ratings"]["clarity"]
    Value('int64')
    >>> sorted(record_features(ALL)["inputs"])[:3]
    ['bio', 'dialogue', 'experience']
    >>> Features._from_yaml_list(yaml_features("arena")) == record_features("arena")
    True
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from hub.feedback.records import GENERATION_KEYS, MODEL_KEYS, SCHEMA_VERSION, SIDES
from tasks import SLUGS, get_task

CARD_LICENSE = "apache-2.0"
CARD = "README.md"
ALL = "all"
"""The config holding every task's rows."""

_BODY = """\
# Flywheel feedback

Feedback that people left on the outputs of the Flywheel demos: flags, 1-5 ratings,
arena votes and corrected outputs. Trainers pull it to improve the next adapter.
Each task is a config, `datasets.load_dataset("<this repo or folder>", "<task>")`, and the
default config `all` holds every task's rows.

Rows are appended to `data/<task>/<YYYY-MM-DD>/<writer-uuid>.jsonl` (one file per app
process), one JSON object per line, schema {schema} (rows of older schemas read back with the
newer fields null, and `source` `person`):

| field | meaning |
|---|---|
| `id`, `schema`, `created_at` | uuid4, schema version, UTC time |
| `task`, `kind` | task slug; `flag`, `rating`, `preference` or `edit` |
| `inputs`, `prompt` | what the person typed; the chat messages the model saw |
| `completion` | the output judged (flag, rating) or corrected (edit) |
| `label` | the flag, or the arena vote (`A`, `B`, `tie`, `both-bad`) |
| `ratings`, `reward` | 1-5 ratings per quality and their weighted sum in [0, 1] |
| `chosen`, `rejected`, `tie` | arena answers; `tie` is true when the vote names no winner |
| `edited` | the person's corrected output |
| `model`, `generation` | base model, adapter and revision; sampling settings |
| `session` | a salted hash of the browser session, or null |
| `user` | a salted hash of the Hugging Face username of a signed-in person, or null |
| `source` | `person`; `guard` (an output a guard withheld) and `simulated` (benchmark raters) are reserved |
| `sides` | arena votes: base model, adapter and revision behind answers `A` and `B` |

Fields that do not apply to a kind are null. Model and settings are those the app served (it
signs each output and accepts feedback only on signed ones). No names, accounts or tokens are stored.
"""


def columns(task: str) -> dict[str, Any]:
    """The row layout of one config: a dtype name, a dict (struct) or a one-item list (list of struct).

    For `ALL`, inputs and ratings hold the fields of every task (absent ones are null).
    """
    specs = [get_task(slug) for slug in (SLUGS if task == ALL else (task,))]
    fields = list(dict.fromkeys(name for spec in specs for name in spec.field_names))
    rating_names = list(dict.fromkeys(name for spec in specs for name in spec.rating_weights))
    return {
        "id": "string", "schema": "int64", "created_at": "timestamp[s, tz=UTC]", "task": "string",
        "kind": "string", "inputs": dict.fromkeys(fields, "string"),
        "prompt": [{"role": "string", "content": "string"}], "completion": "string", "label": "string",
        "ratings": dict.fromkeys(rating_names, "int64") if rating_names else "null", "reward": "float64",
        "chosen": "string", "rejected": "string", "tie": "bool", "edited": "string",
        "model": dict.fromkeys(MODEL_KEYS, "string"),
        "generation": {key: "int64" if kind is int else "float64" for key, kind in GENERATION_KEYS.items()},
        "session": "string", "user": "string", "source": "string",
        "sides": {side: dict.fromkeys(MODEL_KEYS, "string") for side in SIDES},
    }


def record_features(task: str) -> Any:
    """The `datasets.Features` of one task's config (or of `ALL`)."""
    from datasets import Features, List, Value

    def convert(spec: Any) -> Any:
        if isinstance(spec, dict):
            return {name: convert(inner) for name, inner in spec.items()}
        if isinstance(spec, list):
            return List(convert(spec[0]))
        return Value(spec)

    return Features(convert(columns(task)))


def yaml_features(task: str) -> list[dict[str, Any]]:
    """`record_features(task)` as the card's `dataset_info.features` YAML list (no `datasets` import)."""

    def convert(name: str, spec: Any) -> dict[str, Any]:
        if isinstance(spec, dict):
            return {"name": name, "struct": [convert(inner, sub) for inner, sub in spec.items()]}
        if isinstance(spec, list):
            return {"name": name, "list": convert("", spec[0])["struct"]}
        return {"name": name, "dtype": spec}

    return [convert(name, spec) for name, spec in columns(task).items()]


def card_text() -> str:
    """The full README.md: YAML front matter (configs, features, license) and the body."""
    import yaml

    metadata = {
        "license": CARD_LICENSE,
        "pretty_name": "Flywheel feedback",
        "task_categories": ["text-generation"],
        "language": ["en"],
        "tags": ["human-feedback", "rlhf", "flywheel"],
        "configs": [{"config_name": ALL, "default": True, "data_files": _files("data/**/*.jsonl")}]
                   + [{"config_name": slug, "data_files": _files(f"data/{slug}/**/*.jsonl")}
                      for slug in SLUGS],
        "dataset_info": [{"config_name": name, "features": yaml_features(name)}
                         for name in (ALL, *SLUGS)],
    }
    return f"---\n{yaml.safe_dump(metadata, sort_keys=False)}---\n\n{_BODY.format(schema=SCHEMA_VERSION)}"


def _files(pattern: str) -> list[dict[str, str]]:
    return [{"split": "train", "path": pattern}]


def write_card(folder: Path) -> bool:
    """Write `folder/README.md` atomically if it differs; True if it was (re)written."""
    text = card_text()
    path = Path(folder) / CARD
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write-then-rename: several app processes may set up the same folder at once.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".README.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True
