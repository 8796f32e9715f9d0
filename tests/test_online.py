"""Online learning driven directly on a tiny model: the update, the worker, swaps, restarts, rollbacks, push."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from hub.cli import main as hub_main
from hub.feedback.records import build_record
from hub.online import online_home, read_state
from serving.engine import Engine, GenerationSettings
from serving.models import load_model
from serving.online import OnlineConfig, OnlineLearner, OnlineLearning, online_key, parse_online_tasks
from serving.online_policy import Example, RunningBaseline, policy_loss, reward_of, trainable_copy
from tasks import InvalidInput, get_task

TWEET = get_task("tweet")
PROMPT = {"prompt": "Advice for founders"}
FAST = OnlineConfig(learning_rate=1e-2, swap_every=2, probe_tokens=6)


class SettableJudge:
    """A judge whose every score is `score` (tests move it to make the probe fall)."""

    name = "settable"

    def __init__(self, score: float) -> None:
        self.score = score

    def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        return [self.score for _ in completions]


@pytest.fixture
def engine(tiny_causal_lm: Path) -> Engine:
    return Engine(load_model(str(tiny_causal_lm)))


def answer(engine: Engine, *, seed: int, adapter: str | None = None) -> str:
    settings = GenerationSettings(max_new_tokens=8, seed=seed)
    texts = list(engine.stream(TWEET, PROMPT, settings, adapter=adapter))
    return (texts[-1] if texts else "").strip() or "Ship small, listen hard."


def rating(text: str, score: int) -> dict[str, Any]:
    return build_record(task="tweet", kind="rating", inputs=PROMPT, completion=text,
                        ratings={"relevance": score, "clarity": score, "originality": score, "engagement": score})


def rate(learner: OnlineLearner, engine: Engine, scores: Sequence[int]) -> None:
    for seed, score in enumerate(scores):
        assert learner.observe(rating(answer(engine, seed=seed, adapter=learner.key), score))
        assert learner.wait_idle(timeout=300)


def lora_weights(learner: OnlineLearner) -> dict[str, Any]:
    from peft.utils import get_peft_model_state_dict

    return {name: tensor.clone() for name, tensor in get_peft_model_state_dict(learner.model).items()}


def test_rewards_and_the_running_baseline() -> None:
    detox = get_task("detox")
    assert reward_of(detox, {"kind": "flag", "label": "fine"}) == 1.0
    assert reward_of(detox, {"kind": "flag", "label": "toxic"}) == -1.0
    assert reward_of(TWEET, {"kind": "rating", "reward": 0.75}) == 0.75
    assert reward_of(detox, {"kind": "edit", "edited": "better"}) is None
    baseline = RunningBaseline.for_task(TWEET)
    assert baseline.advantage(0.9) > 0 > baseline.advantage(0.1)
    for _ in range(200):
        baseline.update(0.8)
    assert baseline.mean == pytest.approx(0.8) and abs(baseline.advantage(0.8)) < 1e-6
    assert baseline.advantage(1.0) == 3.0  # clipped: no giant step for one surprise


def test_the_update_moves_the_rated_answer_up_or_down_and_never_the_served_model(engine: Engine) -> None:
    import torch

    before = answer(engine, seed=1)
    encoded = engine.encode(TWEET, PROMPT)["input_ids"][0]
    completion = engine.tokenizer("Ship small, listen hard.", add_special_tokens=False,
                                  return_tensors="pt")["input_ids"][0]
    for sign in (1.0, -1.0):
        model = trainable_copy(engine.loaded.model, rank=4, alpha=8, checkpoint=None, base_id=engine.base_id)
        shared = {p.data_ptr() for p in engine.loaded.model.parameters()}
        assert all(p.data_ptr() in shared for n, p in model.named_parameters() if "lora_" not in n)
        example = Example(encoded, completion, reward=sign, advantage=sign)
        loss, figures = policy_loss(model, example, kl_coef=0.05)
        assert figures["kl"] == pytest.approx(0.0, abs=1e-6)  # LoRA starts at zero: the base model
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
        loss.backward()
        optimizer.step()
        _, after = policy_loss(model, example, kl_coef=0.05)
        assert (after["logp"] - figures["logp"]) * sign > 0
        assert after["kl"] > 0
    assert answer(engine, seed=1) == before  # the serving model's weights were only read


def test_ratings_update_the_served_adapter_and_its_label(engine: Engine) -> None:
    learner = OnlineLearner(engine, "tweet", config=FAST, judge=SettableJudge(0.5)).start()
    try:
        first = engine.adapters()[learner.key]
        assert learner.label(first) == "online, update 0"
        rate(learner, engine, [5])
        assert learner.status()["updates"] == 1 and engine.adapters()[learner.key] == first  # K = 2
        rate(learner, engine, [1])
        served = engine.adapters()[learner.key]
        assert served.revision != first.revision and learner.label(served) == "online, update 2"
        held: list[Any] = []
        for _ in engine.stream(TWEET, PROMPT, GenerationSettings(max_new_tokens=4), adapter=learner.key,
                               on_start=held.append):
            pass
        assert learner.label(held[0]) == "online, update 2"
        status = learner.status()
        assert (status["updates"], status["feedback"], status["rollbacks"], status["error"]) == (2, 2, 0, None)
        assert [probe["update"] for probe in read_state(learner.home).probes] == [0, 2]
    finally:
        learner.stop()


def test_a_restart_resumes_from_the_checkpoint(engine: Engine, tiny_causal_lm: Path) -> None:
    learner = OnlineLearner(engine, "tweet", config=FAST, judge=SettableJudge(0.5)).start()
    rate(learner, engine, [5, 2, 4])
    weights, baseline = lora_weights(learner), learner.baseline.mean
    learner.stop()
    state = read_state(online_home("tweet"))
    assert (state.updates, state.serving_update, state.latest) == (3, 2, "update-000003")

    restarted_engine = Engine(load_model(str(tiny_causal_lm)))
    restarted = OnlineLearner(restarted_engine, "tweet", config=FAST, judge=SettableJudge(0.5)).start()
    try:
        assert restarted.label(restarted_engine.adapters()[restarted.key]) == "online, update 2"
        assert restarted.baseline.mean == pytest.approx(baseline)
        resumed = lora_weights(restarted)
        assert resumed.keys() == weights.keys()
        assert all(bool((resumed[name] == weights[name]).all()) for name in weights)
        rate(restarted, restarted_engine, [5])
        assert restarted.status()["updates"] == 4
        assert restarted.label(restarted_engine.adapters()[restarted.key]) == "online, update 4"
    finally:
        restarted.stop()


def test_a_falling_probe_score_rolls_back_to_the_last_good_checkpoint(engine: Engine,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    judge = SettableJudge(1.0)
    learner = OnlineLearner(engine, "tweet", config=OnlineConfig(learning_rate=1e-2, swap_every=1, margin=0.1,
                                                                 probe_tokens=6), judge=judge).start()
    try:
        rate(learner, engine, [5])
        good = engine.adapters()[learner.key]
        good_weights = lora_weights(learner)
        assert learner.label(good) == "online, update 1"
        judge.score = 0.95  # within the margin: kept
        rate(learner, engine, [4])
        assert learner.label(engine.adapters()[learner.key]) == "online, update 2"
        good, good_weights = engine.adapters()[learner.key], lora_weights(learner)
        judge.score = 0.2
        with caplog.at_level(logging.WARNING, logger="serving.online_learner"):
            rate(learner, engine, [1])
        status = learner.status()
        assert status["rollbacks"] == 1 and status["updates"] == 3
        assert status["last_rollback"]["update"] == 3 and status["last_rollback"]["to_update"] == 2
        assert engine.adapters()[learner.key] == good  # the engine never served the worse weights
        assert all(bool((lora_weights(learner)[name] == value).all()) for name, value in good_weights.items())
        assert "rolled back from update 3 to update 2" in caplog.text
        state = read_state(learner.home)
        assert [(p["update"], p["accepted"]) for p in state.probes] == [(0, True), (1, True), (2, True), (3, False)]
    finally:
        learner.stop()


def test_flags_are_rewards_of_plus_and_minus_one(engine: Engine) -> None:
    online = OnlineLearning(engine, ["detox"], config=FAST, judges={"detox": SettableJudge(0.5)}).start()
    try:
        inputs = {"prompt": "The referee made the worst call"}
        fine = build_record(task="detox", kind="flag", inputs=inputs, completion="and we moved on.", label="fine")
        toxic = build_record(task="detox", kind="flag", inputs=inputs, completion="you idiots.", label="toxic")
        edit = build_record(task="detox", kind="edit", inputs=inputs, completion="x", edited="a kinder answer")
        assert online.observe(fine) and online.observe(toxic)
        assert not online.observe(edit) and not online.observe(rating("Ship it.", 5))  # no reward / no learner
        assert online.wait_idle(timeout=300)
        learner = online.learners["detox"]
        assert learner.status()["feedback"] == 2 and learner.baseline.count == 2
        assert online.adapter_key("detox") == online_key("detox") and online.adapter_key("tweet") is None
        assert online.label(engine.adapters()[online_key("detox")]).startswith("online, update ")
    finally:
        online.stop()


def test_online_push_publishes_the_served_checkpoint_with_a_card(engine: Engine, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    learner = OnlineLearner(engine, "tweet", config=FAST, judge=SettableJudge(0.5)).start()
    rate(learner, engine, [5, 1, 3])
    learner.stop()
    target = tmp_path / "published"
    assert hub_main(["online", "push", "--task", "tweet", "--repo", str(target)]) == 0
    assert "update 2" in capsys.readouterr().out
    assert {p.name for p in target.iterdir()} == {"README.md", "adapter_config.json", "adapter_model.safetensors"}
    card = (target / "README.md").read_text()
    assert "method: online" in card and "3 policy-gradient updates from 3 ratings" in card
    assert "after update 2" in card and "Rollbacks: 0." in card
    assert json.loads((target / "adapter_config.json").read_text())["base_model_name_or_path"] == engine.base_id
    assert hub_main(["online", "status", "--task", "tweet"]) == 0
    assert "3 updates from 3 ratings/flags; serving update 2" in capsys.readouterr().out


def test_online_push_without_an_online_adapter_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert hub_main(["online", "push", "--task", "detox"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: No online adapter for detox") and err.count("\n") == 1


@pytest.mark.parametrize("spec, message", [("arena", "takes votes"), ("tweets", "Unknown task 'tweets'")])
def test_tasks_that_cannot_learn_online_are_refused(spec: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        parse_online_tasks(spec)


def test_online_tasks_parse_from_a_list_or_commas() -> None:
    assert parse_online_tasks(["tweet,detox", "tweet"]) == ["tweet", "detox"]


def test_a_seq2seq_base_model_is_refused(tiny_seq2seq: Path) -> None:
    with pytest.raises(InvalidInput, match="needs a causal LM"):
        OnlineLearner(Engine(load_model(str(tiny_seq2seq))), "tweet").start()


def test_the_worker_waits_while_a_generation_is_in_flight(engine: Engine) -> None:
    learner = OnlineLearner(engine, "tweet", config=OnlineConfig(max_wait=600, probe_tokens=4),
                            judge=SettableJudge(0.5)).start()
    try:
        assert learner.wait_idle(timeout=300)  # the first probe
        with learner.activity.generating():
            learner.observe(rating("Ship small, listen hard.", 5))
            assert not learner.wait_idle(timeout=1.0)
            assert learner.status()["updates"] == 0
        assert learner.wait_idle(timeout=300)
        assert learner.status()["updates"] == 1
    finally:
        learner.stop()


def test_ratings_sent_through_the_app_update_what_the_next_answer_is_served_by(
        tiny_causal_lm: Path, tmp_path: Path) -> None:
    from gradio_client import Client

    from demos.app import build_app
    from hub.feedback.callback import FeedbackCallback
    from tests.test_app import SETTINGS, serving

    engine = Engine(load_model(str(tiny_causal_lm)))
    online = OnlineLearning(engine, ["tweet"], config=FAST, judges={"tweet": SettableJudge(0.5)}).start()
    feedback = FeedbackCallback(folder=tmp_path / "feedback")
    app = build_app(engine, feedback=feedback, online=online)
    try:
        with serving(app) as url:
            client = Client(url, verbose=False)
            labels = []
            for stars in (5, 2):
                text, served = client.predict("Advice for founders", *SETTINGS, api_name="/generate_tweet")
                labels.append(served["label"])
                message = client.predict("Advice for founders", text, stars, stars, stars, stars, served,
                                         api_name="/feedback_tweet")
                assert message.startswith("Thanks!")
                assert online.wait_idle(timeout=300)
            status = client.predict(api_name="/online_status")["tweet"]
            assert (status["updates"], status["feedback"], status["serving"]) == (2, 2, "online, update 2")
            _, served = client.predict("Advice for founders", *SETTINGS, api_name="/generate_tweet")
            assert labels == ["online, update 0", "online, update 0"]
            assert served["label"] == "online, update 2" and served["adapter"].endswith("update-000002")
            other = client.predict("Continue me", *SETTINGS, api_name="/generate_detox")[1]
            assert other["label"] == "base model"  # only the tabs named learn online
    finally:
        online.stop()
        feedback.close(push=False)


@pytest.mark.parametrize("argv, message", [(["--online", "arena"], "takes votes"),
                                           (["--online", "tweet", "--online-judge", "tweet"], "SLUG=SPEC"),
                                           (["--guard", "toxic"], "Unknown guard 'toxic'")])
def test_bad_online_and_guard_flags_end_in_one_line_before_the_model_loads(
        argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    from demos.__main__ import main

    assert main([*argv, "--model", "/no/such/model"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_space_variables_turn_on_online_learning_and_the_guard_is_on_by_default() -> None:
    from hub.space import GUARD, ONLINE, SpaceConfig

    default = SpaceConfig.from_env({})
    assert (default.online, default.guard) == ("", "toxicity")
    assert ONLINE not in default.to_variables() and GUARD not in default.to_variables()
    chosen = SpaceConfig.from_env({ONLINE: "tweet,detox", GUARD: "off"})
    assert chosen.to_variables()[ONLINE] == "tweet,detox" and chosen.to_variables()[GUARD] == "off"


def test_the_space_shows_its_online_adapters_and_guard_in_the_status_panel(tiny_causal_lm: Path) -> None:
    from gradio_client import Client

    from hub.space import SpaceConfig
    from spaces.app import create_app
    from tests.test_app import free_port

    space = create_app(SpaceConfig(model=str(tiny_causal_lm), online="tweet"))
    try:
        port = free_port()
        space.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
        status = Client(f"http://127.0.0.1:{port}/", verbose=False).predict(api_name="/adapters")
        assert status["online"]["tweet"]["serving"] == "online, update 0"
        assert status["guard"]["threshold"] == 0.5 and status["serving"][online_key("tweet")]
    finally:
        space.close()
    assert read_state(online_home("tweet")).serving == "update-000000"


@pytest.mark.parametrize("config, message", [({"guard": "loud"}, "FLYWHEEL_GUARD: Unknown guard 'loud'"),
                                             ({"online": "arena"}, "FLYWHEEL_ONLINE: arena takes votes")])
def test_bad_space_variables_are_named_before_the_model_loads(config: dict[str, str], message: str) -> None:
    from hub.errors import FlywheelError
    from hub.space import SpaceConfig
    from spaces.app import create_app

    with pytest.raises(FlywheelError, match=message):
        create_app(SpaceConfig(model="/no/such/model", **config))
