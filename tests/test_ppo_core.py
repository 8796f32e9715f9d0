"""PPO arithmetic (trainers/ppo.py, trainers/rl_utils.py) against values computed by hand, and the
reward spec parser."""

from __future__ import annotations

import math

import pytest
import torch

from tasks import InvalidInput
from trainers import ppo, rl_utils
from trainers.reward_functions import REWARDS, CombinedReward, RewardTerm, build_reward, parse_reward_spec


def t(*rows: list[float]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def test_gae_by_hand_full_mask() -> None:
    # gamma 1, lambda 0.5; values 0.5 0.6 0.7; reward 1 on the last token.
    # t2: delta = 1 - 0.7 = 0.3                      -> A = 0.3
    # t1: delta = 0.7 - 0.6 = 0.1, A = 0.1 + 0.5*0.3  -> 0.25
    # t0: delta = 0.6 - 0.5 = 0.1, A = 0.1 + 0.5*0.25 -> 0.225
    advantages, returns = ppo.compute_gae(t([0, 0, 1]), t([0.5, 0.6, 0.7]), t([1, 1, 1]), gamma=1.0, lam=0.5)
    assert advantages.tolist()[0] == pytest.approx([0.225, 0.25, 0.3])
    assert returns.tolist()[0] == pytest.approx([0.725, 0.85, 1.0])


def test_gae_by_hand_with_padding_and_discount() -> None:
    # gamma 0.9, lambda 0.8; the third token is padding (its reward 5 and value 9 must be ignored).
    # t1: delta = 2 + 0.9*0 - 1.5 = 0.5                 -> A = 0.5
    # t0: delta = 0.5 + 0.9*1.5 - 1 = 0.85, A = 0.85 + 0.72*0.5 -> 1.21
    advantages, returns = ppo.compute_gae(t([0.5, 2, 5], [1, 0, 0]), t([1, 1.5, 9], [0.2, 0, 0]),
                                      t([1, 1, 0], [1, 0, 0]), gamma=0.9, lam=0.8)
    assert advantages.tolist()[0] == pytest.approx([1.21, 0.5, 0.0])
    assert returns.tolist()[0] == pytest.approx([2.21, 2.0, 0.0])
    # Second row: one token, reward 1, value 0.2 -> A = 0.8, return 1.
    assert advantages.tolist()[1] == pytest.approx([0.8, 0, 0])
    assert returns.tolist()[1] == pytest.approx([1.0, 0, 0])


def test_response_mask_stops_after_the_first_eos() -> None:
    responses = torch.tensor([[5, 6, 2, 2, 2], [5, 9, 6, 7, 8], [2, 5, 6, 2, 0], [5, 3, 2, 3, 3]])
    mask = rl_utils.response_mask(responses, [2, 3])
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [1, 1, 0, 0, 0]]


def test_per_token_rewards_by_hand() -> None:
    # KL per token = logprob - ref = 0.5, 0, (masked); coef 0.1; score 1 lands on the last real token.
    rewards, kl = ppo.per_token_rewards(torch.tensor([1.0]), t([-1, -2, -3]), t([-1.5, -2, -2]), t([1, 1, 0]),
                                    kl_coef=0.1)
    assert kl.tolist()[0] == pytest.approx([0.5, 0.0, 0.0])
    assert rewards.tolist()[0] == pytest.approx([-0.05, 1.0, 0.0])


def test_clipped_policy_loss_by_hand() -> None:
    # ratios 1.25, 0.6, 1.0; advantages 1, -2, 3; clip 0.2.
    # token 0: max(-1.25, -1.2) = -1.2 (clipped); token 1: max(1.2, 1.6) = 1.6 (clipped); token 2: -3.
    new = torch.log(t([0.5, 0.3, 0.2]))
    old = torch.log(t([0.4, 0.5, 0.2]))
    loss, clipfrac, approx_kl = ppo.policy_loss(new, old, t([1, -2, 3]), t([1, 1, 1]), clip_range=0.2)
    assert loss.item() == pytest.approx((-1.2 + 1.6 - 3) / 3)
    assert clipfrac.item() == pytest.approx(2 / 3)
    expected_kl = ((0.25 - math.log(1.25)) + (-0.4 - math.log(0.6)) + 0.0) / 3
    assert approx_kl.item() == pytest.approx(expected_kl, rel=1e-5)


def test_policy_loss_ignores_padding_and_has_the_ppo_gradient() -> None:
    new = torch.log(t([0.5, 0.9])).requires_grad_()
    old = torch.log(t([0.5, 0.1]))  # the padded token has a huge ratio that must not matter
    loss, clipfrac, _ = ppo.policy_loss(new, old, t([2.0, 100.0]), t([1, 0]), clip_range=0.2)
    assert loss.item() == pytest.approx(-2.0)
    assert clipfrac.item() == 0.0
    loss.backward()
    # d(-A * ratio)/d(logprob) = -A * ratio = -2 on the real token, 0 on padding.
    assert new.grad.tolist()[0] == pytest.approx([-2.0, 0.0])


def test_clipped_value_loss_by_hand() -> None:
    # old 1.0, 2.0; new 1.5, 1.9; returns 2.0, 1.0; clip 0.2 -> clipped values 1.2, 1.9.
    # errors unclipped 0.25, 0.81; clipped 0.64, 0.81 -> max 0.64, 0.81 -> loss 0.5 * 0.725.
    loss, clipfrac = ppo.value_loss(t([1.5, 1.9]), t([1.0, 2.0]), t([2.0, 1.0]), t([1, 1]), clip_range_value=0.2)
    assert loss.item() == pytest.approx(0.3625)
    assert clipfrac.item() == pytest.approx(0.5)


def test_whitening_by_hand() -> None:
    x, mask = t([1, 2, 3, 4, 100]), t([1, 1, 1, 1, 0])
    whitened = ppo.masked_whiten(x, mask)
    std = math.sqrt(5 / 3)  # unbiased variance of 1..4 is 5/3
    expected = [-1.5 / std, -0.5 / std, 0.5 / std, 1.5 / std, 0.0]
    assert whitened.tolist()[0] == pytest.approx(expected, rel=1e-5)
    assert rl_utils.masked_mean(whitened, mask).item() == pytest.approx(0.0, abs=1e-6)


def test_logprobs_and_entropy() -> None:
    logits = torch.log(t([0.25, 0.25, 0.5])).reshape(1, 1, 3)
    assert rl_utils.logprobs_of(logits, torch.tensor([[2]])).item() == pytest.approx(math.log(0.5))
    expected = -(2 * 0.25 * math.log(0.25) + 0.5 * math.log(0.5))
    assert rl_utils.entropy_of(torch.log_softmax(logits, -1)).item() == pytest.approx(expected)


def test_kl_controller_by_hand() -> None:
    ctl = ppo.AdaptiveKLController(0.1, target=6.0, horizon=100)
    assert ctl.update(12.0, 10) == pytest.approx(0.1 * 1.02)  # error clipped to +0.2
    ctl = ppo.AdaptiveKLController(0.1, target=6.0, horizon=100)
    assert ctl.update(3.0, 10) == pytest.approx(0.1 * 0.98)  # error clipped to -0.2
    ctl = ppo.AdaptiveKLController(0.1, target=6.0, horizon=100)
    assert ctl.update(6.6, 10) == pytest.approx(0.1 * 1.01)  # error 0.1
    fixed = ppo.AdaptiveKLController(0.1, target=None)
    assert fixed.update(100.0, 10) == 0.1


def test_kl_controller_moves_the_kl_toward_its_target() -> None:
    # A policy that drifts further from the reference the weaker the penalty: KL = 0.3 / coef.
    for start in (0.01, 0.5):
        ctl = ppo.AdaptiveKLController(start, target=6.0, horizon=200)
        gaps = []
        for _ in range(300):
            kl = 0.3 / ctl.value
            gaps.append(abs(kl - 6.0))
            ctl.update(kl, 16)
        assert gaps[-1] < 0.1 * gaps[0]
        assert ctl.value == pytest.approx(0.05, rel=0.05)


def test_reward_spec_parsing() -> None:
    assert parse_reward_spec("toxicity") == [RewardTerm("toxicity", None, 1.0)]
    assert parse_reward_spec("toxicity:1.0,reward_model=me/rm:0.5") == [
        RewardTerm("toxicity", None, 1.0), RewardTerm("reward_model", "me/rm", 0.5)]
    assert parse_reward_spec("toxicity=detoxify:original") == [
        RewardTerm("toxicity", "detoxify:original", 1.0)]
    assert parse_reward_spec("toxicity=facebook/roberta-hate-speech-dynabench-r4-target:2") == [
        RewardTerm("toxicity", "facebook/roberta-hate-speech-dynabench-r4-target", 2.0)]
    assert parse_reward_spec(" ratings ") == [RewardTerm("ratings", None, 1.0)]


@pytest.mark.parametrize("spec, words", [
    ("", "No reward"), (None, "No reward"), ("  ,  ", "No reward"), ("niceness", "Unknown reward"),
    ("toxicity:0", "weight"), ("reward_model=", "needs a value"), ("toxicity:inf", "weight"),
])
def test_bad_reward_specs(spec: str | None, words: str) -> None:
    with pytest.raises(InvalidInput, match=words):
        parse_reward_spec(spec)


def test_combined_reward_weights_and_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(REWARDS, "length", lambda arg: lambda prompts, completions: [float(len(c))
                                                                                     for c in completions])
    reward = build_reward("length:0.5,toxicity=profanity-check:2")
    assert isinstance(reward, CombinedReward)
    totals, parts = reward.score(["p", "p"], ["have a nice day", "ok"])
    assert parts["length"] == [15.0, 2.0]
    assert all(0.0 <= v <= 1.0 for v in parts["toxicity=profanity-check"])
    assert totals == pytest.approx([0.5 * 15 + 2 * parts["toxicity=profanity-check"][0],
                                    0.5 * 2 + 2 * parts["toxicity=profanity-check"][1]])
