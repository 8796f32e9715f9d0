"""Training data for every trainer: feedback views + `--seed-data`, a held-out split, a size check.

    data = build_training_data("dpo", task=get_task("arena"), feedback_repo=None,
                               seed_data=["../shared/data/preference/hh_rlhf.jsonl"], eval_limit=16)
    data.train          # datasets.Dataset in TRL's format for the method
    data.eval_examples  # list[tasks.seed_data.Example] held out for the before/after evaluation
    data.sources        # list[hub.publish.DatasetRef] (feedback revision, rows) for the model card

Row formats (`chat=True`, the default, gives TRL's conversational format; `chat=False` gives
plain strings, for seq2seq models and causal LMs without a chat template):

- sft: prompt, completion. Feedback: edits, good flags, high ratings. Seed: examples with references.
- dpo: prompt, chosen, rejected. Feedback: votes (ties and both-bad skipped), edits (edited beats the
  original). Seed: preference pairs (HH-RLHF, the arena CSV).
- kto: prompt, completion, label (bool). Feedback: flags (the task's good flags are True). Seed:
  references are True; for arena, each preference pair gives one True and one False row.
- reward: prompt, chosen, rejected. Feedback: votes, edits, two ratings of the same input. Seed: pairs.
- prompts: prompt. Feedback: the inputs of any record. Seed: example inputs.

Held-out rows are chosen by prompt, so no prompt is both trained on and evaluated on.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hub.feedback.records import NO_WINNER
from hub.publish import DatasetRef
from tasks import InvalidInput, Task
from tasks.seed_data import Example, load_examples, load_preference_pairs

logger = logging.getLogger(__name__)

METHODS = ("sft", "dpo", "kto", "reward", "prompts")
MIN_ROWS = 8
"""Default smallest training set a trainer accepts (after the held-out split)."""
HOLDOUT_FRACTION = 0.2
"""At most this share of the rows (grouped by prompt) is held out when no --eval-data is given."""
GOOD_RATING = 0.75
"""A rating record whose reward (0..1) reaches this counts as an SFT example."""

Row = dict[str, Any]


@dataclass
class TrainingData:
    """A method's training set, its held-out evaluation examples and where they came from."""

    method: str
    train: Any
    """`datasets.Dataset` with the columns of the method (see the module table)."""
    eval_examples: list[Example]
    """Held-out examples (inputs + references) for `trainers.evaluation.evaluate`."""
    sources: list[DatasetRef] = field(default_factory=list)
    """Feedback and seed sources with the revision read and the rows taken, for the model card."""
    eval_source: str = "held-out"
    """Where `eval_examples` came from: `held-out`, `--eval-data <ref>` or `task examples`."""
    row_sources: list[DatasetRef] = field(default_factory=list)
    """The source of each training row (parallel to `train`), so filters can keep `rows` exact."""

    def summary(self) -> str:
        parts = ", ".join(f"{s.rows} from {s.kind} {s.ref}" for s in self.sources if s.rows)
        return (f"{len(self.train)} {self.method} training rows ({parts or 'none'}); "
                f"{len(self.eval_examples)} evaluation examples ({self.eval_source}).")


@dataclass
class _Item:
    """One training row, with the example that stands for it in a held-out evaluation."""

    row: Row
    example: Example
    source: int
    """Index into the sources list."""
    feedback: bool = False
    """Came from collected feedback (held out only when seed rows run short)."""

    @property
    def group(self) -> str:
        return json.dumps(self.example.inputs, sort_keys=True)


def build_training_data(method: str, *, task: Task, feedback_repo: str | None = None,
                        feedback_revision: str | None = None, seed_data: Sequence[str] = (),
                        eval_data: str | None = None, eval_limit: int = 32, min_rows: int = MIN_ROWS,
                        chat: bool = True, seed: int = 42, use_feedback: bool = True) -> TrainingData:
    """Assemble `method`'s training set for `task`.

    Args:
        method: one of `METHODS`.
        feedback_repo: Hub dataset id or local folder of feedback (None: the local feedback home).
        feedback_revision: revision of the feedback repo (None: latest).
        seed_data: extra sources read by `tasks.seed_data` (JSONL/CSV/Parquet files, folders, Hub ids).
        eval_data: held-out evaluation source; without it up to `eval_limit` examples are held out
            from the training rows (seed rows first), at most `HOLDOUT_FRACTION` of them.
        eval_limit: most evaluation examples (0: no evaluation).
        min_rows: fewer training rows than this raise `InvalidInput`.
        chat: conversational rows (lists of messages) instead of plain-text prompts.
        use_feedback: read the feedback repo at all (False: seed data only).

    Raises:
        InvalidInput: unknown method, unreadable source, rows of the wrong kind for the method,
            or too few rows; the message says what was found and what the method needs.
    """
    if method not in METHODS:
        raise InvalidInput(f"Unknown training method {method!r}; choose one of: {', '.join(METHODS)}.")
    sources: list[DatasetRef] = []
    items: list[_Item] = []
    found_kinds: dict[str, int] = {}
    if use_feedback:
        ref, revision, feedback_items, found_kinds = _feedback_items(
            method, task, feedback_repo, feedback_revision, chat=chat, source=len(sources))
        sources.append(DatasetRef(ref, revision=revision, rows=0, kind="feedback"))
        items += feedback_items
    for source in seed_data:
        seed_items = _seed_items(method, task, source, chat=chat, index=len(sources))
        sources.append(DatasetRef(str(source), revision=_file_revision(source), rows=0, kind="seed"))
        items += seed_items

    eval_examples, eval_source = [], "none"
    if eval_data and eval_limit > 0:
        eval_examples = load_examples(eval_data, task=task, limit=eval_limit)
        eval_source = f"--eval-data {eval_data}"
        held = {json.dumps(e.inputs, sort_keys=True) for e in eval_examples}
        items = [i for i in items if i.group not in held]
    elif eval_limit > 0:
        items, eval_examples = _hold_out(items, eval_limit, seed=seed, min_rows=min_rows)
        eval_source = "held-out"
        if not eval_examples and task.examples:
            eval_examples = [Example(dict(e), [], {"id": f"task-example-{n}"})
                             for n, e in enumerate(task.examples)]
            eval_source = "task examples (no references)"

    if method == "prompts":  # one row per distinct prompt
        firsts: dict[str, _Item] = {}
        for item in items:
            firsts.setdefault(item.group, item)
        items = list(firsts.values())
    _check_size(method, task, items, found_kinds, min_rows, seed_data=seed_data)
    for item in items:
        sources[item.source].rows += 1
    all_sources = list(sources)
    # The card lists what was trained on; a feedback repo named explicitly is listed even if empty.
    sources = [s for s in sources if s.rows or (s.kind == "feedback" and feedback_repo)]
    random.Random(seed).shuffle(items)
    from datasets import Dataset

    data = TrainingData(method, Dataset.from_list([i.row for i in items]), eval_examples, sources,
                        eval_source, row_sources=[all_sources[i.source] for i in items])
    logger.info(data.summary())
    return data


def build_from_config(config: Any, method: str, *, task: Task, chat: bool = True,
                      min_rows: int | None = None) -> TrainingData:
    """`build_training_data` with the options of a `trainers.common.CommonArgs`."""
    return build_training_data(
        method, task=task, feedback_repo=config.feedback_repo, feedback_revision=config.feedback_revision,
        seed_data=list(config.seed_data or []), eval_data=config.eval_data, eval_limit=config.eval_limit,
        min_rows=min_rows if min_rows is not None else getattr(config, "min_rows", MIN_ROWS),
        chat=chat, seed=config.seed)


# -- rows ---------------------------------------------------------------------------------------


def prompt_of(task: Task, inputs: dict[str, str], *, chat: bool) -> Any:
    """The prompt column for `inputs`: the task's chat messages, or its plain-text prompt."""
    return task.messages(inputs) if chat else task.text_prompt(inputs)


def answer_of(text: str, *, chat: bool) -> Any:
    """A completion/chosen/rejected column value: one assistant message, or the text itself."""
    return [{"role": "assistant", "content": text}] if chat else text


def _row(method: str, task: Task, inputs: dict[str, str], *, chat: bool, **texts: Any) -> Row:
    return _texts_row(method, prompt_of(task, inputs, chat=chat), texts, chat=chat)


def _texts_row(method: str, prompt: Any, texts: dict[str, Any], *, chat: bool) -> Row:
    if method == "prompts":
        return {"prompt": prompt}
    if method == "sft":
        return {"prompt": prompt, "completion": answer_of(texts["completion"], chat=chat)}
    if method == "kto":
        return {"prompt": prompt, "completion": answer_of(texts["completion"], chat=chat),
                "label": bool(texts.get("label", True))}
    return {"prompt": prompt, "chosen": answer_of(texts["chosen"], chat=chat),
            "rejected": answer_of(texts["rejected"], chat=chat)}


def _seed_items(method: str, task: Task, source: str, *, chat: bool, index: int) -> list[_Item]:
    items: list[_Item] = []
    if method in ("dpo", "reward") or (method == "kto" and task.slug == "arena"):
        field_name = task.field_names[0]
        for pair in load_preference_pairs(source):
            if pair["winner"] not in ("a", "b"):
                continue
            chosen, rejected = ((pair["response_a"], pair["response_b"]) if pair["winner"] == "a"
                                else (pair["response_b"], pair["response_a"]))
            inputs = {field_name: pair["prompt"]}
            example = Example(inputs, [chosen], {"id": pair.get("id")})
            if method == "kto":
                items.append(_Item(_row(method, task, inputs, chat=chat, completion=chosen, label=True),
                                   example, index))
                items.append(_Item(_row(method, task, inputs, chat=chat, completion=rejected, label=False),
                                   example, index))
            else:
                items.append(_Item(_row(method, task, inputs, chat=chat, chosen=chosen, rejected=rejected),
                                   example, index))
        return items
    for example in load_examples(source, task=task):
        if method == "prompts":
            items.append(_Item(_row(method, task, example.inputs, chat=chat), example, index))
        else:  # one row per reference: merged duplicates and multi-reference data sets keep every target
            items += [_Item(_row(method, task, example.inputs, chat=chat, completion=reference, label=True),
                            example, index) for reference in example.references]
    if not items:
        raise InvalidInput(f"{source} has no {task.slug} examples with reference outputs, "
                           f"so it cannot be {method.upper()} training data.")
    return items


def _feedback_items(method: str, task: Task, repo: str | None, revision: str | None, *, chat: bool,
                    source: int) -> tuple[str, str | None, list[_Item], dict[str, int]]:
    """Read `task`'s feedback records and turn them into `method` rows; also count records per kind.

    Mirrors the views of `hub.feedback.loading` (sft_view, preference_view, kto_view), but keeps each
    record's `inputs` so a row can be rendered as plain text and held out as an evaluation example.
    """
    from hub.feedback.loading import load_feedback_snapshot

    snapshot = load_feedback_snapshot(repo, task=task.slug, revision=revision)
    found: dict[str, int] = {}
    items: list[_Item] = []
    rating_groups: dict[str, list[dict[str, Any]]] = {}
    for record in snapshot.dataset:
        kind = record["kind"]
        found[kind] = found.get(kind, 0) + 1
        inputs = {name: record["inputs"].get(name) or "" for name in task.field_names}
        prompt = _record_prompt(task, record, inputs, chat=chat)
        meta = {"id": record["id"], "kind": kind, "label": record["label"]}
        for texts in _record_texts(method, task, record):
            reference = texts.get("completion") if texts.get("label", True) else None
            reference = texts.get("chosen", reference)
            example = Example(inputs, [reference] if reference else [], meta)
            items.append(_Item(_texts_row(method, prompt, texts, chat=chat), example, source, feedback=True))
        if method == "reward" and kind == "rating" and record["reward"] is not None:
            rating_groups.setdefault(json.dumps(inputs, sort_keys=True), []).append(record)
    for group in rating_groups.values():  # two ratings of the same input make a preference pair
        ranked = sorted(group, key=lambda r: -r["reward"])
        for better, worse in zip(ranked, ranked[1:], strict=False):
            if better["reward"] > worse["reward"] and better["completion"] != worse["completion"]:
                inputs = {name: better["inputs"].get(name) or "" for name in task.field_names}
                texts = {"chosen": better["completion"], "rejected": worse["completion"]}
                items.append(_Item(_texts_row(method, _record_prompt(task, better, inputs, chat=chat), texts,
                                              chat=chat), Example(inputs, [better["completion"]]), source,
                                   feedback=True))
    return snapshot.source, snapshot.revision, items, found


def _record_texts(method: str, task: Task, record: dict[str, Any]) -> list[dict[str, Any]]:
    """The completion/chosen/rejected texts one feedback record gives `method` (none: wrong kind)."""
    kind, label = record["kind"], record["label"]
    if method == "prompts":
        return [{}]
    if method == "sft":
        if kind == "edit" and record["edited"]:
            return [{"completion": record["edited"]}]
        if kind == "flag" and label in task.good_flags or \
                kind == "rating" and (record["reward"] or 0) >= GOOD_RATING:
            return [{"completion": record["completion"]}]
        return []
    if method == "kto":
        return [{"completion": record["completion"], "label": label in task.good_flags}] if kind == "flag" \
            else []
    if kind == "preference" and not record["tie"] and label not in NO_WINNER:
        return [{"chosen": record["chosen"], "rejected": record["rejected"]}]
    if kind == "edit" and record["edited"] and record["completion"] not in (None, "", record["edited"]):
        # A correction is a preference: the edited text beats the original.
        return [{"chosen": record["edited"], "rejected": record["completion"]}]
    return []


def _record_prompt(task: Task, record: dict[str, Any], inputs: dict[str, str], *, chat: bool) -> Any:
    """The messages the person actually saw (chat), or the task's plain prompt for the inputs."""
    if chat and record.get("prompt"):
        return [{"role": m["role"], "content": m["content"]} for m in record["prompt"]]
    return prompt_of(task, inputs, chat=chat)


def _hold_out(items: list[_Item], limit: int, *, seed: int,
              min_rows: int) -> tuple[list[_Item], list[Example]]:
    """Move whole prompt groups (seed sources first) out of `items` until `limit` examples are held."""
    groups: dict[str, list[_Item]] = {}
    for item in items:
        groups.setdefault(item.group, []).append(item)
    budget = min(limit, int(len(groups) * HOLDOUT_FRACTION), max(0, len(items) - min_rows))
    if budget <= 0:
        return items, []
    keys = sorted(groups)
    random.Random(seed).shuffle(keys)
    # Prefer groups that have references (measurable) and come from seed data (plentiful).
    keys.sort(key=lambda k: (not groups[k][0].example.references, groups[k][0].feedback))
    held: set[str] = set()
    kept_rows = len(items)
    for key in keys:
        if len(held) >= budget or kept_rows - len(groups[key]) < min_rows:
            continue
        held.add(key)
        kept_rows -= len(groups[key])
    examples = [_merged_example(groups[k]) for k in keys if k in held]
    return [i for i in items if i.group not in held], examples


def _merged_example(group: list[_Item]) -> Example:
    first = group[0].example
    references = list(dict.fromkeys(r for item in group for r in item.example.references))
    return Example(dict(first.inputs), references, dict(first.meta))


def _check_size(method: str, task: Task, items: list[_Item], found_kinds: dict[str, int], min_rows: int,
                *, seed_data: Sequence[str]) -> None:
    needs = {"sft": "edits, good flags or high ratings", "dpo": "votes (preference feedback)",
             "kto": "flags (good and bad)", "reward": "votes or ratings", "prompts": "any feedback"}[method]
    found = ", ".join(f"{n} {k}{'s' if n != 1 else ''}" for k, n in sorted(found_kinds.items())) \
        or "no feedback records"
    if not items:
        hint = "" if seed_data else " or pass --seed-data"
        raise InvalidInput(f"No usable {method.upper()} rows for task {task.slug}: {method.upper()} "
                           f"learns from {needs}, and the feedback holds {found}. Collect more{hint}.")
    if len(items) < min_rows:
        raise InvalidInput(f"Only {len(items)} usable {method.upper()} rows for task {task.slug} "
                           f"(at least {min_rows} needed; feedback holds {found}). "
                           "Collect more feedback, add --seed-data or lower --min-rows.")
    if method == "kto" and len({i.row["label"] for i in items}) < 2:
        kind = "good" if items[0].row["label"] else "bad"
        raise InvalidInput(f"KTO needs both good and bad examples, but all {len(items)} rows for task "
                           f"{task.slug} are {kind}. Collect flags of the other kind.")


def _file_revision(source: str) -> str | None:
    """Content hash of a local seed file, or the current commit of a Hub dataset (None if unknown)."""
    import hashlib

    path = Path(source).expanduser()
    if path.is_dir():
        return None
    if not path.exists():
        try:
            from huggingface_hub import HfApi

            return HfApi().dataset_info(str(source)).sha
        except Exception:  # the data was read already; a missing revision only leaves the card vaguer
            return None
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:40]


def fit_length(data: TrainingData, tokenizer: Any, *, max_length: int, min_rows: int = MIN_ROWS,
               answer_room: int = 32) -> TrainingData:
    """Drop rows whose prompt leaves fewer than `answer_room` of `max_length` tokens for the answer.

    TRL truncates the end of long sequences, which would cut away the completion (the only part
    SFT, DPO and KTO learn from). Raises `InvalidInput` if fewer than `min_rows` rows remain.
    """
    def prompt_tokens(prompt: Any) -> int:
        if isinstance(prompt, list):
            prompt = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        return len(tokenizer(prompt, add_special_tokens=False)["input_ids"])

    limit = max_length - answer_room
    keep = [i for i, prompt in enumerate(data.train["prompt"]) if prompt_tokens(prompt) <= limit]
    if len(keep) == len(data.train):
        return data
    dropped = len(data.train) - len(keep)
    if len(keep) < min_rows:
        raise InvalidInput(f"Only {len(keep)} {data.method.upper()} rows have prompts short enough for "
                           f"--max-length {max_length} ({dropped} longer ones dropped); "
                           f"at least {min_rows} needed. Raise --max-length.")
    logger.info("Dropped %d rows whose prompt exceeds %d tokens (--max-length %d).",
                dropped, limit, max_length)
    kept = set(keep)
    for index, source in enumerate(data.row_sources):
        if index not in kept:
            source.rows -= 1
    data.train = data.train.select(keep)
    data.row_sources = [data.row_sources[i] for i in keep]
    return data
