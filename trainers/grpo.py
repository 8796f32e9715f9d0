"""GRPO and RLOO through TRL's GRPOTrainer / RLOOTrainer, with Flywheel's rewards, prompts and LoRA.

    python trainers/grpo.py --task detox --reward toxicity --algo grpo --max-steps 20
    python trainers/grpo.py --task tweet --reward ratings --algo rloo --push
    python trainers/grpo.py --task detox --reward toxicity:1.0,reward_model=me/rm:0.5 --num-generations 4

Both sample a group of `--num-generations` completions per prompt and compare each completion's
reward with its group's (GRPO: the group mean and standard deviation; RLOO: the mean of the
others), so there is no value function. Same prompts as `trainers/ppo.py` (`trainers.rl_data`),
same `--reward` specs (`trainers/reward_functions.py`; each term becomes one TRL reward function
and its weight one of `reward_weights`, so TRL logs every term), and the same evaluation
before/after, model card and `--push`.

Batch sizes follow TRL: `--per-device-train-batch-size` counts completions, and must be a
multiple of `--num-generations`.
"""

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tasks import Task
from trainers.common import output_dir, run, trl_args
from trainers.lifecycle import Outcome, evaluate_before, evaluation_reward, lora_inputs, policy_run, train_and_finish
from trainers.reward_functions import CombinedReward
from trainers.rl_data import messages_for
from trainers.rl_utils import STATE, RLArgs, find_checkpoint, load_causal_lm, task_and_reward
from trainers.training_data import load_prompt_data

logger = logging.getLogger("flywheel.grpo")

ALGORITHMS = ("grpo", "rloo")


@dataclass
class GRPOArgs(RLArgs):
    """Options of `trainers/grpo.py`, after the common ones (--task, --model, --reward, --max-steps, --push, ...)."""

    num_generations: int = field(default=4, metadata={"help": "Completions per prompt (the group)."})
    algo: str = field(default="grpo", metadata={
        "help": "grpo: TRL's GRPOTrainer (advantage = reward against its group's mean and spread); "
                "rloo: TRL's RLOOTrainer (against the mean of the other completions)."})
    beta: float = field(default=0.05, metadata={
        "help": "Coefficient of the KL penalty toward the reference: the base model, or a frozen copy of "
                "--init-adapter (0: no reference)."})
    epsilon: float = field(default=0.2, metadata={"help": "Clip range of the policy ratio."})

    def requirements(self) -> list[tuple[bool, str]]:
        return [*super().requirements(),
                (self.algo in ALGORITHMS, f"Unknown --algo {self.algo!r}: use {' or '.join(ALGORITHMS)}."),
                (self.num_generations > 1, "--num-generations must be at least 2."),
                (self.per_device_train_batch_size % max(self.num_generations, 1) == 0,
                 f"--per-device-train-batch-size ({self.per_device_train_batch_size}) must be a multiple "
                 f"of --num-generations ({self.num_generations})."),
                (self.beta >= 0, "--beta must be >= 0.")]


def reward_functions(reward: CombinedReward) -> tuple[list[Callable[..., list[float]]], list[float]]:
    """One TRL reward function per term of the reward, and the terms' weights.

    TRL calls each with `prompts`, `completions` (text, or assistant messages for chat prompts)
    and the dataset's other columns; the reward sees the plain prompt column `reward_prompt`.
    """
    functions, weights = [], []
    for term, fn in reward.terms:
        def call(prompts: list[Any], completions: list[Any], reward_prompt: list[str] | None = None,
                 _fn: Callable[..., list[float]] = fn, **_: Any) -> list[float]:
            texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
            return [float(v) for v in _fn(reward_prompt or [str(p) for p in prompts], texts)]

        call.__name__ = term.label.replace("/", "_")  # TRL logs rewards/<name>/mean
        functions.append(call)
        weights.append(term.weight)
    return functions, weights


def train(config: GRPOArgs, task: Task, reward: CombinedReward) -> Outcome | None:
    """Load, evaluate the base, train with TRL, then evaluate, write the card, --push."""
    from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

    out = output_dir(config, config.algo)
    resume_from = find_checkpoint(config.resume, out, needs=(STATE,)) if config.resume else None
    data = load_prompt_data(config, task)
    loaded = load_causal_lm(config.model, method=config.algo)
    chat = loaded.has_chat_template  # TRL renders chat prompts through the template, as PPO does

    def columns(row: dict[str, Any]) -> dict[str, Any]:
        text = row["prompt"]
        return {"reward_prompt": text, "prompt": messages_for(task, text) if chat else text}

    training = policy_run(config, method=config.algo, task=task, loaded=loaded, data=data, out=out,
                          curve_keys=("reward", "kl", "entropy", "loss"),
                          reward_fn=evaluation_reward(config) or reward)  # the reward is reported before/after
    evaluate_before(training)
    functions, weights = reward_functions(reward)
    args = trl_args(config, out, save_strategy="steps", save_steps=config.save_steps,
                    save_total_limit=config.save_total_limit, num_generations=config.num_generations,
                    max_completion_length=config.response_length, temperature=config.temperature, top_p=1.0,
                    top_k=0, beta=config.beta, epsilon=config.epsilon, max_grad_norm=config.max_grad_norm,
                    reward_weights=weights, log_completions=False)
    config_class, trainer_class = (GRPOConfig, GRPOTrainer) if config.algo == "grpo" else (RLOOConfig, RLOOTrainer)
    trainer = trainer_class(reward_funcs=functions, args=config_class(**args), train_dataset=data.train.map(columns),
                            processing_class=loaded.tokenizer, **lora_inputs(config, loaded))
    return train_and_finish(training, trainer, resume_from_checkpoint=str(resume_from) if resume_from else None)


def main(config: GRPOArgs) -> Outcome | None:
    task, reward = task_and_reward(config)  # every check, before any model loads
    return train(config, task, reward)


if __name__ == "__main__":
    run(main, GRPOArgs)
