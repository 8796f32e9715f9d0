"""Preference pairs for the reward model and its baseline: votes, ratings and seed data, split by prompt.

Every source becomes the same row, `prompt, response_a, response_b, winner (a|b|tie), margin, origin`:

- **votes** (`preference` feedback, `hub.feedback.loading.preference_view`): chosen/rejected, put
  in A/B order by a deterministic coin flip so `winner` is about half a, half b. Tie and
  both-bad votes name no winner; the view leaves them out.
- **ratings** (`rating` feedback, `reward_view`): every two different completions of the same
  prompt form a pair, the higher weighted rating winning; pairs closer than `min_gap` are ties.
  `margin` holds the reward gap. Why pairs and not a regression on the 0..1 reward: one
  Bradley-Terry head then learns from votes and ratings on one scale; people rate on their
  own scales, and comparing completions of the same prompt cancels each prompt's offset (a
  hard prompt gets low ratings for every answer); and TRL's RewardTrainer is pairwise.
  At most `max_pairs_per_prompt` pairs per prompt are kept, widest gaps first.
- **seed data** (`--seed-data`, `tasks.seed_data.load_preference_pairs`): HH-RLHF JSONL and the
  Kaggle/Chatbot-Arena CSV (`winner_model_a/b/winner_tie`), ties included.

`split_pairs` holds out whole prompts (a salted hash of the prompt), so a held-out pair never
shares its prompt with a training pair.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from hub.publish import DatasetRef
from tasks import InvalidInput, Task

Pair = dict[str, Any]


@dataclass
class PairData:
    """Training and held-out pairs, and where they came from (for the model card)."""

    train: list[Pair]
    test: list[Pair]
    sources: list[DatasetRef] = field(default_factory=list)
    found: dict[str, int] = field(default_factory=dict)
    """Feedback records of this task by kind, for error messages."""

    def summary(self) -> str:
        def count(rows: list[Pair]) -> str:
            ties = sum(r["winner"] == "tie" for r in rows)
            return f"{len(rows)} pair{'' if len(rows) == 1 else 's'}" + (f" ({ties} ties)" if ties else "")

        parts = ", ".join(f"{s.rows} from {s.kind} {s.ref}" for s in self.sources if s.rows)
        return f"train {count(self.train)}, held out {count(self.test)}; sources: {parts or 'none'}."


def coin(key: str) -> bool:
    """A deterministic fair coin per key (True: the chosen answer goes into slot B)."""
    return int(hashlib.sha256(key.encode()).hexdigest(), 16) % 2 == 1


def ordered(prompt: Any, chosen: str, rejected: str, *, margin: float = 0.0, origin: str) -> Pair:
    """A decisive pair with chosen in slot A or B by `coin`."""
    key = json.dumps([prompt, chosen, rejected], sort_keys=True)
    if coin(key):
        return {"prompt": prompt, "response_a": rejected, "response_b": chosen, "winner": "b",
                "margin": margin, "origin": origin}
    return {"prompt": prompt, "response_a": chosen, "response_b": rejected, "winner": "a",
            "margin": margin, "origin": origin}


def rating_pairs(rows: Sequence[dict[str, Any]], *, min_gap: float = 0.1,
                 max_pairs_per_prompt: int = 16) -> list[Pair]:
    """Pairs from rated completions (`prompt`, `completion` text, `reward` in 0..1).

    Example:
        >>> rows = [{"prompt": "p", "completion": "good", "reward": 0.9},
        ...         {"prompt": "p", "completion": "bad", "reward": 0.2},
        ...         {"prompt": "p", "completion": "also good", "reward": 0.85}]
        >>> sorted((p["winner"] == "tie", round(p["margin"], 2)) for p in rating_pairs(rows))
        [(False, 0.65), (False, 0.7), (True, 0.05)]
    """
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(json.dumps(row["prompt"], sort_keys=True), []).append(row)
    pairs: list[Pair] = []
    for group in groups.values():
        scores: dict[str, list[float]] = {}
        for row in group:  # the same text rated twice: use its mean rating
            scores.setdefault(row["completion"], []).append(float(row["reward"]))
        items = sorted((text, sum(v) / len(v)) for text, v in scores.items())
        candidates = [(abs(ra - rb), a, b, ra, rb)
                      for i, (a, ra) in enumerate(items) for b, rb in items[i + 1:]]
        candidates.sort(key=lambda c: -c[0])
        prompt = group[0]["prompt"]
        for gap, a, b, ra, rb in candidates[:max_pairs_per_prompt]:
            if gap < min_gap:
                pairs.append({"prompt": prompt, "response_a": a, "response_b": b, "winner": "tie",
                              "margin": gap, "origin": "rating"})
            else:
                chosen, rejected = (a, b) if ra > rb else (b, a)
                pairs.append(ordered(prompt, chosen, rejected, margin=gap, origin="rating"))
    return pairs


def feedback_pairs(task: Task, repo: str | None, revision: str | None, *, min_gap: float,
                   max_pairs_per_prompt: int) -> tuple[list[Pair], DatasetRef, dict[str, int]]:
    """Votes and rating pairs of `task` from a feedback folder or Hub repo."""
    from collections import Counter

    from hub.feedback.loading import load_feedback_snapshot, preference_view, reward_view

    snapshot = load_feedback_snapshot(repo, task=task.slug, revision=revision)
    found = dict(Counter(snapshot.dataset["kind"])) if len(snapshot.dataset) else {}
    pairs = [ordered(row["prompt"], row["chosen"][-1]["content"], row["rejected"][-1]["content"],
                     origin="vote") for row in preference_view(snapshot.dataset)]
    rated = [{"prompt": row["prompt"], "completion": row["completion"][-1]["content"],
              "reward": row["reward"]} for row in reward_view(snapshot.dataset)]
    pairs += rating_pairs(rated, min_gap=min_gap, max_pairs_per_prompt=max_pairs_per_prompt)
    return pairs, DatasetRef(snapshot.source, revision=snapshot.revision, rows=0, kind="feedback"), found


def seed_pairs(source: str, *, limit: int | None = None) -> tuple[list[Pair], DatasetRef]:
    """Pairs from HH-RLHF, the Kaggle arena CSV or exported preference feedback."""
    from tasks.seed_data import load_preference_pairs

    rows = load_preference_pairs(source, limit=limit)
    pairs = [{**row, "margin": 0.0, "origin": "seed"} for row in rows]
    return pairs, DatasetRef(str(source), revision=_file_revision(source), rows=0, kind="seed")


def _file_revision(source: str) -> str | None:
    """Content hash of a local seed file (None for a Hub dataset id)."""
    from pathlib import Path

    path = Path(source).expanduser()
    return hashlib.sha256(path.read_bytes()).hexdigest()[:40] if path.is_file() else None


def group_key(pair: Pair) -> str:
    return json.dumps(pair["prompt"], sort_keys=True)


def split_pairs(pairs: list[Pair], *, fraction: float, limit: int, seed: int,
                min_train: int) -> tuple[list[Pair], list[Pair]]:
    """(train, held out): about `fraction` of the prompts (at most `limit` pairs) are held out.

    With fewer than 5 distinct prompts, pairs rather than prompts are drawn. Never leaves fewer
    than `min_train` training pairs.
    """
    if fraction <= 0 or limit <= 0:
        return list(pairs), []

    def rank(key: str) -> float:
        return int(hashlib.sha256(f"flywheel-reward-split:{seed}:{key}".encode()).hexdigest(), 16) / 2**256

    by_prompt = len({group_key(p) for p in pairs}) >= 5
    keys = [group_key(p) if by_prompt else json.dumps([n, group_key(p)]) for n, p in enumerate(pairs)]
    budget = min(limit, int(len(pairs) * fraction), max(0, len(pairs) - min_train))
    chosen: set[str] = set()
    held = 0
    counts: dict[str, int] = {}
    for key in keys:
        counts[key] = counts.get(key, 0) + 1
    for key in sorted(counts, key=rank):
        if rank(key) >= fraction or held >= budget:
            break
        if held + counts[key] > budget:
            continue
        chosen.add(key)
        held += counts[key]
    train = [p for p, k in zip(pairs, keys, strict=True) if k not in chosen]
    test = [p for p, k in zip(pairs, keys, strict=True) if k in chosen]
    return train, test


def collect_pairs(config: Any, task: Task) -> PairData:
    """Feedback + seed pairs of `task`, split into train / held out (see `split_pairs`).

    Raises:
        InvalidInput: no pairs, or fewer than `config.min_rows` decisive training pairs; the
            message says which feedback kinds were found.
    """
    pairs: list[Pair] = []
    sources: list[DatasetRef] = []
    found: dict[str, int] = {}
    origins: list[int] = []
    if config.use_feedback:
        rows, ref, found = feedback_pairs(task, config.feedback_repo, config.feedback_revision,
                                          min_gap=config.min_rating_gap,
                                          max_pairs_per_prompt=config.max_pairs_per_prompt)
        pairs += rows
        origins += [len(sources)] * len(rows)
        sources.append(ref)
    for source in config.seed_data or []:
        rows, ref = seed_pairs(source, limit=config.seed_limit or None)
        pairs += rows
        origins += [len(sources)] * len(rows)
        sources.append(ref)
    for index in origins:
        sources[index].rows += 1
    if config.eval_data:
        test, _ = seed_pairs(config.eval_data, limit=config.eval_limit or None)
        held = {group_key(p) for p in test}
        train = [p for p in pairs if group_key(p) not in held]
    else:
        train, test = split_pairs(pairs, fraction=config.eval_fraction, limit=config.eval_limit,
                                  seed=config.seed, min_train=config.min_rows)
    _check(task, train, found, config.min_rows, seeded=bool(config.seed_data))
    return PairData(train=train, test=test, sources=sources, found=found)


def _check(task: Task, train: list[Pair], found: dict[str, int], min_rows: int, *, seeded: bool) -> None:
    decisive = sum(p["winner"] != "tie" for p in train)
    kinds = ", ".join(f"{n} {k}" for k, n in sorted(found.items())) or "no feedback records"
    if decisive == 0:
        hint = "" if seeded else " or pass --seed-data (HH-RLHF JSONL or a Kaggle arena CSV)"
        raise InvalidInput(f"No preference pairs for task {task.slug}: the reward model learns from votes "
                           f"(preference) and ratings, and the feedback holds {kinds}. Collect votes{hint}.")
    if decisive < min_rows:
        raise InvalidInput(f"Only {decisive} preference pairs with a winner for task {task.slug} "
                           f"(at least {min_rows} needed; feedback holds {kinds}). "
                           "Collect more votes or ratings, add --seed-data or lower --min-rows.")
