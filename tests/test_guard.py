"""The toxicity guard, driven directly: scorers we control, a tiny model's real stream, profanity-check."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from serving.engine import Engine, GenerationSettings
from serving.guard import RETRY_TEMPERATURE, GuardConfig, Rejection, ToxicityGuard, guarded
from serving.models import load_model
from tasks import InvalidInput, get_task
from tasks.toxicity import make_toxicity_scorer


class WordScorer:
    """Toxic (0.9) when a text holds `word`, clean (0.1) otherwise; remembers what it scored."""

    name = "word"

    def __init__(self, word: str) -> None:
        self.word = word
        self.scored: list[str] = []

    def __call__(self, texts: Sequence[str]) -> list[float]:
        self.scored += texts
        return [0.9 if self.word in text else 0.1 for text in texts]


class FirstAttemptsToxic:
    """Scores every check of the first `bad` attempts as toxic (an attempt is known by its seed)."""

    name = "seeded"

    def __init__(self, guard_seed_start: int, bad: int) -> None:
        self.toxic_seeds = set(range(guard_seed_start, guard_seed_start + bad))
        self.current_seed: int | None = None

    def __call__(self, texts: Sequence[str]) -> list[float]:
        return [0.99 if self.current_seed in self.toxic_seeds else 0.0 for _ in texts]


def scripted(pieces: list[str], consumed: list[int]) -> Iterator[str]:
    """A stream of growing text that records how many pieces were taken before it was closed."""
    text = ""
    try:
        for piece in pieces:
            text += piece
            consumed[0] += 1
            yield text
    finally:
        consumed.append(-1)  # closed


@pytest.fixture(scope="module")
def engine(tiny_causal_lm: Path) -> Engine:
    return Engine(load_model(str(tiny_causal_lm)))


def engine_stream(engine: Engine):
    task = get_task("tweet")
    return lambda settings: engine.stream(task, {"prompt": "Advice for founders"}, settings)


@pytest.mark.parametrize("spec, threshold", [("toxicity", 0.5), ("toxicity=0.3", 0.3), (" toxicity = 0.8 ", 0.8)])
def test_guard_specs(spec: str, threshold: float) -> None:
    config = GuardConfig.parse(spec)
    assert config is not None and config.threshold == threshold
    assert GuardConfig.parse(config.to_spec()) == config


@pytest.mark.parametrize("spec", ["off", "", None, "none"])
def test_guard_off(spec: str | None) -> None:
    assert GuardConfig.parse(spec) is None


@pytest.mark.parametrize("spec, message", [("profanity", "Unknown guard 'profanity'"),
                                           ("toxicity=1.5", "between 0 and 1"),
                                           ("toxicity=high", "between 0 and 1")])
def test_bad_guard_specs_are_refused(spec: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        GuardConfig.parse(spec)


def test_a_clean_answer_is_served_as_the_engine_wrote_it(engine: Engine) -> None:
    settings = GenerationSettings(max_new_tokens=24, seed=3)
    plain = list(guarded(engine_stream(engine), settings, guard=None))
    guard = ToxicityGuard(WordScorer("\x00never"), check_every=4)
    served = list(guard.run(engine_stream(engine), settings))
    assert served[-1].final and not served[-1].withheld and served[-1].attempt == 0
    assert served[-1].text == plain[-1].text and served[-1].text.strip()
    assert served[-1].score == pytest.approx(0.1)
    assert [step.text for step in served[:-1]] == sorted({step.text for step in served[:-1]}, key=len)


def test_every_shown_text_was_checked_first_and_streaming_stops_at_a_toxic_piece() -> None:
    scorer = WordScorer("awful")
    guard = ToxicityGuard(scorer, check_every=5, attempts=1)
    consumed = [0]
    pieces = ["Hello there, ", "what a day. ", "You are awful ", "and more ", "and more ", "text."]
    rejected: list[Rejection] = []
    served = list(guard.run(lambda settings: scripted(pieces, consumed), GenerationSettings(),
                            on_reject=rejected.append))
    shown = [step.text for step in served if not step.final]
    assert shown and all("awful" not in text and text in scorer.scored for text in shown)
    assert consumed == [3, -1]  # the stream was closed right after the toxic piece
    assert served[-1].withheld and served[-1].text == guard.withheld_message
    assert [r.text for r in rejected] == ["Hello there, what a day. You are awful "]


def test_a_toxic_answer_is_regenerated_with_another_seed(engine: Engine) -> None:
    scorer = FirstAttemptsToxic(guard_seed_start=10, bad=1)
    guard = ToxicityGuard(scorer, check_every=1000)
    stream = engine_stream(engine)

    def generate(settings: GenerationSettings) -> Iterator[str]:
        scorer.current_seed = settings.seed
        return stream(settings)

    rejected: list[Rejection] = []
    served = list(guard.run(generate, GenerationSettings(max_new_tokens=12, seed=10), on_reject=rejected.append))
    final = served[-1]
    assert final.final and not final.withheld
    assert (final.attempt, final.settings.seed) == (1, 11)
    assert [(r.attempt, r.settings.seed, r.score) for r in rejected] == [(0, 10, 0.99)]


def test_after_every_attempt_is_toxic_the_answer_is_withheld(engine: Engine) -> None:
    guard = ToxicityGuard(WordScorer(""), attempts=3, check_every=1000)  # "" is in every text
    rejected: list[Rejection] = []
    served = list(guard.run(engine_stream(engine), GenerationSettings(max_new_tokens=8, seed=5),
                            on_reject=rejected.append))
    assert [step.withheld for step in served] == [True]
    assert "withheld" in served[0].text and "0.5" in served[0].text
    assert [r.settings.seed for r in rejected] == [5, 6, 7] and all(r.text for r in rejected)
    assert guard.withheld == 1 and guard.describe()["withheld"] == 1


def test_greedy_requests_sample_their_retries() -> None:
    guard = ToxicityGuard(WordScorer("x"))
    greedy = GenerationSettings(temperature=0.0, seed=None)
    assert guard.settings_for(greedy, 0) == greedy
    retry = guard.settings_for(greedy, 1)
    assert retry.temperature == RETRY_TEMPERATURE and retry.seed is None
    assert guard.settings_for(GenerationSettings(seed=2**63 - 1), 1).seed == 0


def test_the_detox_scorer_plugs_in() -> None:
    guard = GuardConfig.parse("toxicity=0.5", scorer="profanity-check").build()
    assert guard.describe()["scorer"] == "profanity-check"
    toxic = list(guard.run(lambda settings: iter(["You stupid ", "You stupid idiot, shut up"]),
                           GenerationSettings()))
    assert toxic[-1].withheld
    clean = list(guard.run(lambda settings: iter(["Have a ", "Have a lovely day"]), GenerationSettings()))
    assert clean[-1].text == "Have a lovely day" and not clean[-1].withheld


def test_a_guard_needs_sane_limits() -> None:
    with pytest.raises(InvalidInput, match="threshold between 0 and 1"):
        ToxicityGuard(make_toxicity_scorer("profanity-check"), threshold=0.0)


def test_the_app_withholds_a_toxic_output_and_keeps_it_as_a_negative_example(tiny_causal_lm: Path,
                                                                              tmp_path: Path) -> None:
    import json

    from gradio_client import Client

    from demos.app import build_app
    from hub.feedback.callback import FeedbackCallback
    from tests.test_app import SETTINGS, serving

    scorer = WordScorer("")  # every text is toxic to this scorer
    feedback = FeedbackCallback(folder=tmp_path / "feedback")
    app = build_app(Engine(load_model(str(tiny_causal_lm))), feedback=feedback,
                    guard=ToxicityGuard(scorer, threshold=0.5, attempts=2, check_every=8))
    try:
        with serving(app) as url:
            client = Client(url, verbose=False)
            text, served = client.predict("Advice for founders", *SETTINGS, api_name="/generate_tweet")
            assert text.startswith("This answer was withheld") and served["withheld"] == "toxicity"
            assert "ticket" not in served
            with pytest.raises(Exception, match="ticket"):
                client.predict("Advice for founders", text, 5, 5, 5, 5, served, api_name="/feedback_tweet")
            detox_text, _, detox_score = client.predict("The fans", *SETTINGS, api_name="/generate_detox")
            assert detox_text.startswith("This answer was withheld") and detox_score is None
            scorer.word = "\x00never"  # now every text is clean
            clean, served = client.predict("Advice for founders", *SETTINGS, api_name="/generate_tweet")
            assert clean.strip() and "withheld" not in served and served["ticket"]
    finally:
        feedback.close(push=False)
    rows = [json.loads(line) for file in sorted((tmp_path / "feedback" / "data" / "detox").rglob("*.jsonl"))
            for line in file.read_text().splitlines()]
    assert len(rows) == 4  # two attempts for each of the two withheld answers
    assert {(row["kind"], row["label"], row["source"]) for row in rows} == {("flag", "toxic", "guard")}
    tweet_row = next(row for row in rows if row["prompt"][-1]["content"] == "Write a tweet about: Advice for founders")
    assert tweet_row["inputs"] == {"prompt": "Write a tweet about: Advice for founders"}
    assert tweet_row["completion"].strip() and tweet_row["generation"]["seed"] in (SETTINGS[5], SETTINGS[5] + 1)
