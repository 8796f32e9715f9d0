"""Online learning: the ratings and flags of chosen tabs train a dedicated LoRA adapter while the app serves.

`python -m demos --online tweet` (several tasks allowed; Space variable `FLYWHEEL_ONLINE`). Each
rating or flag of those tabs is queued for a background worker; the tab serves that worker's
adapter, and its served-by says "online, update N".

The objective. For a completion y of prompt x with reward r (tweet: the weighted ratings, 0..1;
flag tabs: +1 for a good flag, -1 for any other), one update minimises

    L(θ) = -A · 1/|y| Σ_t log π_θ(y_t | x, y_<t)  +  β · 1/|y| Σ_t KL( π_θ(· | x, y_<t) ‖ π_base(· | x, y_<t) )

    A = clip( (r - b) / max(s, s_min), -3, 3 )

with b and s² an exponentially weighted running mean and variance of the task's rewards (updated
after each step), π_base the base model (the adapter switched off) and β `kl_coef`. The first
term's gradient is REINFORCE with a baseline: an answer rated above what the tab usually gets
becomes more likely, one rated below less likely, a typical one leaves the model alone. The seed's
"loss scaled by reward" is A = r: every rating, poor ones too, pushes its answer up (ratings are
positive), so it learns to repeat whatever it says, with much higher variance. The KL term, exact
over the vocabulary at each position of y, pulls the adapter back toward the base model, so a run
of odd ratings cannot drift it into noise. Rated answers come from the served adapter (at most K
updates old), so the update is close to on-policy.

The loop. One daemon thread per task takes the queued ratings (several at once when they pile up),
waits for a moment with no generation in flight (`Activity`; at most `max_wait` seconds, so
training still progresses under constant load) and takes one AdamW step on the LoRA weights of its
own module tree over the engine's base weights (`serving.online_policy.trainable_copy`: shared,
never written). Nothing of this runs on a request's path. Every K (`swap_every`) updates the worker
scores its greedy answers to a fixed probe set with a judge (`serving.judges`; without one, minus
the KL from the base model). A score more than `margin` below the last good checkpoint's rolls the
weights back to that checkpoint (logged, and listed in `status()`); otherwise the weights are
checkpointed under `FLYWHEEL_HOME/online/<task>/` (`hub.online`) and swapped into the engine with
`Engine.load_adapter`, which validates them and swaps atomically (requests in flight finish on the
old adapter). A restart resumes from the checkpoint; `python -m hub online push --task T` publishes it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from hub.online import online_home
from serving.engine import AdapterInfo, Engine
from serving.judges import Judge, default_judge, make_judge, parse_judge_specs
from serving.online_learner import Activity, OnlineConfig, OnlineLearner, online_key, parse_online_tasks
from tasks import InvalidInput
from tasks.toxicity import ToxicityScorer

__all__ = ["Activity", "OnlineConfig", "OnlineLearner", "OnlineLearning", "online_key", "parse_online_tasks",
           "start_online"]


class OnlineLearning:
    """The online learners of an app, sharing one `Activity`: what the demos and the Space hold.

    Args:
        judges: task -> judge for its probes (a None value: the drift judge); other tasks get
            `serving.judges.default_judge`, detox's scoring with `toxicity` when given.
        root: folder holding each task's online folder (default `FLYWHEEL_HOME/online`).
        probe_inputs: task -> its probe set (default: the task's examples).
    """

    def __init__(self, engine: Engine, tasks: Iterable[str], *, config: OnlineConfig = OnlineConfig(),
                 judges: Mapping[str, Judge | None] | None = None, toxicity: ToxicityScorer | None = None,
                 root: Path | None = None, probe_inputs: Mapping[str, Iterable[dict[str, str]]] | None = None,
                 ) -> None:
        self.engine = engine
        self.activity = Activity()
        judges = dict(judges or {})
        self.learners = {
            slug: OnlineLearner(engine, slug, config=config, activity=self.activity,
                                judge=judges[slug] if slug in judges else default_judge(slug, toxicity=toxicity),
                                home=online_home(slug, root=root), probe_inputs=(probe_inputs or {}).get(slug))
            for slug in parse_online_tasks(list(tasks))}

    def start(self) -> OnlineLearning:
        for learner in self.learners.values():
            learner.start()
        return self

    def stop(self) -> None:
        for learner in self.learners.values():
            learner.stop()

    def observe(self, record: dict[str, Any]) -> bool:
        """Hand a stored feedback record to its task's learner (False: no learner takes it)."""
        learner = self.learners.get(record.get("task"))
        return learner.observe(record) if learner is not None else False

    def adapter_key(self, slug: str) -> str | None:
        """The engine key serving `slug` when it learns online (None: it does not)."""
        learner = self.learners.get(slug)
        return learner.key if learner is not None and learner.key in self.engine.adapters() else None

    def label(self, info: AdapterInfo | None) -> str | None:
        return next((label for learner in self.learners.values() if (label := learner.label(info))), None)

    def generating(self) -> Any:
        """Context manager around one generation: the workers train between generations."""
        return self.activity.generating()

    def wait_idle(self, timeout: float | None = None) -> bool:
        return all(learner.wait_idle(timeout) for learner in self.learners.values())

    def status(self) -> dict[str, Any]:
        return {slug: learner.status() for slug, learner in self.learners.items()}


def start_online(engine: Engine, tasks: str | Iterable[str], *, judges: Iterable[str] = (),
                 swap_every: int | None = None, toxicity: ToxicityScorer | None = None) -> OnlineLearning | None:
    """What `--online` / `FLYWHEEL_ONLINE` ask for, started: None when they name no task.

    `judges` are `SLUG=SPEC` texts (`--online-judge`, see `serving.judges`); `swap_every` is K.
    Raises `InvalidInput` for a bad task, judge or K, or a backend that cannot train here.
    """
    slugs = parse_online_tasks(tasks)
    if not slugs:
        return None
    if swap_every is not None and swap_every < 1:
        raise InvalidInput(f"Updates between probes and swaps must be at least 1 (got {swap_every}).")
    config = OnlineConfig() if swap_every is None else OnlineConfig(swap_every=swap_every)
    chosen = {slug: make_judge(spec) for slug, spec in parse_judge_specs(judges).items()}
    return OnlineLearning(engine, slugs, config=config, judges=chosen, toxicity=toxicity).start()
