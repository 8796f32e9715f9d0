"""PPO on human-feedback rewards: a LoRA policy with a value head, trained against a frozen reference.

    python trainers/ppo.py --task detox --reward toxicity --max-steps 20 --push
    python trainers/ppo.py --config recipes/detox-ppo.yaml
    python trainers/ppo.py --task tweet --reward ratings --algo grpo      # TRL's GRPO, same rewards
    torchrun --nproc_per_node 2 trainers/ppo.py --task detox --reward toxicity   # 2 CPU processes (gloo)
    accelerate launch --config_file recipes/accelerate/deepspeed_zero2.yaml trainers/ppo.py ...   # GPUs
    (on CPUs use torchrun: `accelerate launch --cpu --num_processes 2` starts a single process)

One copy of the base model is in memory: the policy is the base plus a LoRA adapter, the value
function is a linear head on the same backbone's last hidden state, and the reference policy is
the base with the adapter disabled. Each step (Ziegler et al. 2019; CleanRL's ppo.py):

1. sample a batch of prompts and generate responses with the policy (no gradients, KV cache);
2. score them with the reward callables; recompute logprobs and values in one forward pass and
   the reference logprobs with the adapter disabled;
3. per-token rewards: -kl_coef * (logprob - ref_logprob), plus the score on the last token;
4. GAE advantages and returns; whiten the advantages;
5. several epochs of shuffled minibatches: clipped surrogate + clipped value loss - entropy bonus,
   gradients synchronised across processes and clipped;
6. move the KL coefficient toward its target (adaptive KL controller).

Dropout stays off throughout so the ratio compares the same network before and after updates.
"""

import datetime
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from tasks import InvalidInput, Task, get_task
from trainers import ppo_state
from trainers.common import require_task, run
from trainers.lifecycle import TrainerArgs, evaluate_before, evaluation_reward, finish
from trainers.ppo_core import (
    AdaptiveKLController,
    compute_gae,
    entropy_of,
    logprobs_of,
    masked_mean,
    masked_whiten,
    per_token_rewards,
    policy_loss,
    response_mask,
    value_loss,
)
from trainers.reward_functions import CombinedReward, build_reward

logger = logging.getLogger("flywheel.ppo")


@dataclass
class PPOArgs(TrainerArgs):
    """Options of `trainers/ppo.py`, after the common ones (--task, --model, --max-steps, --push, ...).

    `--per-device-train-batch-size` is the number of prompts each process rolls out per step.
    """

    algo: str = field(default="ppo", metadata={
        "help": "ppo: Flywheel's PPO (this file); grpo or rloo: TRL's GRPOTrainer / RLOOTrainer "
                "with the same rewards and LoRA."})
    reward: str | None = field(default=None, metadata={
        "help": "Reward spec: comma-separated name[=arg][:weight] terms, e.g. `toxicity`, "
                "`reward_model=<repo>`, `ratings`, `toxicity:1.0,reward_model=<repo>:0.5`."})
    response_length: int = field(default=30, metadata={"help": "Tokens generated per rollout (max)."})
    max_prompt_length: int = field(default=128, metadata={
        "help": "Longer prompts keep their last this-many tokens."})
    temperature: float = field(default=1.0, metadata={
        "help": "Sampling temperature of rollouts (logprobs use the same temperature)."})
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
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm."})
    save_steps: int = field(default=25, metadata={"help": "Checkpoint every N steps (and at the end)."})
    save_total_limit: int = field(default=2, metadata={"help": "Checkpoints kept (oldest removed)."})
    resume: str | None = field(default=None, metadata={
        "help": "Resume from `latest` (newest checkpoint in --output-dir) or a checkpoint folder."})
    num_generations: int = field(default=4, metadata={
        "help": "grpo/rloo only: completions per prompt (the group)."})


def check_config(config: PPOArgs) -> None:
    """Refuse configurations that cannot work, before anything heavy is loaded."""
    checks = [
        (config.algo in ("ppo", "grpo", "rloo"), f"Unknown --algo {config.algo!r}: use ppo, grpo or rloo."),
        (config.per_device_train_batch_size > 0, "--per-device-train-batch-size must be at least 1."),
        (config.num_mini_batches > 0, "--num-mini-batches must be at least 1."),
        (config.per_device_train_batch_size % max(config.num_mini_batches, 1) == 0,
         "--per-device-train-batch-size must be a multiple of --num-mini-batches."),
        (config.response_length > 0, "--response-length must be at least 1."),
        (config.max_prompt_length > 0, "--max-prompt-length must be at least 1."),
        (config.num_ppo_epochs > 0, "--num-ppo-epochs must be at least 1."),
        (config.temperature > 0, "--temperature must be positive."),
        (config.learning_rate > 0, "--learning-rate must be positive."),
        (config.max_steps != 0, "--max-steps must be positive (or -1 for --num-train-epochs)."),
        (config.num_train_epochs > 0, "--num-train-epochs must be positive."),
        (config.init_kl_coef >= 0 and config.kl_target >= 0, "KL coefficient and target must be >= 0."),
        (config.num_generations > 1 or config.algo == "ppo", "--num-generations must be at least 2."),
    ]
    for ok, message in checks:
        if not ok:
            raise InvalidInput(message)


def main(config: PPOArgs) -> None:
    check_config(config)
    task = get_task(require_task(config))
    reward = build_reward(config.reward)  # a bad reward fails here, before any model loads
    if config.algo != "ppo":
        from trainers.rl_trl import train_with_trl

        train_with_trl(config, task, reward)
        return
    train(config, task, reward)


def train(config: PPOArgs, task: Task, reward: CombinedReward) -> None:
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs, set_seed
    from peft import get_peft_model
    from tqdm.auto import tqdm

    from serving.models import load_model
    from trainers.common import lora_config, output_dir
    from trainers.rl_data import PromptBatcher, load_prompt_data, policy_prompt

    out = output_dir(config, "ppo")
    tracker = "tensorboard" if config.report_to == "tensorboard" else None  # metrics_log.jsonl always
    if config.report_to not in ("tensorboard", "none"):
        logger.warning("PPO reports to tensorboard or none, not %s; metrics stay in metrics_log.jsonl.",
                       config.report_to)
    # Rank 0 evaluates before and after training while the others wait: allow for it in the timeout.
    patience = InitProcessGroupKwargs(timeout=datetime.timedelta(hours=4))
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), log_with=tracker, project_dir=out / "logs",
                              kwargs_handlers=[patience])
    accelerator.init_trackers("ppo")
    set_seed(config.seed)
    resume_from = ppo_state.find(config.resume, out) if config.resume else None
    data = load_prompt_data(config, task)
    prompts: list[str] = list(data.train["prompt"])
    loaded = load_model(config.model)
    if loaded.is_seq2seq:
        raise InvalidInput("PPO trains causal language models; this model is encoder-decoder (seq2seq).")
    tokenizer = loaded.tokenizer
    tokenizer.padding_side, tokenizer.truncation_side = "left", "left"
    eval_reward = evaluation_reward(config) or reward  # the reward itself is reported before/after
    before = evaluate_before(config, loaded=loaded, task=task, examples=data.eval_examples,
                             reward_fn=eval_reward)

    lora = lora_config(config, task_type="CAUSAL_LM")
    lora.lora_dropout = 0.0  # the PPO ratio must compare one and the same network
    model = PolicyWithValue(get_peft_model(loaded.model, lora))
    model.policy.peft_config["default"].base_model_name_or_path = loaded.base_id
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.learning_rate)
    kl_ctl = AdaptiveKLController(config.init_kl_coef, config.kl_target or None, config.kl_horizon)
    history: list[dict[str, Any]] = []
    start = ppo_state.load(resume_from, model, optimizer, kl_ctl, history) if resume_from else 0
    model, optimizer = accelerator.prepare(model, optimizer)
    model.eval()  # no dropout anywhere; gradients flow all the same
    if accelerator.is_main_process:
        ppo_state.reset_log(out, history)  # a resumed run's log restarts from its checkpoint

    world, rank, local_batch = accelerator.num_processes, accelerator.process_index, \
        config.per_device_train_batch_size
    batcher = PromptBatcher(len(prompts), local_batch * world, seed=config.seed)
    total = config.max_steps if config.max_steps > 0 else \
        max(1, math.ceil(config.num_train_epochs * len(prompts) / (local_batch * world)))
    bar = tqdm(total=total, initial=start, desc="ppo", unit="step", disable=not accelerator.is_main_process)
    for step in range(start, total):
        began = time.perf_counter()
        torch.manual_seed(config.seed + 1_000_003 * step + rank)  # reproducible rollouts, even on --resume
        batch = [prompts[i] for i in batcher.indices(step, rank, local_batch)]

        # 1-2. Rollouts: sample responses, score them, logprobs/values/reference logprobs.
        texts = [policy_prompt(task, p, tokenizer) for p in batch]
        roll = rollout(accelerator, model, tokenizer, texts, config)
        scores, parts = reward.score(batch, roll["completions"])
        scores_t = torch.tensor(scores, dtype=torch.float32, device=accelerator.device)
        mask = roll["mask"]

        # 3-4. Per-token rewards with the KL penalty, GAE, whitened advantages.
        rewards, kl = per_token_rewards(scores_t, roll["logprobs"], roll["ref_logprobs"], mask,
                                        kl_coef=kl_ctl.value)
        advantages, returns = compute_gae(rewards, roll["values"], mask, gamma=config.gamma, lam=config.lam)
        advantages = masked_whiten(advantages, mask)

        # 5. PPO epochs over minibatches.
        stats = ppo_update(accelerator, model, optimizer, roll, advantages, returns, config)

        # 6. Statistics averaged over processes; the KL controller sees the global mean KL.
        local = {"reward": scores_t.mean(), "kl": kl.sum(1).mean(),
                 "non_score_reward": (-kl_ctl.value * kl).sum(1).mean(),
                 "response_length": mask.sum(1).mean(), "value_mean": masked_mean(roll["values"], mask),
                 **{f"reward/{k}": torch.tensor(v).mean() for k, v in parts.items()}, **stats}
        means = accelerator.reduce(torch.stack([torch.as_tensor(v, dtype=torch.float32).reshape(())
                                                for v in local.values()]), reduction="mean")
        row = {"step": step + 1, "episodes": (step + 1) * local_batch * world,
               **{k: round(float(v), 6) for k, v in zip(local, means, strict=True)},
               "kl_coef": kl_ctl.value, "seconds": round(time.perf_counter() - began, 3)}
        kl_ctl.update(row["kl"], local_batch * world)
        history.append(row)
        accelerator.log(row, step=step + 1)
        bar.update(1)
        bar.set_postfix(reward=f"{row['reward']:.3f}", kl=f"{row['kl']:.3f}")
        if accelerator.is_main_process:
            ppo_state.append_log(out, row)
            if (step + 1) % max(config.logging_steps, 1) == 0:
                logger.info("step %d/%d %s", step + 1, total, " ".join(
                    f"{k}={row[k]:.4g}" for k in ("reward", "kl", "kl_coef", "entropy", "clipfrac",
                                                   "value_loss", "approx_kl", "seconds")))
        if (step + 1) % max(config.save_steps, 1) == 0 or step + 1 == total:
            ppo_state.save(accelerator, model, optimizer, kl_ctl, history, out, step + 1,
                           keep=config.save_total_limit)
    bar.close()

    # The adapter (LoRA only: the value head stays in the checkpoints), evaluation after, card, --push.
    policy = accelerator.unwrap_model(model).policy
    if ppo_state.is_sharded(accelerator):  # FSDP / ZeRO-3: rebuild a whole model on the main process
        weights = ppo_state.gathered_weights(accelerator, model)
        if weights is not None:
            from peft import set_peft_model_state_dict

            loaded = load_model(config.model)
            policy = get_peft_model(loaded.model, lora)
            set_peft_model_state_dict(policy, weights[0])
    finish(config, method="ppo", task=task, loaded=loaded, model=policy, log_history=history, data=data,
           before=before, out=out, reward_fn=eval_reward,
           curve_keys=("reward", "kl", "kl_coef", "entropy", "value_loss", "clipfrac"))
    accelerator.wait_for_everyone()
    accelerator.end_training()


class PolicyWithValue(nn.Module):
    """The LoRA policy and a linear value head on its last hidden state: one backbone, one forward."""

    def __init__(self, policy: Any) -> None:
        super().__init__()
        self.policy = policy
        hidden = policy.get_base_model().config.get_text_config().hidden_size
        self.value_head = nn.Linear(hidden, 1)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_length: int,
                with_values: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits predicting each of the last `response_length` tokens, and the value of the state before it.

        Position ids follow the left padding exactly as `generate` numbers them.
        """
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        out = self.policy(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          output_hidden_states=with_values, logits_to_keep=response_length + 1,
                          use_cache=False)
        logits = out.logits[:, -(response_length + 1):-1]
        if not with_values:
            return logits, None
        hidden = out.hidden_states[-1][:, -(response_length + 1):-1]
        return logits, self.value_head(hidden.to(self.value_head.weight.dtype)).squeeze(-1)


def rollout(accelerator: Any, model: Any, tokenizer: Any, texts: list[str],
            config: PPOArgs) -> dict[str, Any]:
    """Generate one response per prompt and record what PPO needs about it (no gradients)."""
    from transformers import GenerationConfig

    device = accelerator.device
    chat = bool(getattr(tokenizer, "chat_template", None))  # chat text already has its special tokens
    encoded = tokenizer(texts, return_tensors="pt", padding=True, truncation=True,
                        max_length=config.max_prompt_length, add_special_tokens=not chat).to(device)
    eos_ids = eos_token_ids(tokenizer, accelerator.unwrap_model(model).policy)
    generation = GenerationConfig(do_sample=True, temperature=config.temperature, top_k=0, top_p=1.0,
                                  max_new_tokens=config.response_length, eos_token_id=eos_ids,
                                  pad_token_id=tokenizer.pad_token_id, use_cache=True)
    unwrapping = ppo_state.unwrapped_for_generation(accelerator, model)
    with torch.no_grad(), accelerator.autocast(), unwrapping as unwrapped:
        prompt_ids, prompt_mask = encoded["input_ids"], encoded["attention_mask"]
        sequences = unwrapped.policy.generate(input_ids=prompt_ids, attention_mask=prompt_mask,
                                              generation_config=generation)
        responses = sequences[:, prompt_ids.shape[1]:]
        length = responses.shape[1]
        mask = response_mask(responses, eos_ids)
        attention = torch.cat([prompt_mask, torch.ones_like(responses)], dim=1)
        logits, values = unwrapped(sequences, attention, length)
        logprobs = logprobs_of(logits / config.temperature, responses)
        with unwrapped.policy.disable_adapter():  # the reference policy: same weights, no LoRA
            ref_logits, _ = unwrapped(sequences, attention, length, with_values=False)
        ref_logprobs = logprobs_of(ref_logits / config.temperature, responses)
    kept = [row[:int(n)] for row, n in zip(responses, mask.sum(1), strict=True)]
    completions = tokenizer.batch_decode(kept, skip_special_tokens=True)
    return {"sequences": sequences, "attention": attention, "responses": responses, "mask": mask,
            "logprobs": logprobs * mask, "ref_logprobs": ref_logprobs * mask, "values": values * mask,
            "completions": completions}


def ppo_update(accelerator: Any, model: Any, optimizer: Any, roll: dict[str, Any], advantages: Any,
               returns: Any, config: PPOArgs) -> dict[str, Any]:
    """Epochs of shuffled minibatches of the clipped PPO objective; returns mean statistics."""

    size = roll["responses"].shape[0]
    minibatch = size // config.num_mini_batches
    length = roll["responses"].shape[1]
    totals: dict[str, float] = {}
    count = 0
    for _ in range(config.num_ppo_epochs):
        order = torch.randperm(size)  # the global RNG is seeded per step
        for start in range(0, size, minibatch):
            idx = order[start:start + minibatch]
            mask = roll["mask"][idx]
            logits, values = model(roll["sequences"][idx], roll["attention"][idx], length)
            # One log-softmax over the vocabulary serves the ratio and the entropy (it is the memory peak).
            log_probs = torch.log_softmax(logits.float() / config.temperature, dim=-1)
            new_logprobs = log_probs.gather(-1, roll["responses"][idx].unsqueeze(-1)).squeeze(-1)
            pg_loss, clipfrac, approx_kl = policy_loss(new_logprobs, roll["logprobs"][idx], advantages[idx],
                                                       mask, clip_range=config.cliprange)
            vf_loss, vf_clipfrac = value_loss(values, roll["values"][idx], returns[idx], mask,
                                              clip_range_value=config.cliprange_value)
            with torch.set_grad_enabled(config.ent_coef != 0):  # no graph for a bonus that is off
                entropy = masked_mean(entropy_of(log_probs), mask)
            loss = pg_loss + config.vf_coef * vf_loss - config.ent_coef * entropy
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            for name, value in (("policy_loss", pg_loss), ("value_loss", vf_loss), ("entropy", entropy),
                                ("clipfrac", clipfrac), ("approx_kl", approx_kl),
                                ("value_clipfrac", vf_clipfrac), ("loss", loss)):
                totals[name] = totals.get(name, 0.0) + float(value.detach())
            count += 1
    return {name: torch.tensor(value / count) for name, value in totals.items()}


def eos_token_ids(tokenizer: Any, model: Any) -> list[int]:
    """Every token id that ends a response: the generation config's and the tokenizer's."""
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = configured if isinstance(configured, list) else [configured]
    ids = [*ids, tokenizer.eos_token_id]
    return sorted({int(i) for i in ids if i is not None})


if __name__ == "__main__":
    run(main, PPOArgs)
