"""Evaluation examples and preference pairs from public data sets and Flywheel feedback.

`load_examples` turns rows of any format `tasks.seed_files.detect_format` knows into
`Example(inputs, references, meta)` for one task, with inputs named after the task's fields.
`load_preference_pairs` turns HH-RLHF, the Kaggle arena CSV and preference feedback into
`prompt / response_a / response_b / winner` rows.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tasks.base import InvalidInput, Task, strip_control_characters
from tasks.seed_files import Row, detect_format, read_sources

CONTEXT_TURNS = 6
"""Dialogue turns kept before a response, as in the DailyDialog pairs files."""
WINNERS = ("a", "b", "tie")


@dataclass
class Example:
    """One evaluation input with the texts a good output should resemble."""

    inputs: dict[str, str]
    """Keyed by the task's field names."""
    references: list[str] = field(default_factory=list)
    """Target outputs; empty when the data has none (e.g. detox prompts)."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Source id, format, and whatever else the row carried that metrics may use."""


def load_examples(source: str | Path, *, task: Task, limit: int | None = None,
                  split: str | None = None) -> list[Example]:
    """Read `source` (a file, a folder of files, or a Hub dataset id) as examples for `task`.

    In a folder, files whose format does not fit the task are skipped; feedback records of
    other tasks are skipped; feedback with the same inputs is merged into one example.

    Raises:
        InvalidInput: missing source, unknown format, a format that does not fit the task,
            or no usable rows.
    """
    examples: dict[str, Example] = {}
    seen: list[str] = []
    for label, rows in read_sources(source, config=task.slug, split=split):
        fmt, rows = _peek_format(label, rows, task)
        seen.append(fmt or "unknown")
        if fmt == "empty":
            continue
        converter = _converter(fmt, task)
        if converter is None:
            if Path(str(source)).expanduser().is_dir():
                continue
            raise InvalidInput(_mismatch(label, fmt, task))
        for row in rows:
            example = converter(row, task)
            if example is None or not all(example.inputs.get(n, "").strip() for n in task.field_names):
                continue
            example.meta.setdefault("format", fmt)
            key = json.dumps(example.inputs, sort_keys=True)
            if key in examples:
                _merge(examples[key], example)
            else:
                examples[key] = example
            if limit is not None and len(examples) >= limit:
                return list(examples.values())
    if not examples:
        formats = ", ".join(sorted(set(seen))) or "none"
        raise InvalidInput(f"No {task.slug} examples in {source} (formats found: {formats}).")
    return list(examples.values())


def load_preference_pairs(source: str | Path, *, limit: int | None = None,
                          split: str | None = None) -> list[dict[str, str]]:
    """Rows `prompt, response_a, response_b, winner` (winner in a/b/tie) from preference data.

    Reads HH-RLHF (this project's `hh_rlhf.jsonl` or the upstream chosen/rejected transcripts),
    the Kaggle "LLM Classification Finetuning" CSV (multi-turn prompts and responses, stored there
    as JSON lists, are joined with blank lines) and Flywheel `preference` feedback records.
    """
    pairs: list[dict[str, str]] = []
    seen: list[str] = []
    for label, rows in read_sources(source, config="arena", split=split):
        fmt, rows = _peek_format(label, rows, None)
        seen.append(fmt or "unknown")
        if fmt == "empty":
            continue
        reader = _PAIR_READERS.get(fmt or "")
        if reader is None:
            if Path(str(source)).expanduser().is_dir():
                continue
            raise InvalidInput(f"{label} is not preference data (format: {fmt or 'unknown'}); expected "
                               "HH-RLHF, the Kaggle arena CSV or Flywheel preference feedback.")
        for row in rows:
            pair = reader(row)
            if pair is not None and pair["prompt"].strip() and pair["winner"] in WINNERS:
                pairs.append(pair)
                if limit is not None and len(pairs) >= limit:
                    return pairs
    if not pairs:
        raise InvalidInput(f"No preference pairs in {source} (formats found: {', '.join(seen) or 'none'}).")
    return pairs


def interests_from_persona(sentences: Sequence[str], *, limit: int = 4) -> str:
    """A short comma-separated interest list drawn from persona sentences.

    Takes what follows "I love/like/enjoy", "my favorite ... is", "... is my passion",
    "I am into / a fan of" and hobby verbs ("I play guitar"); with none of those it falls back
    to the first two sentences, shortened.

    Example:
        >>> interests_from_persona(["I love to bake cookies.", "Knitting is my passion.", "I am tall."])
        'bake cookies, knitting'
    """
    found: list[str] = []
    for sentence in sentences:
        text = sentence.strip().rstrip(".!?").strip()
        for pattern in _INTEREST_PATTERNS:
            match = pattern.match(text)
            if match:
                phrase = " ".join(match.group("x").split()[:8]).strip(" ,;")
                if phrase and phrase.lower() not in (f.lower() for f in found):
                    found.append(phrase[0].lower() + phrase[1:] if not phrase[:2].isupper() else phrase)
                break
    if not found:
        found = [_LEADING_I.sub("", s.strip().rstrip(".!?")) for s in sentences[:2] if s.strip()]
    return ", ".join(found[:limit])[:300]


_HOBBY_VERBS = ("play|collect|practice|watch|read|write|paint|draw|cook|bake|knit|sew|hike|run|swim|"
                "surf|ski|dance|sing|garden|volunteer|travel|fish|hunt|camp|ride|build|restore|"
                "climb|skate|bike|go|listen")
_INTEREST_PATTERNS = [
    re.compile(p, re.IGNORECASE) for p in (
        r"^i (?:really |also |just |absolutely )?(?:love|like|enjoy|adore)s? (?:to )?(?P<x>.+)$",
        r"^my (?:favou?rite) .+? (?:is|are) (?P<x>.+)$",
        r"^my hobb(?:y is|ies are|ies include) (?P<x>.+)$",
        r"^(?P<x>.+?) (?:is|are) my (?:passion|hobby|favou?rite \w+)$",
        r"^i(?: am|'m) (?:really |very )?(?:into|passionate about|obsessed with|interested in|"
        r"a (?:big |huge )?fan of) (?P<x>.+)$",
        r"^(?:in my (?:spare|free) time|on (?:the )?weekends),? i (?:like to |love to |enjoy )?(?P<x>.+)$",
        rf"^i (?P<x>(?:{_HOBBY_VERBS})s?(?: .*)?)$",
    )
]
_LEADING_I = re.compile(r"^i (?:am|have|had|was|can|will|do|'m) ", re.IGNORECASE)


def _peek_format(label: str, rows: Iterator[Row], task: Task | None) -> tuple[str | None, Iterator[Row]]:
    first = next(rows, None)
    if first is None:
        return "empty", iter(())
    fmt = detect_format(first)
    if fmt is None and task is not None and all(isinstance(first.get(n), str) for n in task.field_names):
        fmt = "fields"

    def chained() -> Iterator[Row]:
        yield first
        yield from rows

    return fmt, chained()


def _mismatch(label: str, fmt: str | None, task: Task) -> str:
    if fmt is None:
        return (f"{label}: unknown data format (no known fields; for {task.slug} a row needs "
                f"{', '.join(task.field_names)} or a public data set's fields).")
    fits = sorted(slug for slug, kinds in _TASK_FORMATS.items() if fmt in kinds)
    where = f"it fits {', '.join(fits)}" if fits else "no generation task uses it"
    return f"{label} is {fmt} data, which does not fit task {task.slug}: {where}."


def _merge(into: Example, other: Example) -> None:
    for reference in other.references:
        if reference not in into.references:
            into.references.append(reference)
    into.meta.setdefault("merged_ids", []).append(other.meta.get("id"))


def _clean(value: Any) -> str:
    return strip_control_characters(str(value)).strip() if value is not None else ""


def _refs(*values: Any) -> list[str]:
    out: list[str] = []
    for value in values:
        for text in value if isinstance(value, list) else [value]:
            cleaned = _clean(text)
            if cleaned and cleaned not in out:
                out.append(cleaned)
    return out


def _from_feedback(row: Row, task: Task) -> Example | None:
    if row.get("task") != task.slug or not isinstance(row.get("inputs"), dict):
        return None
    kind, label = row.get("kind"), row.get("label")
    references: list[str] = []
    if kind == "edit":
        references = _refs(row.get("edited"))
    elif kind == "flag" and label in task.good_flags:
        references = _refs(row.get("completion"))
    elif kind == "preference" and not row.get("tie"):
        references = _refs(row.get("chosen"))
    inputs = {n: _clean(row["inputs"].get(n)) for n in task.field_names}
    return Example(inputs, references, {"id": row.get("id"), "kind": kind, "label": label})


def _from_dialogsum(row: Row, task: Task) -> Example:
    return Example({"dialogue": _clean(row["dialogue"])},
                   _refs(row.get("all_summaries") or row.get("summary")),
                   {"id": row.get("id"), "topic": row.get("topic")})


def _from_rtp(row: Row, task: Task) -> Example:
    prompt = row["prompt"]["text"] if isinstance(row["prompt"], dict) else row["prompt"]
    continuation = row["continuation"]
    continuation = continuation.get("text") if isinstance(continuation, dict) else continuation
    # The prompt's tail whitespace matters for continuation, so only control characters go.
    return Example({"prompt": strip_control_characters(str(prompt))}, [],
                   {"id": row.get("id"), "continuation": continuation,
                    "prompt_toxicity": row.get("prompt_toxicity")})


def _from_arena_pair(row: Row, task: Task) -> Example | None:
    pair = _PAIR_READERS[detect_format(row) or ""](row)
    if pair is None:
        return None
    references = {"a": [pair["response_a"]], "b": [pair["response_b"]]}.get(
        pair["winner"], [pair["response_a"], pair["response_b"]] if pair["winner"] == "tie" else [])
    return Example({"prompt": pair["prompt"]}, _refs(references),
                   {"id": row.get("id"), **{k: pair[k] for k in ("response_a", "response_b", "winner")}})


def _from_spc_starter(row: Row, task: Task) -> Example | None:
    speaker = row.get("first_substantive_speaker") or row.get("first_question_speaker") or "user1"
    partner = "user2" if speaker == "user1" else "user1"
    lines = [row.get(k) for k in ("first_question", "first_substantive_line")
             if row.get(k) and row.get(f"{k.removesuffix('_line')}_speaker") == speaker]
    persona = row.get(f"{partner}_persona") or []
    bio = _clean(row.get(f"{partner}_bio") or " ".join(persona))
    return Example({"bio": bio, "interests": interests_from_persona(persona or [bio])}, _refs(lines),
                   {"id": row.get("id"), "speaker": speaker})


def _from_persona_line(row: Row, task: Task) -> Example:
    text = _clean(row["text"])
    return Example({"bio": text, "interests": interests_from_persona([text])}, [], {"id": row.get("id")})


def _from_dialogue_pair(row: Row, task: Task) -> Example:
    return Example({"dialogue": "\n".join(_clean(t) for t in row["context"][-CONTEXT_TURNS:])},
                   _refs(row.get("response")), {"id": row.get("id")})


def _from_opener(row: Row, task: Task) -> Example:
    return Example({"dialogue": _clean(row["opening_line"])}, _refs(row.get("reply")), {"id": row.get("id")})


def _from_dialogue(row: Row, task: Task) -> Example | None:
    turns = [_clean(t.get("text") if isinstance(t, dict) else t) for t in row["turns"]]
    turns = [t for t in turns if t]
    if len(turns) < 2:
        return None
    return Example({"dialogue": "\n".join(turns[:-1][-CONTEXT_TURNS:])}, [turns[-1]], {"id": row.get("id")})


def _from_tweet(row: Row, task: Task) -> Example | None:
    names = row.get("topics") or [row.get("label_name")]
    topics = [str(n).replace(" | ", " and ").strip() for n in names if n]
    if not topics:
        return None
    # "Company | Product News" -> "Company and product news"; acronyms (M&A, TV, IPO) stay.
    words = ", ".join(topics).split()
    prompt = " ".join(w if w.isupper() else w.lower() for w in words)
    return Example({"prompt": prompt[0].upper() + prompt[1:]}, _refs(row.get("text")),
                   {"id": row.get("id"), "topics": topics})


def _from_fields(row: Row, task: Task) -> Example:
    references = row.get("references") or [row.get(k) for k in ("reference", "target", "output")]
    return Example({n: _clean(row.get(n)) for n in task.field_names}, _refs(references),
                   {"id": row.get("id")})


Converter = Callable[[Row, Task], Example | None]
_CONVERTERS: dict[str, Converter] = {
    "feedback": _from_feedback, "dialogsum": _from_dialogsum, "rtp": _from_rtp,
    "hh_rlhf": _from_arena_pair, "kaggle_arena": _from_arena_pair, "hh_rlhf_raw": _from_arena_pair,
    "spc_starters": _from_spc_starter, "persona_lines": _from_persona_line,
    "dialogue_pairs": _from_dialogue_pair, "dailydialog_openers": _from_opener, "dialogues": _from_dialogue,
    "tweettopic": _from_tweet, "financial_news": _from_tweet, "fields": _from_fields,
}
_TASK_FORMATS: dict[str, set[str]] = {
    "conversation_starter": {"spc_starters", "persona_lines"},
    "dialogue_summary": {"dialogsum"},
    "dialogue_response": {"dialogue_pairs", "dailydialog_openers", "dialogues"},
    "detox": {"rtp"},
    "tweet": {"tweettopic", "financial_news"},
    "arena": {"hh_rlhf", "kaggle_arena", "hh_rlhf_raw"},
}


def _converter(fmt: str | None, task: Task) -> Converter | None:
    if fmt in ("feedback", "fields") or fmt in _TASK_FORMATS.get(task.slug, set()):
        return _CONVERTERS[fmt]
    return None


def _pair_hh(row: Row) -> dict[str, str] | None:
    winner = str(row.get("winner", "")).lower()
    return {"prompt": _hh_prompt(str(row["prompt"])), "response_a": _clean(row["response_a"]),
            "response_b": _clean(row["response_b"]), "winner": winner}


def _pair_hh_raw(row: Row) -> dict[str, str] | None:
    chosen, rejected = str(row["chosen"]), str(row["rejected"])
    cut = chosen.rfind("\n\nAssistant:")
    if cut < 0:
        return None
    prompt, good = chosen[:cut + len("\n\nAssistant:")], chosen[cut + len("\n\nAssistant:"):]
    bad = rejected[rejected.rfind("\n\nAssistant:") + len("\n\nAssistant:"):]
    return _ordered(_hh_prompt(prompt), _clean(good), _clean(bad), key=chosen)


def _pair_kaggle(row: Row) -> dict[str, str] | None:
    flags = [str(row.get(k, "0")).strip() in ("1", "1.0", "True", "true")
             for k in ("winner_model_a", "winner_model_b", "winner_tie")]
    winner = WINNERS[flags.index(True)] if any(flags) else ""
    return {"prompt": _json_text(row["prompt"]), "response_a": _json_text(row["response_a"]),
            "response_b": _json_text(row["response_b"]), "winner": winner}


def _pair_feedback(row: Row) -> dict[str, str] | None:
    if row.get("kind") != "preference" or not row.get("chosen") or not row.get("rejected"):
        return None
    messages = row.get("prompt") or []
    users = [m.get("content", "") for m in messages if isinstance(m, Mapping) and m.get("role") == "user"]
    inputs = row.get("inputs") or {}
    prompt = users[-1] if users else "\n".join(str(v) for v in inputs.values())
    pair = _ordered(_clean(prompt), _clean(row["chosen"]), _clean(row["rejected"]),
                    key=str(row.get("id") or row["chosen"]))
    if row.get("tie"):
        pair["winner"] = "tie"
    return pair


_PAIR_READERS: dict[str, Callable[[Row], dict[str, str] | None]] = {
    "hh_rlhf": _pair_hh, "hh_rlhf_raw": _pair_hh_raw, "kaggle_arena": _pair_kaggle,
    "feedback": _pair_feedback,
}


def _ordered(prompt: str, chosen: str, rejected: str, *, key: str) -> dict[str, str]:
    # A deterministic coin flip per pair, so the chosen answer is not always in slot A.
    if int(hashlib.sha256(key.encode()).hexdigest(), 16) % 2:
        return {"prompt": prompt, "response_a": rejected, "response_b": chosen, "winner": "b"}
    return {"prompt": prompt, "response_a": chosen, "response_b": rejected, "winner": "a"}


def _hh_prompt(transcript: str) -> str:
    """A single-turn HH prompt becomes the human's text; a longer one keeps its transcript."""
    text = transcript.strip()
    text = text.removesuffix("Assistant:").rstrip()
    text = text.removeprefix("Human:").strip()
    if "\n\nAssistant:" not in text and "\n\nHuman:" not in text:
        return _clean(text)
    return _clean("Human: " + text)


def _json_text(value: Any) -> str:
    if isinstance(value, str) and value.startswith("["):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return _clean(value)
    if isinstance(value, list):
        return "\n\n".join(_clean(v) for v in value if v is not None)
    return _clean(value)
