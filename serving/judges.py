"""Judges that score the online adapter's answers on its probe set (higher is better).

A judge is any callable `(prompts, completions) -> list[float]`, prompts being the task's plain
prompt texts (as the RL trainers' rewards take them), with a `name` for status pages and cards.
`--online-judge SLUG=SPEC` names one; the specs:

- `toxicity[=<scorer>]`: 1 - P(toxic), the scorer a `tasks.toxicity.make_toxicity_scorer` spec
  (default `auto`), the same scorer the detox reward uses;
- `reward_model=<folder or Hub repo>`: a reward model trained by `trainers/reward.py`.

Without one, `default_judge` picks the task's own: `toxicity` for detox, else the reward model
`trainers/reward.py --task <task>` leaves in `FLYWHEEL_HOME/adapters/<task>-reward` if there is
one. A task with neither gets None, and `serving.online` falls back to its drift judge (minus the
KL divergence from the base model: it catches an adapter drifting into noise, not a worse one).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from hub.paths import adapters_home
from tasks import InvalidInput, get_task
from tasks.toxicity import ToxicityScorer, make_toxicity_scorer

Score = Callable[[Sequence[str], Sequence[str]], list[float]]


@dataclass(frozen=True)
class Judge:
    """A named scoring callable: `judge(prompts, completions)` -> one score per completion."""

    name: str
    score: Score

    def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        return [float(value) for value in self.score(prompts, completions)]


def toxicity_judge(scorer: ToxicityScorer, *, name: str | None = None) -> Judge:
    """1 - P(toxic) of each completion."""
    def non_toxicity(prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        return [1.0 - value for value in scorer(list(completions))]

    return Judge(name or f"non-toxicity ({getattr(scorer, 'name', type(scorer).__name__)})", non_toxicity)


def make_judge(spec: str) -> Judge:
    """The judge a spec names (see the module docstring); `InvalidInput` for an unknown one."""
    name, _, argument = spec.strip().partition("=")
    if name == "toxicity":
        return toxicity_judge(make_toxicity_scorer(argument or "auto"))
    if name == "reward_model":
        if not argument:
            raise InvalidInput("reward_model needs a reference: reward_model=<folder or Hub repo>.")
        from serving.reward_models import load_reward_model

        return Judge(f"reward model {argument}", load_reward_model(argument))
    raise InvalidInput(f"Unknown judge {spec!r}: use toxicity[=<scorer>] or reward_model=<folder or repo>.")


def default_judge(task: str, *, toxicity: ToxicityScorer | None = None) -> Judge | None:
    """The task's own judge: detox's toxicity (with `toxicity` if given), else its local reward model, else None."""
    slug = get_task(task).slug
    if slug == "detox":
        return toxicity_judge(toxicity or make_toxicity_scorer("auto"))
    local = adapters_home() / f"{slug}-reward"
    return make_judge(f"reward_model={local}") if local.is_dir() else None


def parse_judge_specs(pairs: Iterable[str]) -> dict[str, str]:
    """`["tweet=reward_model=me/rm"]` -> `{"tweet": "reward_model=me/rm"}`, slugs checked."""
    specs: dict[str, str] = {}
    for pair in pairs:
        slug, sep, spec = pair.partition("=")
        if not sep or not spec.strip():
            raise InvalidInput(f"A judge is SLUG=SPEC (e.g. detox=toxicity=profanity-check), got {pair!r}.")
        specs[get_task(slug.strip()).slug] = spec.strip()
    return specs
