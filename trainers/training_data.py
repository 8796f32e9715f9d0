"""Every trainer's data: feedback + `--seed-data` rows (rules in `trainers.rows`), held-out prompts, a size check.

    data = build_training_data("dpo", task=get_task("arena"), seed_data=["hh_rlhf.jsonl"], eval_limit=16)
    data.train          # datasets.Dataset in TRL's format (`chat=False`: plain-text prompts and answers)
    data.eval_examples  # held-out `tasks.seed_data.Example`s (inputs + references) for before/after evaluation
    data.sources        # `hub.publish.DatasetRef` per source (revision, rows taken) for the model card

    pairs = collect_pairs(config, task)   # the reward model's `Pair`s: pairs.train, pairs.test (held out)
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from hub.publish import DatasetRef
from tasks import InvalidInput, Task
from tasks.seed_data import Example
from trainers.rows import (
    HOLDOUT_FRACTION,
    MAX_PAIRS_PER_PROMPT,
    METHODS,
    MIN_RATING_GAP,
    Item,
    Row,
    check_size,
    eval_example,
    feedback_records,
    group_by_prompt,
    held_out_groups,
    rows_for_prompt,
    seed_records,
    source_revision,
    too_few,
)

logger = logging.getLogger(__name__)

MIN_ROWS = 8
"""Default smallest training set a trainer accepts (after the held-out split)."""

Pair = dict[str, Any]
"""A reward-model pair: prompt, response_a, response_b, winner (a, b or tie), margin, origin."""


@dataclass
class TrainingData:
    """A method's training set, its held-out evaluation examples and where they came from."""

    method: str
    task: str
    train: Any
    """`datasets.Dataset` with the columns of the method (see `trainers.rows`)."""
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
class PairData:
    """The reward model's training and held-out pairs, and where they came from (for the model card)."""

    train: list[Pair]
    test: list[Pair]
    sources: list[DatasetRef] = field(default_factory=list)

    def summary(self) -> str:
        def count(pairs: list[Pair]) -> str:
            ties = sum(p["winner"] == "tie" for p in pairs)
            return f"{len(pairs)} pair{'' if len(pairs) == 1 else 's'}" + (f" ({ties} ties)" if ties else "")

        parts = ", ".join(f"{s.rows} from {s.kind} {s.ref}" for s in self.sources if s.rows)
        return f"train {count(self.train)}, held out {count(self.test)}; sources: {parts or 'none'}."


@dataclass
class _Assembled:
    train: list[Row]
    row_sources: list[DatasetRef]
    held_out: list[Row]
    eval_examples: list[Example]
    eval_source: str
    sources: list[DatasetRef]


def build_training_data(method: str, *, task: Task, feedback_repo: str | None = None,
                        feedback_revision: str | None = None, seed_data: Sequence[str] = (),
                        eval_data: str | None = None, eval_limit: int = 32,
                        eval_fraction: float = HOLDOUT_FRACTION, min_rows: int = MIN_ROWS, chat: bool = True,
                        seed: int = 42, use_feedback: bool = True, seed_limit: int = 0,
                        min_rating_gap: float = MIN_RATING_GAP,
                        max_pairs_per_prompt: int = MAX_PAIRS_PER_PROMPT,
                        eval_extra_data: Sequence[str] = ()) -> TrainingData:
    """`method`'s training rows for `task`, with evaluation prompts held out.

    Args:
        method: one of `trainers.rows.METHODS` except `reward` (see `collect_pairs`).
        feedback_repo: Hub dataset id or local folder of feedback (None: the local feedback home).
        feedback_revision: revision of the feedback repo (None: latest).
        seed_data: extra sources read by `tasks.seed_data` (JSONL/CSV/Parquet files, folders, Hub ids).
        eval_data: evaluation source; without it, up to `eval_limit` prompts are held out of the rows
            (`eval_fraction` of them, chosen as `trainers.rows.held_out_groups` says).
        chat: conversational rows (lists of messages) instead of plain-text prompts and answers.
        use_feedback: read the feedback repo at all (False: seed data only).
        seed_limit: read at most this many rows per seed source (0: all).
        eval_extra_data: reference sources whose first `eval_limit` examples are evaluated beside the
            held-out slice (or `eval_data`); their prompts are kept out of training.

    Raises:
        InvalidInput: unknown method, unreadable source, too few rows (`trainers.rows.check_size`).
    """
    if method not in METHODS or method == "reward":
        methods = ", ".join(m for m in METHODS if m != "reward")
        raise InvalidInput(f"Unknown training method {method!r}; choose one of: {methods}.")
    assembled = _assemble(method, task=task, feedback_repo=feedback_repo, feedback_revision=feedback_revision,
                          seed_data=seed_data, eval_data=eval_data, eval_limit=eval_limit,
                          eval_fraction=eval_fraction, min_rows=min_rows, chat=chat, seed=seed,
                          use_feedback=use_feedback, seed_limit=seed_limit, min_rating_gap=min_rating_gap,
                          max_pairs_per_prompt=max_pairs_per_prompt, eval_extra_data=eval_extra_data)
    from datasets import Dataset

    data = TrainingData(method, task.slug, Dataset.from_list(assembled.train), assembled.eval_examples,
                        assembled.sources, assembled.eval_source, row_sources=assembled.row_sources)
    logger.info(data.summary())
    return data


def build_from_config(config: Any, method: str, *, task: Task, chat: bool = True,
                      min_rows: int | None = None) -> TrainingData:
    """`build_training_data` with the options of a trainer's config (`trainers.common.TrainerArgs` and kin)."""
    return build_training_data(method, task=task, chat=chat, **_options(config, min_rows=min_rows))


def load_prompt_data(config: Any, task: Task) -> TrainingData:
    """The RL trainers' prompts: `train` has one plain-text `prompt` per distinct input."""
    return build_from_config(config, "prompts", task=task, chat=False)


def collect_pairs(config: Any, task: Task) -> PairData:
    """The reward model's pairs of `task` (votes, edits, rating comparisons, seed pairs), prompts held out.

    Raises:
        InvalidInput: unreadable sources, or too few pairs with a winner (`trainers.rows.check_size`).
    """
    assembled = _assemble("reward", task=task, chat=True, **_options(config))
    return PairData(train=[_laid_out(row) for row in assembled.train],
                    test=[_laid_out(row) for row in assembled.held_out], sources=assembled.sources)


def _options(config: Any, *, min_rows: int | None = None) -> dict[str, Any]:
    return dict(feedback_repo=config.feedback_repo, feedback_revision=config.feedback_revision,
                seed_data=list(config.seed_data or []), eval_data=config.eval_data, eval_limit=config.eval_limit,
                eval_fraction=getattr(config, "eval_fraction", HOLDOUT_FRACTION),
                min_rows=min_rows if min_rows is not None else getattr(config, "min_rows", MIN_ROWS),
                seed=config.seed, use_feedback=getattr(config, "use_feedback", True),
                seed_limit=getattr(config, "seed_limit", 0),
                min_rating_gap=getattr(config, "min_rating_gap", MIN_RATING_GAP),
                max_pairs_per_prompt=getattr(config, "max_pairs_per_prompt", MAX_PAIRS_PER_PROMPT),
                eval_extra_data=list(getattr(config, "eval_extra_data", None) or []))


def _assemble(method: str, *, task: Task, feedback_repo: str | None, feedback_revision: str | None,
              seed_data: Sequence[str], eval_data: str | None, eval_limit: int, eval_fraction: float,
              min_rows: int, chat: bool, seed: int, use_feedback: bool, seed_limit: int,
              min_rating_gap: float, max_pairs_per_prompt: int, eval_extra_data: Sequence[str] = ()) -> _Assembled:
    sources: list[DatasetRef] = []
    items: list[Item] = []
    found: dict[str, int] = {}
    if use_feedback:
        ref, records = feedback_records(task, feedback_repo, feedback_revision)
        found = dict(Counter(record["kind"] for record in records))
        items += [Item(record, len(sources)) for record in records]
        sources.append(ref)
    for source in seed_data:
        items += [Item(record, len(sources)) for record in seed_records(method, task, source,
                                                                       limit=seed_limit or None)]
        sources.append(DatasetRef(str(source), revision=source_revision(source), kind="seed"))

    def rows_of(group: list[Item]) -> list[tuple[Row, int]]:
        return rows_for_prompt(method, task, group, chat=chat, min_gap=min_rating_gap,
                               max_pairs=max_pairs_per_prompt)

    groups = group_by_prompt(items)
    rows = {key: rows_of(group) for key, group in groups.items()}
    if eval_data and eval_limit > 0:  # evaluation data is read as examples (references optional) or pairs
        evaluation = group_by_prompt([Item(record, -1) for record in seed_records(
            "reward" if method == "reward" else "prompts", task, eval_data, limit=eval_limit)])
        held_out = [row for group in evaluation.values() for row, _ in rows_of(group)]
        eval_source = f"--eval-data {eval_data}"
    else:
        held = held_out_groups({key: len(group_rows) for key, group_rows in rows.items()}, fraction=eval_fraction,
                               limit=eval_limit, seed=seed, min_train=min_rows)
        evaluation = {key: groups[key] for key in held}
        held_out = [row for key in held for row, _ in rows[key]]
        eval_source = "held-out"
    for source in eval_extra_data if eval_limit > 0 else ():  # evaluated beside the held-out prompts: never trained on
        evaluation.update(group_by_prompt([Item(record, -1) for record in seed_records(
            "prompts", task, source, limit=eval_limit)]))
        eval_source += f" + {source}"
    eval_examples = [eval_example(task, group) for group in evaluation.values()]
    if not eval_examples and eval_limit > 0 and task.examples:
        eval_examples = [Example(dict(inputs), [], {"id": f"task-example-{n}"})
                         for n, inputs in enumerate(task.examples)]
        eval_source = "task examples (no references)"
    train = [(row, source) for key, group_rows in rows.items() if key not in evaluation
             for row, source in group_rows]
    check_size(method, task, [row for row, _ in train], found=found, min_rows=min_rows, seeded=bool(seed_data))
    random.Random(seed).shuffle(train)
    for _, source in train:
        sources[source].rows += 1
    # The card lists what was trained on; a feedback repo named explicitly is listed even if empty.
    listed = [s for s in sources if s.rows or (s.kind == "feedback" and feedback_repo)]
    return _Assembled([row for row, _ in train], [sources[source] for _, source in train], held_out,
                      eval_examples, eval_source, listed)


def _laid_out(row: Row) -> Pair:
    """A reward row as a `Pair`: the better answer in slot A or B by a fair coin per pair, so `winner`
    is about half a, half b and a model cannot learn the slot."""
    key = json.dumps([row["prompt"], row["chosen"], row["rejected"]], sort_keys=True)
    flip = not row["tie"] and int(hashlib.sha256(key.encode()).hexdigest(), 16) % 2 == 1
    first, second = (row["rejected"], row["chosen"]) if flip else (row["chosen"], row["rejected"])
    winner = "tie" if row["tie"] else "b" if flip else "a"
    return {"prompt": row["prompt"], "response_a": first, "response_b": second, "winner": winner,
            "margin": row["margin"], "origin": row["origin"]}


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
    too_few(data.method, data.task, len(keep), min_rows=min_rows, advice="Raise --max-length.",
            why=f"{dropped} more have prompts too long for --max-length {max_length}")
    logger.info("Dropped %d rows whose prompt exceeds %d tokens (--max-length %d).", dropped, limit, max_length)
    kept = set(keep)
    for index, source in enumerate(data.row_sources):
        if index not in kept:
            source.rows -= 1
    data.train = data.train.select(keep)
    data.row_sources = [data.row_sources[i] for i in keep]
    return data
