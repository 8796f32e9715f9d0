"""Per-token log-probabilities of the labelled positions only, a few hundred tokens at a time, on CPU.

TRL's SFT, DPO and KTO trainers call the model with `fused_lm_head=True` and read per-token
log-probabilities (plus entropy, mean logit and top-1 metrics) instead of logits. Without Triton
(every CPU) TRL's fused head projects every position, prompt and padding included, through the
49k-word vocabulary in 4096 x 32768 tiles, and each tile's float temporaries come to several GB
per step. `compact_lm_head(trainer.model)` re-patches that head: only positions whose label is not -100
are projected, `CHUNK_TOKENS` rows at a time, and the backward pass recomputes each chunk's logits
instead of keeping them. Same outputs, same loss; a step's logits cost ~100 MB instead of GBs.
"""

from __future__ import annotations

import functools
import types
from typing import Any

import torch

from serving.models import inner_model

CHUNK_TOKENS = 512
"""Rows projected through the vocabulary at once: 512 x 49152 float32 logits are ~100 MB."""
_SCALED_LOGITS = ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier",
                  "logits_scaling")
"""Config fields of models whose logits are not plain `hidden @ weight.T`: those keep TRL's head."""


def compact_lm_head(model: Any) -> bool:
    """Make the fused LM head of a TRL trainer's `model` project only labelled positions (CPU only); True if it did.

    Call it on `trainer.model` after building the TRL trainer (which adds its own fused head). On a GPU TRL's Triton
    kernel already skips unlabelled positions, so the head is left as it is; so are models whose
    logits are scaled or capped, and MoE models (TRL's head adds their load-balancing loss).
    """
    base = inner_model(model)
    config = base.config.get_text_config()
    patched = vars(base).get("forward")
    if torch.cuda.is_available() or getattr(getattr(patched, "__func__", None), "__code__", None) is None:
        return False
    if patched.__func__.__code__.co_name != "_fused_forward":  # TRL's head, found by its code (wraps renames it)
        return False
    if any(getattr(config, name, None) is not None for name in _SCALED_LOGITS):
        return False
    if getattr(config, "output_router_logits", False):
        return False
    base.forward = types.MethodType(_compact_forward(patched), base)
    return True


def _compact_forward(fused_forward: Any) -> Any:
    """The forward that answers `fused_lm_head=True` calls itself and hands every other call to TRL's."""
    from trl.trainer.utils import FusedCausalLMOutput

    @functools.wraps(fused_forward)
    def forward(self: Any, *args: Any, fused_lm_head: bool = False, labels: Any = None, shift_labels: Any = None,
                num_items_in_batch: Any = None, **kwargs: Any) -> Any:
        if not fused_lm_head:
            return fused_forward(*args, labels=labels, shift_labels=shift_labels,
                                 num_items_in_batch=num_items_in_batch, **kwargs)
        kwargs["use_cache"] = False
        hidden = self.base_model(*args, **kwargs).last_hidden_state
        if shift_labels is None:
            hidden, targets = hidden[:, :-1], labels[:, 1:]
        else:
            targets = shift_labels
        mask = targets != -100
        head = self.get_output_embeddings()
        fields = LabelledLogProb.apply(hidden[mask], head.weight, head.bias, targets[mask])
        # masked_scatter keeps a batch without labelled tokens connected to the graph (a zero loss, not an error)
        log_probs, entropy, mean_logits, is_top1 = (x.new_zeros(mask.shape).masked_scatter(mask, x) for x in fields)
        count = mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
        return FusedCausalLMOutput(loss=-log_probs.sum() / count, log_probs=log_probs, entropy=entropy,
                                   mean_logits=mean_logits, is_top1=is_top1, label_mask=mask)

    return forward


def _chunk_logits(rows: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    logits = (rows @ weight.t()).float()
    return logits if bias is None else logits + bias.float()


class LabelledLogProb(torch.autograd.Function):
    """(log p(target), entropy, mean logit, target is top-1) per row of `hidden` [N, H] under `weight` [V, H].

    Only log p(target) has a gradient. One projection per chunk forward and one backward (recomputed,
    never kept), so memory is one chunk's logits whatever N is.
    """

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                targets: torch.Tensor) -> tuple[torch.Tensor, ...]:
        ctx.set_materialize_grads(False)
        columns: list[list[torch.Tensor]] = [[], [], [], [], []]
        for start in range(0, hidden.shape[0], CHUNK_TOKENS):
            logits = _chunk_logits(hidden[start:start + CHUNK_TOKENS], weight, bias)
            wanted = targets[start:start + CHUNK_TOKENS].unsqueeze(-1)
            log_z = logits.logsumexp(-1)
            values = (logits.gather(-1, wanted).squeeze(-1) - log_z, None, logits.mean(-1),
                      logits.argmax(-1) == wanted.squeeze(-1), log_z)
            log_p = logits.sub_(log_z.unsqueeze(-1))  # in place: the chunk's logits are not needed any more
            values = (values[0], -(log_p.exp() * log_p).sum(-1), *values[2:])
            for column, value in zip(columns, values, strict=True):
                column.append(value)
        log_prob, entropy, mean, top1, log_z = (
            torch.cat(column) if column else hidden.new_zeros(0, dtype=torch.bool if index == 3 else torch.float32)
            for index, column in enumerate(columns))
        ctx.save_for_backward(hidden, weight, bias, targets, log_z)
        ctx.mark_non_differentiable(entropy, mean, top1)
        return log_prob, entropy, mean, top1

    @staticmethod
    def backward(ctx: Any, grad_log_prob: torch.Tensor | None, *_: Any) -> tuple[torch.Tensor | None, ...]:
        hidden, weight, bias, targets, log_z = ctx.saved_tensors
        wants_hidden, wants_weight, wants_bias = ctx.needs_input_grad[:3]
        if grad_log_prob is None:
            return None, None, None, None
        grad_hidden = torch.zeros_like(hidden) if wants_hidden else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if wants_weight else None
        grad_bias = torch.zeros_like(bias, dtype=torch.float32) if wants_bias and bias is not None else None
        for start in range(0, hidden.shape[0], CHUNK_TOKENS):
            end = start + CHUNK_TOKENS
            rows = hidden[start:end]
            # d log p(t) / d logits = onehot(t) - softmax(logits)
            grad = _chunk_logits(rows, weight, bias).sub_(log_z[start:end].unsqueeze(-1)).exp_().neg_()
            grad.scatter_add_(-1, targets[start:end].unsqueeze(-1), grad.new_ones(grad.shape[0], 1))
            grad.mul_(grad_log_prob[start:end].float().unsqueeze(-1))
            if grad_hidden is not None:
                grad_hidden[start:end] = grad.to(weight.dtype) @ weight
            if grad_weight is not None:
                grad_weight.addmm_(grad.t(), rows.float())
            if grad_bias is not None:
                grad_bias.add_(grad.sum(0))
        return (grad_hidden, None if grad_weight is None else grad_weight.to(weight.dtype),
                None if grad_bias is None else grad_bias.to(bias.dtype), None)
