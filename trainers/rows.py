"""Which feedback record or seed row becomes which training row: the one place for these rules.

A *good example* (`is_good_example`) is an edit's corrected text, a seed reference, a completion flagged with
one of the task's good flags, or a rated completion whose reward reaches `GOOD_REWARD`; other flags and lower
ratings are bad examples. A *comparison* (`comparison`) is a vote or a seed pair (tie and both-bad votes are
ties), or an edit (the corrected text beats the original); the rated completions of one prompt are compared
by their rewards (`rating_comparisons`).

| method  | columns                                       | rows                                            |
|---------|-----------------------------------------------|-------------------------------------------------|
| sft     | prompt, completion                            | good examples                                   |
| kto     | prompt, completion, label                     | good (True) and bad (False) examples; a vote's  |
|         |                                               | better (True) and worse (False) answer          |
| dpo     | prompt, chosen, rejected                      | comparisons with a winner                       |
| reward  | prompt, chosen, rejected, tie, margin, origin | comparisons, ties included                      |
| prompts | prompt                                        | one per prompt                                  |

Seed data (`--seed-data`) is read into records of the feedback shape (`seed_records`): an example's reference
output becomes a record of kind `reference`, a preference pair (HH-RLHF, the Kaggle arena CSV) one of kind
`preference`, so feedback and seed data go through the same rules.

Rows are grouped by prompt (the task inputs). `held_out_groups` holds out whole groups, those whose salted
hash falls below the held-out fraction, so every method (the reward model included) holds out the same
prompts and no prompt is both trained on and evaluated on. `trainers.training_data` assembles the sets.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hub.feedback.records import NO_WINNER
from hub.publish import DatasetRef
from tasks import InvalidInput, Task
from tasks.seed_data import Example, load_examples, load_preference_pairs

METHODS = ("sft", "dpo", "kto", "reward", "prompts")
HOLDOUT_FRACTION = 0.2
"""Share of the prompts held out for evaluation when no --eval-data is given."""
GOOD_REWARD = 0.75
"""A rated completion whose reward (0..1) reaches this is a good example; below it, a bad one."""
MIN_RATING_GAP = 0.1
"""Two rated completions of one prompt whose rewards differ by less than this are a tie."""
MAX_PAIRS_PER_PROMPT = 16
"""Most comparisons made from the rated completions of one prompt (widest reward gaps first)."""
_NAMES = {"sft": "SFT", "dpo": "DPO", "kto": "KTO", "reward": "reward-model", "prompts": "prompt"}
_LEARNS_FROM = {"sft": "SFT learns from edits, good flags and high ratings",
                "dpo": "DPO learns from votes with a winner, edits and differently rated answers",
                "kto": "KTO learns from flags, ratings, edits and votes",
                "reward": "the reward model learns from votes, edits and differently rated answers",
                "prompts": "RL trainers take the inputs of any feedback"}

Record = dict[str, Any]
"""A feedback record (DESIGN.md), or a seed row in its shape (kind `reference` or `preference`)."""
Row = dict[str, Any]


def is_good_example(record: Record, task: Task) -> bool | None:
    """Whether the one answer `record` judges (`judged_answer`) is worth imitating; None if it judges none.

    The one rule behind SFT examples and KTO labels. Votes compare two answers, so alone they judge none.
    """
    kind = record["kind"]
    if kind in ("edit", "reference"):
        return True
    if kind == "flag":
        return record["label"] in task.good_flags
    if kind == "rating":
        return record["reward"] >= GOOD_REWARD
    return None


def judged_answer(record: Record) -> str | None:
    """The answer `is_good_example` is about: an edit's corrected text, otherwise the completion."""
    return record["edited"] if record["kind"] == "edit" else record["completion"]


@dataclass(frozen=True)
class Comparison:
    """Two answers to one prompt, the better one first (for a tie, neither is better)."""

    better: str
    worse: str
    tie: bool = False
    margin: float = 0.0
    """Reward gap of a rating comparison (0 otherwise)."""
    origin: str = "vote"
    """`vote`, `edit`, `rating` or `seed`."""


def comparison(record: Record) -> Comparison | None:
    """What a vote, a seed pair or an edit says about two answers (None: the record compares none)."""
    if record["kind"] == "preference" and record["chosen"] and record["rejected"]:
        return Comparison(record["chosen"], record["rejected"], tie=bool(record["tie"]) or record["label"] in NO_WINNER,
                          origin=record.get("origin") or "vote")
    if record["kind"] == "edit" and record["completion"] and record["completion"] != record["edited"]:
        return Comparison(record["edited"], record["completion"], origin="edit")
    return None


def rating_comparisons(records: Sequence[Record], *, min_gap: float = MIN_RATING_GAP,
                       max_pairs: int = MAX_PAIRS_PER_PROMPT) -> list[Comparison]:
    """Comparisons between the differently rated completions of one prompt, widest reward gaps first.

    The higher mean reward wins; a gap below `min_gap` is a tie. Why pairs and not the 0..1 reward itself:
    people rate on their own scales, and comparing answers to the same prompt cancels each prompt's offset
    (a hard prompt gets low ratings for every answer); votes and ratings then train one pairwise model.

    Example:
        >>> rated = [{"kind": "rating", "completion": c, "reward": r} for c, r in (("x", .9), ("y", .2), ("z", .85))]
        >>> [(c.better, c.worse, c.tie) for c in rating_comparisons(rated)]
        [('x', 'y', False), ('z', 'y', False), ('x', 'z', True)]
    """
    scores: dict[str, list[float]] = {}
    for record in records:
        if record["kind"] == "rating":  # the same text rated twice counts with its mean reward
            scores.setdefault(record["completion"], []).append(float(record["reward"]))
    means = sorted((text, sum(values) / len(values)) for text, values in scores.items())
    candidates = [(abs(ra - rb), a, b, ra, rb) for i, (a, ra) in enumerate(means) for b, rb in means[i + 1:]]
    candidates.sort(key=lambda candidate: -candidate[0])
    return [Comparison(*((a, b) if ra >= rb else (b, a)), tie=gap < min_gap, margin=gap, origin="rating")
            for gap, a, b, ra, rb in candidates[:max_pairs]]


# -- rows of one prompt -------------------------------------------------------------------------


@dataclass
class Item:
    """A record and the index of the source it came from."""

    record: Record
    source: int


def group_by_prompt(items: Sequence[Item]) -> dict[str, list[Item]]:
    """Items keyed by their inputs (the prompt group), in the order they came."""
    groups: dict[str, list[Item]] = {}
    for item in items:
        groups.setdefault(json.dumps(item.record["inputs"], sort_keys=True), []).append(item)
    return groups


def rows_for_prompt(method: str, task: Task, group: Sequence[Item], *, chat: bool,
                    min_gap: float = MIN_RATING_GAP, max_pairs: int = MAX_PAIRS_PER_PROMPT) -> list[tuple[Row, int]]:
    """`method`'s rows from the records of one prompt group, each with the index of its source.

    `chat`: prompts as messages (the ones the person saw, for feedback) and answers as assistant messages;
    otherwise the task's plain-text prompt and plain answers.
    """
    if method == "prompts":
        return [({"prompt": _prompt(task, group[0].record, chat=chat)}, group[0].source)]
    if method in ("sft", "kto"):
        return [(row, item.source) for item in group for row in _answer_rows(method, task, item.record, chat=chat)]
    compared = [(item, pair) for item in group if (pair := comparison(item.record))]
    rated = [item for item in group if item.record["kind"] == "rating"]
    if rated:
        compared += [(rated[0], pair) for pair in rating_comparisons([item.record for item in rated],
                                                                    min_gap=min_gap, max_pairs=max_pairs)]
    return [(_pair_row(method, task, item.record, pair, chat=chat), item.source)
            for item, pair in compared if method == "reward" or not pair.tie]  # only the reward model takes ties


def _answer_rows(method: str, task: Task, record: Record, *, chat: bool) -> list[Row]:
    """The SFT or KTO rows of one record (none: it judges no answer the method learns from)."""
    good, answer, pair = is_good_example(record, task), judged_answer(record), comparison(record)
    if method == "sft":
        return [_answer_row(task, record, answer, chat=chat)] if good and answer else []
    if good is not None:
        return [_answer_row(task, record, answer, chat=chat, label=good)] if answer else []
    if pair and not pair.tie:
        return [_answer_row(task, record, pair.better, chat=chat, label=True),
                _answer_row(task, record, pair.worse, chat=chat, label=False)]
    return []


def _prompt(task: Task, record: Record, *, chat: bool) -> Any:
    """The messages the person saw (feedback) or the task's messages for the inputs; or the plain prompt."""
    if not chat:
        return task.text_prompt(record["inputs"])
    return record["prompt"] or task.messages(record["inputs"])


def _answer(text: str, *, chat: bool) -> Any:
    return [{"role": "assistant", "content": text}] if chat else text


def _answer_row(task: Task, record: Record, answer: str, *, chat: bool, **label: bool) -> Row:
    return {"prompt": _prompt(task, record, chat=chat), "completion": _answer(answer, chat=chat), **label}


def _pair_row(method: str, task: Task, record: Record, pair: Comparison, *, chat: bool) -> Row:
    if method == "reward":  # the reward model reads message prompts and seed text (HH transcripts) alike
        return {"prompt": record["prompt"] or task.text_prompt(record["inputs"]), "chosen": pair.better,
                "rejected": pair.worse, "tie": pair.tie, "margin": pair.margin, "origin": pair.origin}
    return {"prompt": _prompt(task, record, chat=chat), "chosen": _answer(pair.better, chat=chat),
            "rejected": _answer(pair.worse, chat=chat)}


def eval_example(task: Task, group: Sequence[Item]) -> Example:
    """The evaluation example of a held-out prompt: its good answers and comparison winners are references."""
    first = group[0].record
    meta = dict(first.get("meta") or {"id": first["id"], "kind": first["kind"], "label": first["label"]})
    references: dict[str, None] = {}
    for item in group:
        answer, pair = judged_answer(item.record), comparison(item.record)
        if is_good_example(item.record, task) and answer:
            references[answer] = None
        if pair and not pair.tie:
            references[pair.better] = None
            if "winner" not in meta:  # lets the evaluation score a reward's preference accuracy
                meta.update(response_a=pair.better, response_b=pair.worse, winner="a")
    return Example(dict(first["inputs"]), list(references), meta)


# -- reading ------------------------------------------------------------------------------------


def feedback_records(task: Task, repo: str | None, revision: str | None) -> tuple[DatasetRef, list[Record]]:
    """`task`'s feedback records at one revision, and that source for the model card (0 rows so far)."""
    from hub.feedback.loading import load_feedback_snapshot

    snapshot = load_feedback_snapshot(repo, task=task.slug, revision=revision)
    records = [{**record, "inputs": _inputs(task, record["inputs"])} for record in snapshot.dataset]
    return DatasetRef(snapshot.source, revision=snapshot.revision, kind="feedback"), records


def seed_records(method: str, task: Task, source: str, *, limit: int | None = None) -> list[Record]:
    """A seed source as records: preference pairs for dpo, reward (and kto on voting tasks); else examples.

    For `prompts`, examples without references count too; for other methods they raise `InvalidInput`.
    """
    if method in ("dpo", "reward") or method == "kto" and "preference" in task.feedback_kinds:
        return [_seed_record(task, {task.field_names[0]: pair["prompt"]}, kind="preference", origin="seed",
                             meta={"id": pair.get("id")}, tie=pair["winner"] == "tie",
                             chosen=pair["response_b" if pair["winner"] == "b" else "response_a"],
                             rejected=pair["response_a" if pair["winner"] == "b" else "response_b"])
                for pair in load_preference_pairs(source, limit=limit)]
    records = []
    for example in load_examples(source, task=task, limit=limit):
        answers = example.references or ([None] if method == "prompts" else [])
        records += [_seed_record(task, example.inputs, kind="reference", completion=answer, meta=example.meta)
                    for answer in answers]  # one row per reference: multi-reference data keeps every target
    if not records:
        raise InvalidInput(f"{source} has no {task.slug} examples with reference outputs, so it cannot be "
                           f"{_NAMES[method]} training data.")
    return records


def _seed_record(task: Task, inputs: dict[str, Any], **fields: Any) -> Record:
    empty = dict.fromkeys(("id", "prompt", "label", "completion", "edited", "reward", "chosen", "rejected", "tie"))
    return {**empty, "inputs": _inputs(task, inputs), **fields}


def _inputs(task: Task, inputs: dict[str, Any]) -> dict[str, str]:
    return {name: inputs.get(name) or "" for name in task.field_names}


def source_revision(source: str) -> str | None:
    """What a model card cites for a seed source: a local file's content hash, a Hub dataset's commit sha.

    None for a local folder, or when the Hub cannot say (the data was read already; only the card is vaguer).
    Feedback cites the revision `hub.feedback.loading.load_feedback_snapshot` read (`feedback_records`).
    """
    path = Path(source).expanduser()
    if path.is_dir():
        return None
    if path.is_file():
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()[:40]
    import httpx2
    from huggingface_hub import HfApi

    try:
        return HfApi().dataset_info(str(source)).sha
    except (OSError, ValueError, httpx2.HTTPError):
        return None


# -- held-out split and size check ---------------------------------------------------------------


def holdout_rank(key: str, *, seed: int) -> float:
    """Where a prompt group falls in [0, 1); the same for every method, so they hold out the same prompts."""
    return int(hashlib.sha256(f"flywheel-holdout:{seed}:{key}".encode()).hexdigest(), 16) / 2**256


def held_out_groups(rows_per_group: dict[str, int], *, fraction: float, limit: int, seed: int,
                    min_train: int) -> list[str]:
    """The prompt groups to hold out: those ranked below `fraction`, lowest rank first, at most `limit`.

    A group stays in training when holding it out would leave fewer than `min_train` training rows.
    """
    remaining = sum(rows_per_group.values())
    held: list[str] = []
    for rank, key in sorted((holdout_rank(key, seed=seed), key) for key in rows_per_group):
        if rank >= fraction or len(held) >= limit:
            break
        if remaining - rows_per_group[key] >= min_train:
            held.append(key)
            remaining -= rows_per_group[key]
    return held


def check_size(method: str, task: Task, rows: Sequence[Row], *, found: dict[str, int], min_rows: int,
               seeded: bool) -> None:
    """Refuse a training set `method` cannot learn from; the message says what the feedback holds.

    Reward-model ties do not count (with `--ties drop` they teach nothing); KTO needs both labels.
    """
    usable = sum(not row.get("tie") for row in rows)
    holds = ", ".join(f"{n} {kind}{'s' if n != 1 else ''}" for kind, n in sorted(found.items())) \
        or "no feedback records"
    if not usable:
        hint = "" if seeded else " or pass --seed-data"
        raise InvalidInput(f"No usable {_NAMES[method]} rows for task {task.slug}: {_LEARNS_FROM[method]}, "
                           f"and the feedback holds {holds}. Collect more{hint}.")
    too_few(method, task.slug, usable, min_rows=min_rows, why=f"feedback holds {holds}",
            advice="Collect more feedback, add --seed-data or lower --min-rows.")
    if method == "kto" and len({row["label"] for row in rows}) < 2:
        kind = "good" if rows[0]["label"] else "bad"
        raise InvalidInput(f"KTO needs both good and bad examples, but all {len(rows)} rows for task "
                           f"{task.slug} are {kind}. Collect feedback of the other kind.")


def too_few(method: str, slug: str, count: int, *, min_rows: int, why: str, advice: str) -> None:
    """The one wording for a training set smaller than --min-rows."""
    if count < min_rows:
        raise InvalidInput(f"Only {count} usable {_NAMES[method]} rows for task {slug} "
                           f"(at least {min_rows} needed; {why}). {advice}")
