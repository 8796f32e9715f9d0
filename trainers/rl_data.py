"""Prompts for the RL trainers (PPO, GRPO, RLOO): where they come from and how the policy sees them.

Prompts are the inputs of the task's feedback records plus `--seed-data` examples (for `detox`,
RealToxicityPrompts files such as ../shared/data/toxicity/rtp_prompts_toxic.jsonl), read by
`trainers.training_data.load_prompt_data`, which also holds out evaluation examples.

Two renderings of one prompt:

- the reward prompt: the task's plain-text prompt (`Task.text_prompt`), what reward callables and
  `trainers.evaluation.evaluate` pass to rewards;
- the policy prompt: the text the model continues, rendered exactly as the demos and the
  evaluation do (`serving.engine.Engine.encode`): the task's chat messages through the chat template,
  or the plain prompt for a model without one.
"""

from __future__ import annotations

import functools
import random
from typing import Any

from tasks import Task


def messages_for(task: Task, text_prompt: str) -> list[dict[str, str]]:
    """The task's chat messages for a plain-text prompt made by `task.text_prompt`."""
    if task.continuation:
        return task.messages({task.fields[0].name: text_prompt})
    return [{"role": "system", "content": task.system_prompt}, {"role": "user", "content": text_prompt}]


def policy_prompt(task: Task, text_prompt: str, tokenizer: Any) -> str:
    """The text the policy continues: chat template with the generation prompt, or the plain prompt."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages_for(task, text_prompt), tokenize=False,
                                             add_generation_prompt=True)
    return text_prompt


class PromptBatcher:
    """Which prompts each process takes at each step: epochs of seeded permutations, so a resumed
    run sees the same prompts a straight run would.

    Step `s` takes global positions [s * global_batch, (s + 1) * global_batch) of the endless
    sequence perm_0 + perm_1 + ...; process `rank` takes its slice of them.
    """

    def __init__(self, size: int, global_batch: int, *, seed: int) -> None:
        self.size, self.global_batch, self.seed = size, global_batch, seed

    @functools.lru_cache(maxsize=4)  # noqa: B019 - a handful of epochs, owned by one long-lived batcher
    def _permutation(self, epoch: int) -> list[int]:
        order = list(range(self.size))
        random.Random(self.seed * 7919 + epoch).shuffle(order)
        return order

    def indices(self, step: int, rank: int, local_batch: int) -> list[int]:
        first = step * self.global_batch + rank * local_batch
        return [self._permutation(k // self.size)[k % self.size] for k in range(first, first + local_batch)]
