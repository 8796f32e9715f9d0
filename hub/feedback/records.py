"""Feedback records: build, validate and serialise the one-JSON-object-per-line rows of DESIGN.md.

A record is valid when its task exists, its kind is one that task's tab produces and every
field that does not apply to that kind is null. `build_record` fills `id`, `schema` and
`created_at`; `validate_record` checks a record read back from a file (the loader uses it to
skip malformed rows). Both return a normalised copy and never modify their input.

Schema 2 added three optional fields: `user` (a salted hash of a signed-in username),
`source` (`person`; `guard` and `simulated` are reserved for outputs a guard withheld and
benchmark raters) and `sides` (an arena vote's model/adapter/revision of answers A and B).
Schema-1 rows stay readable: they read back with `user` and `sides` null and `source` `person`.

Example:
    >>> from hub.feedback.records import build_record
    >>> record = build_record(task="tweet", kind="rating", inputs={"prompt": "Advice for founders"},
    ...                       completion="Ship small, listen hard.",
    ...                       ratings={"relevance": 5, "clarity": 4, "originality": 3, "engagement": 4})
    >>> record["reward"], record["prompt"][-1]["role"], record["label"]
    (0.7875, 'user', None)
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

from tasks import InvalidInput, Task, get_task
from tasks.generation import GENERATION_LIMITS

SCHEMA_VERSION = 2
SCHEMA_VERSIONS = (1, 2)
"""Versions still readable; new records are written as `SCHEMA_VERSION`."""
KINDS = ("flag", "rating", "preference", "edit")
FIELDS = ("id", "schema", "created_at", "task", "kind", "inputs", "prompt", "completion", "label",
          "ratings", "reward", "chosen", "rejected", "tie", "edited", "model", "generation", "session",
          "user", "source", "sides")
PREFERENCE_LABELS = ("A", "B", "tie", "both-bad")
"""Arena votes; "tie" and "both-bad" name no winner (training counts them as ties)."""
NO_WINNER = ("tie", "both-bad")
ROLES = ("system", "user", "assistant")
MODEL_KEYS = ("base", "adapter", "revision")
GENERATION_KEYS: dict[str, type] = {name: limit.kind for name, limit in GENERATION_LIMITS.items()}
"""The settings of `serving.engine.GenerationSettings`; fixed so every row has the same columns."""
SOURCES = ("person", "guard", "simulated")
"""Who produced a record: a person (the default); `guard` and `simulated` are reserved."""
SIDES = ("A", "B")

MAX_TEXT_CHARS = 20_000
"""Longest completion, edit, chosen or rejected text."""
MAX_PROMPT_CHARS = 60_000
MAX_PROMPT_MESSAGES = 64
MAX_SHORT_CHARS = 512
"""Longest session hash, model id, adapter reference or revision."""

# Which optional fields each kind may carry (everything else must be null).
_ALLOWED = {
    "flag": {"completion", "label"},
    "rating": {"completion", "ratings", "reward"},
    "preference": {"label", "chosen", "rejected", "tie"},
    "edit": {"completion", "edited"},
}
_KIND_FIELDS = ("completion", "label", "ratings", "reward", "chosen", "rejected", "tie", "edited")


class InvalidRecord(InvalidInput):
    """A feedback record that breaks the schema of DESIGN.md; the message names the first problem."""


def build_record(*, task: str, kind: str, inputs: dict[str, Any], prompt: list[dict[str, str]] | None = None,
                 completion: str | None = None, label: str | None = None,
                 ratings: dict[str, int] | None = None, reward: float | None = None,
                 chosen: str | None = None, rejected: str | None = None, tie: bool | None = None,
                 edited: str | None = None, model: dict[str, str | None] | None = None,
                 generation: dict[str, Any] | None = None, session: str | None = None,
                 user: str | None = None, source: str = "person",
                 sides: dict[str, dict[str, str | None]] | None = None) -> dict[str, Any]:
    """A new, validated record with a fresh uuid4 `id`, `schema` 2 and `created_at` now (UTC).

    `prompt` defaults to the task's chat messages for `inputs`; a rating's `reward` defaults
    to `Task.reward_from_ratings`. Raises `InvalidRecord` naming the first bad field.

    Example:
        >>> build_record(task="arena", kind="preference", inputs={"prompt": "Hi"},
        ...              chosen="Hello!", rejected="Go away.", label="A")["tie"]
        False
    """
    record = {"id": str(uuid.uuid4()), "schema": SCHEMA_VERSION, "created_at": utc_now(), "task": task,
              "kind": kind, "inputs": inputs, "prompt": prompt, "completion": completion, "label": label,
              "ratings": ratings, "reward": reward, "chosen": chosen, "rejected": rejected, "tie": tie,
              "edited": edited, "model": model, "generation": generation, "session": session,
              "user": user, "source": source, "sides": sides}
    return validate_record(record)


def validate_record(record: Any) -> dict[str, Any]:
    """Check a complete record (as read from a file) and return its normalised copy.

    Missing keys count as null; unknown keys, another schema version or any rule of
    `build_record` broken raise `InvalidRecord`.

    Example:
        >>> row = build_record(task="detox", kind="flag", inputs={"prompt": "The fans"},
        ...                    completion="cheered.", label="fine")
        >>> validate_record(row) == row
        True
    """
    if not isinstance(record, dict):
        raise InvalidRecord("A feedback record must be a JSON object.")
    unknown = sorted(set(record) - set(FIELDS))
    if unknown:
        raise InvalidRecord(f"Unknown feedback field(s): {', '.join(map(str, unknown))}.")
    schema = record.get("schema")
    if schema not in SCHEMA_VERSIONS or isinstance(schema, bool):
        versions = " or ".join(map(str, SCHEMA_VERSIONS))
        raise InvalidRecord(f"Feedback schema must be {versions} (got {schema!r}).")
    task = _task(record.get("task"))
    kind = _kind(task, record.get("kind"))
    for name in _KIND_FIELDS:
        if record.get(name) is not None and name not in _ALLOWED[kind]:
            raise InvalidRecord(f"{name} does not apply to {kind} feedback; leave it null.")
    out: dict[str, Any] = {
        "id": _uuid(record.get("id")),
        "schema": schema,
        "created_at": _timestamp(record.get("created_at")),
        "task": task.slug,
        "kind": kind,
        "inputs": _inputs(task, record.get("inputs")),
    }
    out["prompt"] = _prompt(record.get("prompt"), task, out["inputs"])
    out.update(dict.fromkeys(_KIND_FIELDS))
    out.update(_KIND_CHECKS[kind](task, record))
    out["model"] = _model(record.get("model"))
    out["generation"] = _generation(record.get("generation"))
    out["session"] = _short("session", record.get("session"))
    out["user"] = _short("user", record.get("user"))
    out["source"] = _source(record.get("source"))
    out["sides"] = _sides(kind, record.get("sides"))
    return {name: out[name] for name in FIELDS}


def encode_record(record: dict[str, Any]) -> bytes:
    """One JSONL line (UTF-8, ending in a newline) for an already validated record.

    Example:
        >>> encode_record({"id": "x"})
        b'{"id":"x"}\\n'
    """
    try:
        text = json.dumps(record, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        return text.encode("utf-8") + b"\n"
    except (TypeError, ValueError) as error:  # UnicodeEncodeError is a ValueError (lone surrogates)
        raise InvalidRecord(f"Feedback record cannot be stored as JSON: {error}.") from None


def utc_now() -> str:
    """Current UTC time as `2026-11-22T10:00:00Z` (second precision, like DESIGN.md)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- per-kind rules -------------------------------------------------------------------------


def _flag(task: Task, record: dict[str, Any]) -> dict[str, Any]:
    label = record.get("label")
    if label not in task.flags:
        raise InvalidRecord(f"Flag {label!r} is not one of {task.slug}'s flags: {', '.join(task.flags)}.")
    return {"completion": _text("completion", record.get("completion"), required=True), "label": label}


def _rating(task: Task, record: dict[str, Any]) -> dict[str, Any]:
    ratings = record.get("ratings")
    names = tuple(task.rating_weights)
    if not isinstance(ratings, dict) or set(ratings) != set(names):
        raise InvalidRecord(f"Ratings must give exactly: {', '.join(names)}.")
    clean: dict[str, int] = {}
    for name in names:
        value = ratings[name]
        if isinstance(value, bool) or not isinstance(value, int | float) or value not in range(1, 6):
            raise InvalidRecord(f"Rating {name} must be a whole number from 1 to 5 (got {value!r}).")
        clean[name] = int(value)
    reward = record.get("reward")
    if reward is None:
        reward = task.reward_from_ratings(clean)
    elif isinstance(reward, bool) or not isinstance(reward, int | float) or not 0.0 <= reward <= 1.0:
        raise InvalidRecord(f"Reward must be a number from 0 to 1 (got {reward!r}).")
    return {"completion": _text("completion", record.get("completion"), required=True),
            "ratings": clean, "reward": float(reward)}


def _preference(task: Task, record: dict[str, Any]) -> dict[str, Any]:
    label, tie = record.get("label"), record.get("tie")
    if label is not None and label not in PREFERENCE_LABELS:
        raise InvalidRecord(f"A vote label must be one of {', '.join(PREFERENCE_LABELS)} (got {label!r}).")
    if tie is not None and not isinstance(tie, bool):
        raise InvalidRecord("tie must be true, false or null.")
    if label is None and tie:
        label = "tie"
    no_winner = label in NO_WINNER
    if tie is False and label == "tie" or tie is True and label in ("A", "B"):
        raise InvalidRecord(f"A vote cannot be both {label!r} and tie={tie}.")
    chosen = _text("chosen", record.get("chosen"), required=not no_winner)
    rejected = _text("rejected", record.get("rejected"), required=not no_winner)
    return {"label": label, "chosen": chosen, "rejected": rejected, "tie": no_winner}


def _edit(task: Task, record: dict[str, Any]) -> dict[str, Any]:
    return {"completion": _text("completion", record.get("completion"), required=False),
            "edited": _text("edited", record.get("edited"), required=True)}


_KIND_CHECKS = {"flag": _flag, "rating": _rating, "preference": _preference, "edit": _edit}


# -- field checks ---------------------------------------------------------------------------


def _task(slug: Any) -> Task:
    if not isinstance(slug, str):
        raise InvalidRecord("task must be a task slug.")
    try:
        return get_task(slug)
    except InvalidInput as error:
        raise InvalidRecord(str(error)) from None


def _kind(task: Task, kind: Any) -> str:
    if kind not in KINDS:
        raise InvalidRecord(f"kind must be one of {', '.join(KINDS)} (got {kind!r}).")
    if kind not in task.feedback_kinds:
        allowed = " or ".join(task.feedback_kinds)
        raise InvalidRecord(f"Task {task.slug} takes {allowed} feedback, not {kind}.")
    return kind


def _uuid(value: Any) -> str:
    try:
        return str(uuid.UUID(value))
    except (TypeError, ValueError, AttributeError):
        raise InvalidRecord(f"id must be a UUID (got {value!r}).") from None


def _timestamp(value: Any) -> str:
    try:
        moment = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        raise InvalidRecord(f"created_at must be an ISO 8601 time (got {value!r}).") from None
    if moment.tzinfo is None:
        raise InvalidRecord("created_at must be in UTC (end it with Z).")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _inputs(task: Task, inputs: Any) -> dict[str, str]:
    if not isinstance(inputs, dict):
        raise InvalidRecord(f"inputs must be an object with {', '.join(task.field_names)}.")
    extra = sorted(set(inputs) - set(task.field_names))
    if extra:
        raise InvalidRecord(f"inputs has field(s) {task.slug} does not take: {', '.join(map(str, extra))}.")
    try:
        return task.validate(inputs)
    except InvalidInput as error:
        raise InvalidRecord(str(error)) from None


def _prompt(prompt: Any, task: Task, inputs: dict[str, str]) -> list[dict[str, str]]:
    if prompt is None:
        return task.messages(inputs)
    if not isinstance(prompt, list) or not prompt or len(prompt) > MAX_PROMPT_MESSAGES:
        raise InvalidRecord(f"prompt must be a list of 1 to {MAX_PROMPT_MESSAGES} chat messages.")
    messages, total = [], 0
    for message in prompt:
        if (not isinstance(message, dict) or set(message) != {"role", "content"}
                or message["role"] not in ROLES or not isinstance(message["content"], str)):
            roles = ", ".join(ROLES)
            raise InvalidRecord(f"Each prompt message must be {{role, content}} with role one of {roles}.")
        total += len(message["content"])
        messages.append({"role": message["role"], "content": message["content"]})
    if total > MAX_PROMPT_CHARS:
        raise InvalidRecord(f"prompt is too long ({total} characters; the limit is {MAX_PROMPT_CHARS}).")
    return messages


def _text(name: str, value: Any, *, required: bool) -> str | None:
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise InvalidRecord(f"{name} must be non-empty text.")
    if len(value) > MAX_TEXT_CHARS:  # before any per-character work
        raise InvalidRecord(f"{name} is too long ({len(value)} characters; the limit is {MAX_TEXT_CHARS}).")
    if not value.strip():
        raise InvalidRecord(f"{name} must be non-empty text.")
    return value


def _short(name: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > MAX_SHORT_CHARS:
        raise InvalidRecord(f"{name} must be text of 1 to {MAX_SHORT_CHARS} characters.")
    return value


def _model(model: Any) -> dict[str, str | None] | None:
    if model is None:
        return None
    if not isinstance(model, dict) or set(model) - set(MODEL_KEYS):
        raise InvalidRecord(f"model must be an object with keys among {', '.join(MODEL_KEYS)}.")
    return {key: _short(f"model.{key}", model.get(key)) for key in MODEL_KEYS}


def _generation(generation: Any) -> dict[str, Any] | None:
    """The settings within `tasks.generation.GENERATION_LIMITS` (absent ones are null)."""
    if generation is None:
        return None
    if not isinstance(generation, dict) or set(generation) - set(GENERATION_KEYS):
        raise InvalidRecord(f"generation must be an object with keys among {', '.join(GENERATION_KEYS)}.")
    out: dict[str, Any] = {}
    for key, limit in GENERATION_LIMITS.items():
        value = generation.get(key)
        if value is not None:
            problem = limit.problem(value)
            if problem:
                raise InvalidRecord(f"generation.{key} {problem}.")
            value = limit.kind(value)
        out[key] = value
    return out


def _source(source: Any) -> str:
    if source is None:
        return SOURCES[0]
    if source not in SOURCES:
        raise InvalidRecord(f"source must be one of {', '.join(SOURCES)} (got {source!r}).")
    return source


def _sides(kind: str, sides: Any) -> dict[str, dict[str, str | None] | None] | None:
    if sides is None:
        return None
    if kind != "preference":
        raise InvalidRecord(f"sides does not apply to {kind} feedback; leave it null.")
    if not isinstance(sides, dict) or set(sides) - set(SIDES):
        raise InvalidRecord("sides must be an object with keys among A, B.")
    return {side: _model(sides.get(side)) for side in SIDES}
