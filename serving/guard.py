"""The toxicity guard: every output is scored before it is final; toxic ones are regenerated, then withheld.

`--guard toxicity[=THRESHOLD]` (Space variable `FLYWHEEL_GUARD`, on by default there) puts a
`ToxicityGuard` between the engine and every tab. While the answer streams, the guard scores the
growing text every `check_every` characters and shows the person only text that has passed; the
whole answer is scored once more when it ends. An answer scoring above the threshold is stopped at
once and generated again with another seed (a greedy request samples its retries, since greedy
decoding would repeat itself), at most `attempts` times in all; if every attempt is toxic the
person gets `withheld_message` instead. Each rejected attempt is handed to `on_reject`, which the
demos store as a negative example (`kind: flag`, `label: toxic`, `source: guard`) so detox
training learns from it.

The scorer is any `tasks.toxicity.ToxicityScorer`, the same pluggable callable the detox reward
uses (`make_toxicity_scorer`: Detoxify, profanity-check or a Hub classifier).

Example:
    >>> from tasks.toxicity import make_toxicity_scorer
    >>> guard = ToxicityGuard(make_toxicity_scorer("profanity-check"), threshold=0.5)
    >>> served = list(guard.run(lambda settings: iter(["Have a ", "Have a lovely day."]), GenerationSettings()))
    >>> served[-1].text, served[-1].final, served[-1].withheld
    ('Have a lovely day.', True, False)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from typing import Any

from serving.engine import GenerationSettings
from tasks import InvalidInput, Task, get_task
from tasks.generation import SEED_MAX
from tasks.toxicity import ToxicityScorer, make_toxicity_scorer

logger = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 0.5
DEFAULT_ATTEMPTS = 3
"""The first answer and two regenerations."""
CHECK_EVERY_CHARS = 48
"""While streaming, the text is scored each time it has grown by this many characters."""
RETRY_TEMPERATURE = 0.7
"""Temperature of the retries of a greedy (temperature 0) request."""
OFF = ("", "off", "none", "false", "0")


@dataclass(frozen=True)
class GuardConfig:
    """What `--guard` / `FLYWHEEL_GUARD` asks for; `build()` makes the guard."""

    threshold: float = DEFAULT_THRESHOLD
    """Outputs scoring above this probability of being toxic are not served."""
    attempts: int = DEFAULT_ATTEMPTS
    """Answers generated at most per request before the output is withheld."""
    check_every: int = CHECK_EVERY_CHARS
    """Characters of new text between two checks while streaming."""
    scorer: str = "auto"
    """`tasks.toxicity.make_toxicity_scorer` spec."""

    @classmethod
    def parse(cls, spec: str | None, *, scorer: str = "auto") -> GuardConfig | None:
        """`toxicity` or `toxicity=0.3` -> a config; `off` (or empty) -> None; anything else `InvalidInput`.

        Example:
            >>> GuardConfig.parse("toxicity=0.3").threshold, GuardConfig.parse("off")
            (0.3, None)
        """
        text = (spec or "").strip()
        if text.lower() in OFF:
            return None
        name, _, value = text.partition("=")
        if name.strip() != "toxicity":
            raise InvalidInput(f"Unknown guard {name.strip()!r}: use toxicity or toxicity=THRESHOLD (or off).")
        if not value.strip():
            return cls(scorer=scorer)
        try:
            threshold = float(value)
        except ValueError:
            threshold = -1.0
        if not 0.0 < threshold < 1.0:
            raise InvalidInput(f"The toxicity guard's threshold must be a number between 0 and 1 (got {value!r}).")
        return cls(threshold=threshold, scorer=scorer)

    def to_spec(self) -> str:
        """The `--guard` text that gives this config back (the scorer is set separately)."""
        return f"toxicity={self.threshold:g}"

    def build(self, scorer: ToxicityScorer | None = None) -> ToxicityGuard:
        """The guard, scoring with `scorer` (default: the one `self.scorer` names)."""
        return ToxicityGuard(scorer or make_toxicity_scorer(self.scorer), threshold=self.threshold,
                             attempts=self.attempts, check_every=self.check_every)


@dataclass(frozen=True)
class Rejection:
    """One answer the guard refused to serve."""

    text: str
    """The answer as far as it was generated (streaming stops at the first failed check)."""
    score: float
    settings: GenerationSettings
    """The settings that produced it (each attempt has its own seed)."""
    attempt: int
    """0 for the first answer."""


@dataclass(frozen=True)
class Served:
    """One step of a guarded answer: the text that may be shown so far."""

    text: str
    settings: GenerationSettings
    """The settings of the attempt this text comes from."""
    attempt: int
    final: bool = False
    """The last step: the answer that is served, or `withheld_message`."""
    withheld: bool = False
    """Every attempt was toxic; `text` is the message for the person."""
    score: float | None = None
    """Toxicity of the final text (None before the end, or without a guard)."""


Generate = Callable[[GenerationSettings], Iterator[str]]
"""Starts one answer with the given settings: a stream of the growing text (closed when abandoned)."""


class ToxicityGuard:
    """Scores answers with a toxicity scorer and serves only those at or below `threshold`."""

    def __init__(self, scorer: ToxicityScorer, *, threshold: float = DEFAULT_THRESHOLD,
                 attempts: int = DEFAULT_ATTEMPTS, check_every: int = CHECK_EVERY_CHARS) -> None:
        if not 0.0 < threshold < 1.0 or attempts < 1 or check_every < 1:
            raise InvalidInput("A guard needs a threshold between 0 and 1, at least one attempt and "
                               "a check interval of at least one character.")
        self.scorer = scorer
        self.threshold = threshold
        self.attempts = attempts
        self.check_every = check_every
        self.checks = 0
        """Scorer calls so far (status pages and benchmarks)."""
        self.withheld = 0
        """Requests whose every attempt was toxic."""

    @property
    def withheld_message(self) -> str:
        return (f"This answer was withheld: {self.attempts} attempt(s) in a row scored above the toxicity "
                f"threshold ({self.threshold:g}). Please rephrase your request and try again.")

    def describe(self) -> dict[str, Any]:
        """What served-by and status pages show about the guard."""
        return {"guard": "toxicity", "threshold": self.threshold, "attempts": self.attempts,
                "scorer": getattr(self.scorer, "name", type(self.scorer).__name__),
                "checks": self.checks, "withheld": self.withheld}

    def score(self, text: str) -> float:
        """Probability that `text` is toxic (0 for blank text)."""
        if not text.strip():
            return 0.0
        self.checks += 1
        return float(self.scorer([text])[0])

    def is_toxic(self, score: float) -> bool:
        return score > self.threshold

    def settings_for(self, settings: GenerationSettings, attempt: int) -> GenerationSettings:
        """The settings of attempt `attempt`: another seed each time; greedy requests sample their retries."""
        if attempt == 0:
            return settings
        seed = None if settings.seed is None else (settings.seed + attempt) % (SEED_MAX + 1)
        temperature = settings.temperature or RETRY_TEMPERATURE
        return replace(settings, seed=seed, temperature=temperature)

    def run(self, generate: Generate, settings: GenerationSettings, *,
            on_reject: Callable[[Rejection], None] | None = None) -> Iterator[Served]:
        """Serve one answer: yields checked text as it grows; the last item is `final`.

        Closing this iterator closes the answer being generated (the engine stops at once).
        """
        attempt_settings = settings
        score = 0.0
        for attempt in range(self.attempts):
            attempt_settings = self.settings_for(settings, attempt)
            text, score = "", 0.0
            checked = 0
            with _closed_after(generate(attempt_settings)) as stream:
                for text in stream:
                    if len(text) - checked < self.check_every:
                        continue
                    score, checked = self.score(text), len(text)
                    if self.is_toxic(score):
                        break  # closing the stream stops the engine: no more tokens of a toxic answer
                    yield Served(text=text, settings=attempt_settings, attempt=attempt)
                else:
                    score = self.score(text) if len(text) > checked else score
            if not self.is_toxic(score):
                yield Served(text=text, settings=attempt_settings, attempt=attempt, final=True, score=score)
                return
            logger.info("Guard refused attempt %d (toxicity %.3f > %g)", attempt + 1, score, self.threshold)
            if on_reject is not None:
                on_reject(Rejection(text=text, score=score, settings=attempt_settings, attempt=attempt))
        self.withheld += 1
        yield Served(text=self.withheld_message, settings=attempt_settings, attempt=self.attempts - 1,
                     final=True, withheld=True, score=score)


def unguarded(generate: Generate, settings: GenerationSettings) -> Iterator[Served]:
    """The same steps as `ToxicityGuard.run` with no checks: every piece is shown, the last is final."""
    text = ""
    with _closed_after(generate(settings)) as stream:
        for text in stream:
            yield Served(text=text, settings=settings, attempt=0)
    yield Served(text=text, settings=settings, attempt=0, final=True)


def guarded(generate: Generate, settings: GenerationSettings, *, guard: ToxicityGuard | None,
            on_reject: Callable[[Rejection], None] | None = None) -> Iterator[Served]:
    """`guard.run(...)`, or `unguarded(...)` when there is no guard: one loop for callers either way."""
    if guard is None:
        return unguarded(generate, settings)
    return guard.run(generate, settings, on_reject=on_reject)


def negative_example(task: Task, inputs: dict[str, str], rejection: Rejection) -> dict[str, Any]:
    """The feedback-record fields of a refused answer: a detox flag `toxic` from source `guard`.

    Detox training reads them whichever tab the answer came from: the detox input is the text the
    model was prompted with (its end, when longer than detox allows), the chat prompt the tab's own.
    """
    detox = get_task("detox")
    limit = detox.fields[0].max_chars
    return {"task": detox.slug, "kind": "flag", "label": "toxic", "source": "guard",
            "inputs": {detox.fields[0].name: task.text_prompt(inputs)[-limit:]},
            "prompt": task.messages(inputs), "completion": rejection.text, "generation": asdict(rejection.settings)}


@contextmanager
def _closed_after(stream: Iterator[str]) -> Iterator[Iterator[str]]:
    """Close a generator stream when leaving (the engine then stops); plain iterators need nothing."""
    try:
        yield stream
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()
