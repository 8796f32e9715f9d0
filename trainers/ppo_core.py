"""The arithmetic of PPO for language models, as pure tensor functions (no model, no I/O).

Shapes: `[batch, response_length]` for every per-token tensor; `mask` is 1 on response tokens
(up to and including the first end-of-sequence token) and 0 on the padding after it.

    rewards, kl = per_token_rewards(scores, logprobs, ref_logprobs, mask, kl_coef=0.05)
    advantages, returns = compute_gae(rewards, values, mask, gamma=1.0, lam=0.95)
    advantages = masked_whiten(advantages, mask)
    pg_loss, clipfrac, approx_kl = policy_loss(new_logprobs, logprobs, advantages, mask, clip_range=0.2)
    vf_loss, vf_clipfrac = value_loss(new_values, values, returns, mask, clip_range_value=0.2)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `values` where `mask` is 1 (0 if the mask is empty)."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def masked_var(values: torch.Tensor, mask: torch.Tensor, *, unbiased: bool = True) -> torch.Tensor:
    """Variance of `values` where `mask` is 1 (Bessel-corrected when `unbiased`)."""
    mask = mask.to(values.dtype)
    mean = masked_mean(values, mask)
    variance = masked_mean((values - mean) ** 2, mask)
    count = mask.sum()
    if unbiased and count > 1:
        variance = variance * count / (count - 1)
    return variance


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, *, shift_mean: bool = True,
                  eps: float = 1e-8) -> torch.Tensor:
    """Normalise `values` to unit variance (and zero mean if `shift_mean`) over the masked entries.

    Entries outside the mask are set to 0 so they cannot leak into later sums.
    """
    mean, variance = masked_mean(values, mask), masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(variance + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask.to(values.dtype)


def logprobs_of(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Log-probability of each `tokens[b, t]` under `logits[b, t, :]`."""
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def entropy_of(log_probs: torch.Tensor) -> torch.Tensor:
    """Entropy of the categorical distribution at each position, from its log-probabilities."""
    return -(log_probs.exp() * log_probs).sum(-1)


def response_mask(responses: torch.Tensor, eos_ids: list[int]) -> torch.Tensor:
    """1.0 on each response token up to and including its first end-of-sequence token, 0.0 after."""
    is_eos = torch.isin(responses, torch.tensor(eos_ids, device=responses.device)).long()
    return ((is_eos.cumsum(1) - is_eos) == 0).float()


def per_token_rewards(scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
                      mask: torch.Tensor, *, kl_coef: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense rewards: `-kl_coef * KL` on every token plus the sequence score on its last token.

    The KL estimate per token is `logprob - ref_logprob` (its expectation under the policy is
    the KL divergence). Returns (rewards, kl), both `[batch, length]` and zero outside `mask`.
    """
    mask = mask.to(logprobs.dtype)
    kl = (logprobs - ref_logprobs) * mask
    rewards = -kl_coef * kl
    last = (mask.sum(1).long() - 1).clamp(min=0)
    rows = torch.arange(len(scores), device=scores.device)
    rewards[rows, last] += scores.to(rewards.dtype) * (mask.sum(1) > 0).to(rewards.dtype)
    return rewards, kl


def compute_gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, *,
                gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) over each response.

    delta_t = r_t + gamma * V_{t+1} - V_t, A_t = delta_t + gamma * lam * A_{t+1}, with V and A
    zero past the last response token. Returns (advantages, returns = advantages + values).
    """
    mask = mask.to(values.dtype)
    values, rewards = values * mask, rewards * mask
    length = rewards.shape[1]
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(length)):
        next_value = values[:, t + 1] if t + 1 < length else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = (delta + gamma * lam * running) * mask[:, t]
        advantages[:, t] = running
    return advantages, (advantages + values) * mask


def policy_loss(new_logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                mask: torch.Tensor, *, clip_range: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate objective, as a loss to minimise.

    loss = mean(max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps))). Returns (loss, clip
    fraction: share of tokens where the clipped term won, approximate KL(old || new) by the
    low-variance estimator mean((ratio - 1) - log ratio)).
    """
    log_ratio = (new_logprobs - old_logprobs) * mask.to(new_logprobs.dtype)
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        clipfrac = masked_mean((clipped > unclipped).float(), mask)
        approx_kl = masked_mean((ratio - 1) - log_ratio, mask)
    return loss, clipfrac, approx_kl


def value_loss(new_values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
               mask: torch.Tensor, *, clip_range_value: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped value loss: 0.5 * mean(max((V - R)^2, (V_clipped - R)^2)).

    V_clipped = V_old + clip(V - V_old, -eps, eps) keeps the critic near the values used to
    compute the advantages. Returns (loss, share of tokens where the clipped term won).
    """
    clipped_values = old_values + torch.clamp(new_values - old_values, -clip_range_value, clip_range_value)
    unclipped_error = (new_values - returns) ** 2
    clipped_error = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped_error, clipped_error), mask)
    with torch.no_grad():
        clipfrac = masked_mean((clipped_error > unclipped_error).float(), mask)
    return loss, clipfrac


@dataclass
class AdaptiveKLController:
    """Adaptive KL coefficient (Ziegler et al. 2019): nudges the KL penalty toward `target`.

    After each batch of `n_steps` sequences with mean KL `current`, the coefficient is
    multiplied by 1 + clip(current / target - 1, -0.2, 0.2) * n_steps / horizon, so it rises
    while the policy drifts further than the target and falls while it stays closer.
    A `target` of None keeps the coefficient fixed.
    """

    value: float
    target: float | None = 6.0
    horizon: int = 10000

    def update(self, current: float, n_steps: int) -> float:
        if self.target is not None and self.target > 0:
            error = min(max(current / self.target - 1.0, -0.2), 0.2)
            self.value *= 1.0 + error * n_steps / self.horizon
        return self.value

    def state_dict(self) -> dict[str, float | int | None]:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict[str, float | int | None]) -> None:
        self.value = float(state["value"])  # type: ignore[arg-type]
