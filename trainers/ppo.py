"""PPO on human-feedback rewards: a LoRA policy with a value head, trained against a frozen reference.

    python trainers/ppo.py --task detox --reward toxicity --max-steps 20 --push
    python trainers/ppo.py --config recipes/detox-ppo.yaml
    torchrun --nproc_per_node 2 trainers/ppo.py --task detox --reward toxicity   # 2 CPU processes (gloo)
    accelerate launch --config_file recipes/accelerate/deepspeed_zero2.yaml trainers/ppo.py ...   # GPUs
(on CPUs use torchrun: `accelerate launch --cpu --num_processes 2` starts one process). TRL's GRPO
and RLOO, with the same `--reward` specs, are in `trainers/grpo.py`.

One copy of the base model is in memory: the policy is the base plus a LoRA adapter, the value
function is a linear head on the same backbone's last hidden state, and the reference policy is
the base with the adapter disabled, or with `--init-adapter` a frozen copy of that adapter
(`trainers.lifecycle.reference_policy`). Each step (Ziegler et al. 2019; CleanRL's ppo.py):

1. sample a batch of prompts and generate responses with the policy (no gradients, KV cache);
2. score them with the reward callables; take logprobs and values from what `generate` computed, then
   run the reference's forward pass;
3. per-token rewards: -kl_coef * (logprob - ref_logprob), plus the score on the last token;
4. GAE advantages and returns; whiten the advantages;
5. several epochs of shuffled minibatches: clipped surrogate + clipped value loss - entropy bonus,
   gradients synchronised across processes and clipped;
6. move the KL coefficient toward its target (`rl_utils.AdaptiveKLController`, saved in checkpoints).

The file follows that order: the options, the arithmetic of steps 3-5 as pure functions on
`[batch, response_length]` tensors, `rollout` (1-2), `update` (3-5), `train` (the loop). The model
is `trainers.policy_value.PolicyWithValue`: with `--lora-layers N` it runs the frozen blocks below
the adapter once per rollout, not in every update epoch.
Dropout stays off throughout so the ratio compares the same network before and after updates.
"""

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from accelerate.utils import set_seed
from tqdm.auto import tqdm
from transformers import GenerationConfig

from tasks import Task
from trainers import lifecycle, rl_utils
from trainers.common import lora_config, output_dir, run
from trainers.lifecycle import Outcome, evaluate_before, evaluation_reward, finish, lora_model, policy_run
from trainers.policy_value import PolicyWithValue
from trainers.reward_functions import CombinedReward
from trainers.rl_data import PromptBatcher, policy_prompt
from trainers.rl_utils import (
    AdaptiveKLController,
    RLArgs,
    entropy_of,
    logprobs_of,
    masked_mean,
    masked_var,
    task_and_reward,
)
from trainers.training_data import load_prompt_data

CURVES = ("reward", "kl", "kl_coef", "entropy", "value_loss", "clipfrac")
"""Logged values plotted into training_curves.png."""


@dataclass
class PPOArgs(RLArgs):
    """Options of `trainers/ppo.py`, after the common ones (--task, --model, --reward, --max-steps, --push, ...).

    `--per-device-train-batch-size` is the number of prompts each process rolls out per step.
    """

    max_prompt_length: int = field(default=128, metadata={
        "help": "Longer prompts keep their last this-many tokens."})
    num_ppo_epochs: int = field(default=4, metadata={"help": "Optimisation epochs over each rollout batch."})
    num_mini_batches: int = field(default=1, metadata={
        "help": "Minibatches per epoch (each process's batch is split this many ways)."})
    init_kl_coef: float = field(default=0.05, metadata={"help": "Initial coefficient of the KL penalty."})
    kl_target: float = field(default=6.0, metadata={
        "help": "KL (nats per response) the adaptive controller steers toward; 0 fixes the coefficient."})
    kl_horizon: int = field(default=10000, metadata={
        "help": "Responses over which the controller may change the coefficient by ~20%%."})
    gamma: float = field(default=1.0, metadata={"help": "Discount factor."})
    lam: float = field(default=0.95, metadata={"help": "GAE lambda."})
    cliprange: float = field(default=0.2, metadata={"help": "Clip range of the policy ratio."})
    cliprange_value: float = field(default=0.2, metadata={"help": "Clip range of the value update."})
    vf_coef: float = field(default=0.1, metadata={"help": "Weight of the value loss."})
    ent_coef: float = field(default=0.0, metadata={
        "help": "Weight of the entropy bonus (0: off; the KL penalty already keeps the policy near the "
                "base, and under Adam even 0.001 drives a small LM toward noise when advantages are small)."})

    def requirements(self) -> list[tuple[bool, str]]:
        return [*super().requirements(),
                (self.num_mini_batches > 0, "--num-mini-batches must be at least 1."),
                (self.per_device_train_batch_size % max(self.num_mini_batches, 1) == 0,
                 "--per-device-train-batch-size must be a multiple of --num-mini-batches."),
                (self.max_prompt_length > 0, "--max-prompt-length must be at least 1."),
                (self.num_ppo_epochs > 0, "--num-ppo-epochs must be at least 1."),
                (self.init_kl_coef >= 0 and self.kl_target >= 0, "KL coefficient and target must be >= 0.")]


# The arithmetic (steps 3-5). Every per-token tensor is [batch, response_length]; `mask` is 1 on
# response tokens up to and including the first end-of-sequence token, 0 on the padding after it.

def per_token_rewards(scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
                      mask: torch.Tensor, *, kl_coef: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense rewards: `-kl_coef * KL` on every token plus the sequence score on its last token.

    The KL estimate per token is `logprob - ref_logprob` (its expectation under the policy is
    the KL divergence). Returns (rewards, kl), both zero outside `mask`.
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


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, *, eps: float = 1e-8) -> torch.Tensor:
    """Zero mean and unit variance over the masked entries; entries outside the mask become 0."""
    whitened = (values - masked_mean(values, mask)) * torch.rsqrt(masked_var(values, mask) + eps)
    return whitened * mask.to(values.dtype)


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
class Rollout:
    """One batch of responses and what PPO needs to know about them (per-token tensors masked)."""

    sequences: torch.Tensor  # prompt + response ids, left-padded prompts
    attention: torch.Tensor
    responses: torch.Tensor
    mask: torch.Tensor
    logprobs: torch.Tensor
    ref_logprobs: torch.Tensor
    values: torch.Tensor
    scores: torch.Tensor
    reward_parts: dict[str, list[float]]
    boundary: torch.Tensor | None  # the frozen blocks' output (`PolicyWithValue.generation_outputs`)


def rollout(accelerator: Any, model: Any, tokenizer: Any, task: Task, reward: CombinedReward,
            prompts: list[str], config: PPOArgs) -> Rollout:
    """Steps 1-2: sample one response per prompt, score it, and record logprobs, values and reference logprobs."""
    chat = bool(getattr(tokenizer, "chat_template", None))  # chat text already has its special tokens
    encoded = tokenizer([policy_prompt(task, p, tokenizer) for p in prompts], return_tensors="pt", padding=True,
                        truncation=True, max_length=config.max_prompt_length,
                        add_special_tokens=not chat).to(accelerator.device)
    prompt_ids, prompt_mask = encoded["input_ids"], encoded["attention_mask"]
    eos_ids = rl_utils.eos_token_ids(tokenizer, accelerator.unwrap_model(model).policy)
    generation = GenerationConfig(do_sample=True, temperature=config.temperature, top_k=0, top_p=1.0,
                                  max_new_tokens=config.response_length, eos_token_id=eos_ids,
                                  pad_token_id=tokenizer.pad_token_id, use_cache=True, return_dict_in_generate=True,
                                  output_logits=True, output_hidden_states=True)
    unwrapping = rl_utils.unwrapped_for_generation(accelerator, model)
    with torch.no_grad(), accelerator.autocast(), unwrapping as unwrapped:
        generated = unwrapped.policy.generate(input_ids=prompt_ids, attention_mask=prompt_mask,
                                              generation_config=generation)
        sequences = generated.sequences
        responses = sequences[:, prompt_ids.shape[1]:]
        mask = rl_utils.response_mask(responses, eos_ids)
        attention = torch.cat([prompt_mask, torch.ones_like(responses)], dim=1)
        logits, values, boundary = unwrapped.generation_outputs(generated)  # no second policy forward
        with lifecycle.reference_policy(unwrapped.policy):
            ref_logits, _ = unwrapped(sequences, attention, responses.shape[1], with_values=False, boundary=boundary)
    kept = [row[:int(n)] for row, n in zip(responses, mask.sum(1), strict=True)]
    scores, parts = reward.score(prompts, tokenizer.batch_decode(kept, skip_special_tokens=True))
    return Rollout(sequences=sequences, attention=attention, responses=responses, mask=mask,
                   logprobs=logprobs_of(logits / config.temperature, responses) * mask,
                   ref_logprobs=logprobs_of(ref_logits / config.temperature, responses) * mask,
                   values=values * mask, reward_parts=parts, boundary=boundary,
                   scores=torch.tensor(scores, dtype=torch.float32, device=accelerator.device))


def update(accelerator: Any, model: Any, optimizer: Any, roll: Rollout, config: PPOArgs, *,
           kl_coef: float) -> dict[str, torch.Tensor]:
    """Steps 3-5: per-token rewards, whitened GAE advantages, then PPO epochs over shuffled minibatches.

    Returns this process's statistics: the rollout's, and the losses averaged over its minibatches.
    """
    rewards, kl = per_token_rewards(roll.scores, roll.logprobs, roll.ref_logprobs, roll.mask, kl_coef=kl_coef)
    advantages, returns = compute_gae(rewards, roll.values, roll.mask, gamma=config.gamma, lam=config.lam)
    advantages = masked_whiten(advantages, roll.mask)
    size, length = roll.responses.shape
    losses: dict[str, list[torch.Tensor]] = {}
    for _ in range(config.num_ppo_epochs):
        order = torch.randperm(size)  # the global RNG is seeded per step
        for idx in order.split(size // config.num_mini_batches):
            mask = roll.mask[idx]
            boundary = roll.boundary[idx] if roll.boundary is not None else None
            logits, values = model(roll.sequences[idx], roll.attention[idx], length, boundary=boundary)
            # One log-softmax over the vocabulary serves the ratio and the entropy (it is the memory peak).
            log_probs = torch.log_softmax(logits.float() / config.temperature, dim=-1)
            new_logprobs = log_probs.gather(-1, roll.responses[idx].unsqueeze(-1)).squeeze(-1)
            pg_loss, clipfrac, approx_kl = policy_loss(new_logprobs, roll.logprobs[idx], advantages[idx], mask,
                                                       clip_range=config.cliprange)
            vf_loss, vf_clipfrac = value_loss(values, roll.values[idx], returns[idx], mask,
                                              clip_range_value=config.cliprange_value)
            with torch.set_grad_enabled(config.ent_coef != 0):  # no graph for a bonus that is off
                entropy = masked_mean(entropy_of(log_probs), mask)
            loss = pg_loss + config.vf_coef * vf_loss - config.ent_coef * entropy
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            for name, value in (("policy_loss", pg_loss), ("value_loss", vf_loss), ("entropy", entropy), ("loss", loss),
                                ("clipfrac", clipfrac), ("approx_kl", approx_kl), ("value_clipfrac", vf_clipfrac)):
                losses.setdefault(name, []).append(value.detach())
    return {"reward": roll.scores.mean(), "kl": kl.sum(1).mean(), "non_score_reward": (-kl_coef * kl).sum(1).mean(),
            "response_length": roll.mask.sum(1).mean(), "value_mean": masked_mean(roll.values, roll.mask),
            **{f"reward/{k}": torch.tensor(v).mean() for k, v in roll.reward_parts.items()},
            **{name: torch.stack(values).mean() for name, values in losses.items()}}


def train(config: PPOArgs, task: Task, reward: CombinedReward) -> Outcome | None:
    """Load, evaluate the base, loop over steps 1-6 with checkpoints, then evaluate, write the card, --push."""
    out = output_dir(config, "ppo")
    accelerator = rl_utils.make_accelerator(config, out, name="ppo")
    set_seed(config.seed)
    resume_from = rl_utils.find_checkpoint(config.resume, out) if config.resume else None
    data = load_prompt_data(config, task)
    prompts: list[str] = list(data.train["prompt"])
    loaded = rl_utils.load_causal_lm(config.model, method="ppo")
    tokenizer = loaded.tokenizer
    tokenizer.padding_side, tokenizer.truncation_side = "left", "left"
    training = policy_run(config, method="ppo", task=task, loaded=loaded, data=data, out=out, curve_keys=CURVES,
                          reward_fn=evaluation_reward(config) or reward)  # the reward is reported before/after
    evaluate_before(training)

    lora = lora_config(config, task_type="CAUSAL_LM", model=loaded.model)
    lora.lora_dropout = 0.0  # the PPO ratio must compare one and the same network
    policy = lora_model(config, loaded, task_type="CAUSAL_LM", lora=lora, reference=True)
    lora = policy.peft_config["default"]  # --init-adapter brings its own rank and targets
    model = PolicyWithValue(policy)
    model.policy.peft_config["default"].base_model_name_or_path = loaded.base_id
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.learning_rate)
    kl_ctl = AdaptiveKLController(config.init_kl_coef, config.kl_target or None, config.kl_horizon)
    history: list[dict[str, Any]] = []
    start = rl_utils.load_checkpoint(resume_from, model, optimizer, kl_ctl, history) if resume_from else 0
    model, optimizer = accelerator.prepare(model, optimizer)
    model.eval()  # no dropout anywhere; gradients flow all the same
    if config.activation_checkpointing:
        accelerator.unwrap_model(model).checkpoint_layers(config.checkpoint_every_n_layers)
    if accelerator.is_main_process:
        rl_utils.reset_metrics_log(out, history)  # a resumed run's log restarts from its checkpoint

    rank, local_batch = accelerator.process_index, config.per_device_train_batch_size
    global_batch = local_batch * accelerator.num_processes
    batcher = PromptBatcher(len(prompts), global_batch, seed=config.seed)
    total = config.max_steps if config.max_steps > 0 else \
        max(1, math.ceil(config.num_train_epochs * len(prompts) / global_batch))
    bar = tqdm(total=total, initial=start, desc="ppo", unit="step", disable=not accelerator.is_main_process)
    for step in range(start, total):
        began = time.perf_counter()
        torch.manual_seed(config.seed + 1_000_003 * step + rank)  # reproducible rollouts, even on --resume
        roll = rollout(accelerator, model, tokenizer, task, reward,
                       [prompts[i] for i in batcher.indices(step, rank, local_batch)], config)
        stats = update(accelerator, model, optimizer, roll, config, kl_coef=kl_ctl.value)
        row = {"step": step + 1, "episodes": (step + 1) * global_batch,
               **rl_utils.mean_over_processes(accelerator, stats), "kl_coef": kl_ctl.value,
               "seconds": round(time.perf_counter() - began, 3)}
        kl_ctl.update(row["kl"], global_batch)  # step 6, on the mean KL of every process
        history.append(row)
        rl_utils.log_step(accelerator, bar, out, row, every=config.logging_steps)
        if (step + 1) % max(config.save_steps, 1) == 0 or step + 1 == total:
            rl_utils.save_checkpoint(accelerator, model, optimizer, kl_ctl, history, out, step + 1,
                                     keep=config.save_total_limit)
    bar.close()

    # The adapter (LoRA only: the value head stays in the checkpoints), evaluation after, card, --push.
    training.evaluator.loaded, policy = rl_utils.trained_policy(accelerator, model, loaded=loaded,
                                                                model_ref=config.model, lora=lora)
    outcome = finish(training, model=policy, log_history=history)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return outcome


def main(config: PPOArgs) -> Outcome | None:
    task, reward = task_and_reward(config)  # every check, before any model loads
    return train(config, task, reward)


if __name__ == "__main__":
    run(main, PPOArgs)
