"""PPO's model: the LoRA policy and a value head on one backbone, and the frozen blocks it computes only once.

With LoRA on the top blocks only (`--lora-layers`), every block below the lowest adapted one is the
same function for the policy, the reference and every update epoch. `generate` already ran those
blocks over the prompt and the response, so the rollout keeps what came out of them
(`generation_outputs`' boundary states) and the update and the reference forward run only the
adapted blocks on it (`forward(..., boundary=...)`). The logits, values and gradients are those of the
whole network; only the frozen blocks' repeated forward passes are gone.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn


class PolicyWithValue(nn.Module):
    """The LoRA policy and a linear value head on its last hidden state: one backbone, one forward."""

    def __init__(self, policy: Any) -> None:
        super().__init__()
        self.policy = policy
        hidden = policy.get_base_model().config.get_text_config().hidden_size
        self.value_head = nn.Linear(hidden, 1)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)
        self.frozen_blocks = frozen_bottom_blocks(policy)

    def checkpoint_layers(self, every_n_layers: int = 1) -> bool:
        """Recompute the activations of every `every_n_layers`-th decoder layer in backward passes (rollouts
        have no gradients: unaffected).

        transformers checkpoints only layers in training mode; PPO keeps every module in eval mode (no
        dropout), so only the layers' own flags are set. False: the model has no checkpointable layers.
        """
        from transformers.modeling_layers import GradientCheckpointingLayer

        base = self.policy.get_base_model()
        if not getattr(base, "supports_gradient_checkpointing", False):
            return False
        base.activation_checkpointing_enable({"use_reentrant": False}, every_n_layers=every_n_layers)
        base.disable_input_require_grads()  # only the reentrant variant needs inputs that require grad
        layers = [module for module in base.modules() if isinstance(module, GradientCheckpointingLayer)]
        for layer in layers:
            layer.training = True  # not .train(): that would switch on its dropout submodules too
        return bool(layers)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_length: int,
                with_values: bool = True, boundary: torch.Tensor | None = None,
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits predicting each of the last `response_length` tokens, and the value of the state before it.

        Position ids follow the left padding exactly as `generate` numbers them. `boundary`: the frozen
        blocks' output for every position but the last (from `generation_outputs`); only the blocks above
        them then run.
        """
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        if boundary is not None and self.frozen_blocks:
            return self._forward_from_boundary(boundary, attention_mask, position_ids, response_length, with_values)
        out = self.policy(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          output_hidden_states=with_values, logits_to_keep=response_length + 1, use_cache=False)
        logits = out.logits[:, -(response_length + 1):-1]
        if not with_values:
            return logits, None
        return logits, self.values_of(out.hidden_states[-1][:, -(response_length + 1):-1])

    def _forward_from_boundary(self, hidden: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                               response_length: int, with_values: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        from transformers.masking_utils import create_causal_mask

        length = hidden.shape[1]  # the sequence without its last token, which predicts nothing we train
        attention_mask, position_ids = attention_mask[:, :length], position_ids[:, :length]
        base = self.policy.get_base_model()
        decoder = base.model
        mask = create_causal_mask(config=decoder.config, inputs_embeds=hidden, attention_mask=attention_mask,
                                  cache=None, position_ids=position_ids)
        rotary = decoder.rotary_emb(hidden, position_ids=position_ids)
        for block in decoder.layers[self.frozen_blocks:]:
            hidden = block(hidden, attention_mask=mask, position_embeddings=rotary, position_ids=position_ids)
        last = decoder.norm(hidden[:, -response_length:])
        logits = base.lm_head(last)
        return logits, self.values_of(last) if with_values else None

    def values_of(self, hidden: torch.Tensor) -> torch.Tensor:
        """The value of each state, from the backbone's last hidden state ([batch, length, hidden])."""
        return self.value_head(hidden.to(self.value_head.weight.dtype)).squeeze(-1)

    def generation_outputs(self, generated: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The logits and values `forward` would give for the response of a `generate` call that returned
        its logits and hidden states (`generate` already ran the policy over every prompt and response
        token), and the frozen blocks' output over the same positions (None without frozen blocks).

        Step 0 of `generated.hidden_states` holds the whole prompt (its last position is the state before
        the first response token); each later step holds the one token generated before it. Entry k of a
        step is the input of block k; the last entry is the final, normalised state.
        """
        steps = generated.hidden_states
        last = torch.cat([steps[0][-1][:, -1:], *(step[-1] for step in steps[1:])], dim=1)
        boundary = None
        if self.frozen_blocks:
            boundary = torch.cat([step[self.frozen_blocks] for step in steps], dim=1)
        return torch.stack(generated.logits, dim=1), self.values_of(last), boundary


def frozen_bottom_blocks(policy: Any) -> int:
    """How many decoder blocks at the bottom carry no LoRA of any adapter (0 when the model's decoder does
    not have the Llama-style layout `forward(boundary=...)` runs: `model.layers`, `rotary_emb`, `norm`)."""
    decoder = getattr(policy.get_base_model(), "model", None)
    if not all(hasattr(decoder, name) for name in ("layers", "rotary_emb", "norm", "config")):
        return 0
    layer_types = getattr(decoder.config, "layer_types", None)
    if set(layer_types or ["full_attention"]) != {"full_attention"} or (
            not layer_types and getattr(decoder.config, "sliding_window", None)):
        return 0  # `forward(boundary=...)` builds the full causal mask only
    prefix = next(name for name, module in policy.named_modules() if module is decoder.layers)
    adapted = [re.match(rf"{re.escape(prefix)}\.(\d+)\.", name)
               for name, module in policy.named_modules() if hasattr(module, "lora_A")]
    if not adapted or not all(adapted):
        return 0  # no LoRA at all, or LoRA outside the blocks (embeddings, head): nothing below is frozen
    return min(int(match.group(1)) for match in adapted)
