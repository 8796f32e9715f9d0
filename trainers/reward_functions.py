"""Rewards for RL trainers: `--reward` specs parsed into a weighted sum of callables on text.

A spec is a comma-separated list of `name[=argument][:weight]` terms (weight 1.0 by default):

- `toxicity[=<scorer>]`: 1 - P(toxic) from `tasks.toxicity.make_toxicity_scorer` (`auto`,
  `profanity-check`, `detoxify=<ckpt>`, or a Hub text-classification model id), so higher is cleaner.
- `reward_model=<ref>`: a reward model trained by `trainers/reward.py` (folder or Hub repo).
- `ratings[=<ref>]`: the tweet tab's weighted 1-5 ratings, through the reward model trained on them
  (default: the local `tweet` reward model that `trainers/reward.py --task tweet` saves).

    reward = build_reward("toxicity:1.0,reward_model=me/flywheel-arena-reward:0.5")
    total, parts = reward.score(["The fans"], [" cheered all night."])

Every reward is a callable `(prompts, completions) -> list[float]`; prompts are the task's plain
prompt texts. Tests (or plugins) add names to `REWARDS`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from hub.errors import FlywheelError
from tasks import InvalidInput

RewardFn = Callable[[Sequence[str], Sequence[str]], list[float]]
RewardFactory = Callable[[str | None], RewardFn]


def _toxicity(argument: str | None) -> RewardFn:
    from tasks.toxicity import make_toxicity_scorer

    scorer = make_toxicity_scorer(argument or "auto")

    def non_toxicity(prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        return [1.0 - score for score in scorer(list(completions))]

    return non_toxicity


def _reward_model(argument: str | None) -> RewardFn:
    if not argument:
        raise InvalidInput("reward_model needs a reference: --reward reward_model=<folder or Hub repo>.")
    from serving.reward_models import load_reward_model

    return load_reward_model(argument)


def _ratings(argument: str | None) -> RewardFn:
    from serving.reward_models import load_reward_model

    return load_reward_model(argument or default_ratings_model())


def default_ratings_model() -> str:
    """Where `trainers/reward.py --task tweet` leaves the reward model trained on tweet ratings."""
    from hub.paths import adapters_home

    path = adapters_home() / "tweet-reward"
    if not path.exists():
        raise FlywheelError(f"No tweet ratings reward model at {path}: train one with "
                            "`python trainers/reward.py --task tweet`, or pass ratings=<folder or repo>.")
    return str(path)


REWARDS: dict[str, RewardFactory] = {
    "toxicity": _toxicity,
    "reward_model": _reward_model,
    "ratings": _ratings,
}
"""Reward names accepted in `--reward`, each mapped to a factory taking the `=argument` (or None)."""


@dataclass(frozen=True)
class RewardTerm:
    """One parsed term of a reward spec."""

    name: str
    argument: str | None
    weight: float

    @property
    def label(self) -> str:
        return self.name if self.argument is None else f"{self.name}={self.argument}"


def parse_reward_spec(spec: str | None) -> list[RewardTerm]:
    """Split a `--reward` spec into terms, refusing unknown names, bad weights and empty specs.

    Example:
        >>> parse_reward_spec("toxicity:1.0,reward_model=me/rm:0.5")
        [RewardTerm(name='toxicity', argument=None, weight=1.0), RewardTerm(name='reward_model', \
argument='me/rm', weight=0.5)]
    """
    if spec is None or not spec.strip():
        raise InvalidInput(f"No reward given: pass --reward with one or more of {', '.join(REWARDS)} "
                           "(e.g. --reward toxicity).")
    terms: list[RewardTerm] = []
    for raw in spec.split(","):
        text = raw.strip()
        if not text:
            continue
        weight = 1.0
        head, colon, tail = text.rpartition(":")
        if colon and _is_number(tail):  # else the colon belongs to the argument (detoxify:original)
            weight, text = float(tail), head
            if not math.isfinite(weight):
                raise InvalidInput(f"Reward weight {tail!r} in {raw.strip()!r} must be a finite number.")
        name, equals, argument = text.partition("=")
        name = name.strip()
        if name not in REWARDS:
            raise InvalidInput(f"Unknown reward {name!r}; choose from: {', '.join(REWARDS)}.")
        if equals and not argument.strip():
            raise InvalidInput(f"Reward {name}= needs a value after '='.")
        terms.append(RewardTerm(name, argument.strip() if equals else None, weight))
    if not terms:
        raise InvalidInput("No reward given in --reward.")
    if all(term.weight == 0 for term in terms):
        raise InvalidInput("Every reward weight in --reward is 0: nothing to optimise.")
    return terms


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


class CombinedReward:
    """The weighted sum of several rewards; also reports each part for logging."""

    def __init__(self, terms: list[tuple[RewardTerm, RewardFn]]) -> None:
        self.terms = terms

    def score(self, prompts: Sequence[str],
              completions: Sequence[str]) -> tuple[list[float], dict[str, list[float]]]:
        """Return (weighted totals, {term label: raw scores})."""
        totals = [0.0] * len(completions)
        parts: dict[str, list[float]] = {}
        for term, fn in self.terms:
            values = [float(v) for v in fn(list(prompts), list(completions))]
            if len(values) != len(completions):
                raise FlywheelError(f"Reward {term.label} returned {len(values)} scores "
                                    f"for {len(completions)} completions.")
            parts[term.label] = values
            totals = [t + term.weight * v for t, v in zip(totals, values, strict=True)]
        return totals, parts

    def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        return self.score(prompts, completions)[0]


def build_reward(spec: str | None) -> CombinedReward:
    """Parse `spec` and load every reward it names (scorers, reward models)."""
    return CombinedReward([(term, REWARDS[term.name](term.argument)) for term in parse_reward_spec(spec)])
