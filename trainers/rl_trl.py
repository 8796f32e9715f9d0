"""`--algo grpo` / `--algo rloo`: TRL's GRPOTrainer and RLOOTrainer with Flywheel's rewards and LoRA.

Same prompts (`trainers.rl_data`), same reward terms (each `--reward` term becomes one TRL reward
function, its weight one of `reward_weights`, so TRL logs every term), same LoRA options, and
the same evaluation before/after, model card and `--push` as `trainers/ppo.py`.

Batch sizes follow TRL: `--per-device-train-batch-size` counts completions, and must be a
multiple of `--num-generations` (completions per prompt, the group the advantages compare).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hub.errors import FlywheelError
from tasks import InvalidInput, Task

logger = logging.getLogger("flywheel.rl")


def reward_functions(reward: Any) -> tuple[list[Callable[..., list[float]]], list[float]]:
    """One TRL reward function per term of a `trainers.reward_functions.CombinedReward`, and the weights.

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


def train_with_trl(config: Any, task: Task, reward: Any) -> None:
    from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

    from serving.models import load_model
    from trainers.common import cpu_safe_training_args, lora_config, output_dir
    from trainers.lifecycle import evaluate_before, evaluation_reward, finish
    from trainers.rl_data import load_prompt_data, messages_for

    if config.per_device_train_batch_size % config.num_generations:
        raise InvalidInput(f"--per-device-train-batch-size ({config.per_device_train_batch_size}) must be "
                           f"a multiple of --num-generations ({config.num_generations}) for {config.algo}.")
    out = output_dir(config, config.algo)
    data = load_prompt_data(config, task)
    loaded = load_model(config.model)
    if loaded.is_seq2seq:
        raise InvalidInput(f"{config.algo.upper()} trains causal language models; this model is seq2seq.")
    chat = loaded.has_chat_template  # TRL renders chat prompts through the template, as PPO does

    def columns(row: dict[str, Any]) -> dict[str, Any]:
        text = row["prompt"]
        return {"reward_prompt": text, "prompt": messages_for(task, text) if chat else text}

    train = data.train.map(columns)
    eval_reward = evaluation_reward(config) or reward
    before = evaluate_before(config, loaded=loaded, task=task, examples=data.eval_examples,
                             reward_fn=eval_reward)

    functions, weights = reward_functions(reward)
    args = cpu_safe_training_args(config, out)
    args.update(save_strategy="steps", save_steps=config.save_steps,
                save_total_limit=config.save_total_limit,
                num_generations=config.num_generations, max_completion_length=config.response_length,
                temperature=config.temperature, top_p=1.0, top_k=0, beta=config.init_kl_coef,
                epsilon=config.cliprange, max_grad_norm=config.max_grad_norm, reward_weights=weights,
                log_completions=False)
    config_class, trainer_class = ((GRPOConfig, GRPOTrainer) if config.algo == "grpo"
                                   else (RLOOConfig, RLOOTrainer))
    trainer = trainer_class(model=loaded.model, reward_funcs=functions, args=config_class(**args),
                            train_dataset=train, processing_class=loaded.tokenizer,
                            peft_config=lora_config(config, task_type="CAUSAL_LM"))
    trainer.train(resume_from_checkpoint=_resume_point(config.resume, out))
    finish(config, method=config.algo, task=task, loaded=loaded, model=trainer.model,
           log_history=trainer.state.log_history, data=data, before=before, out=out,
           reward_fn=eval_reward, curve_keys=("reward", "kl", "entropy", "loss"))


def _resume_point(resume: str | None, out: Path) -> str | bool | None:
    """`--resume latest` -> TRL's own search of the output folder; a folder -> that checkpoint."""
    if not resume:
        return None
    if resume == "latest":
        if not any(out.glob("checkpoint-*")):
            raise FlywheelError(f"--resume latest: no checkpoint-* folder in {out}.")
        return True
    if not Path(resume).expanduser().is_dir():
        raise FlywheelError(f"--resume {resume}: no such checkpoint folder.")
    return resume
