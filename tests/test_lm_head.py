"""The compact LM head gives TRL's fused head's outputs and gradients while projecting labelled positions only."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest


def _models(tiny_causal_lm: Path):
    from transformers import AutoModelForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    from trainers.lm_head import compact_lm_head

    theirs = AutoModelForCausalLM.from_pretrained(tiny_causal_lm)
    ours = copy.deepcopy(theirs)
    outputs = ("log_probs", "entropy", "mean_logits", "is_top1")
    add_fused_lm_head(theirs, outputs=outputs)
    add_fused_lm_head(ours, outputs=outputs)
    assert compact_lm_head(ours)
    return theirs, ours


@pytest.mark.parametrize("chunk", [3, 512])
def test_same_outputs_and_gradients_as_trl(tiny_causal_lm: Path, monkeypatch: pytest.MonkeyPatch, chunk: int) -> None:
    import torch

    import trainers.lm_head

    monkeypatch.setattr(trainers.lm_head, "CHUNK_TOKENS", chunk)  # several chunks per batch with 3
    theirs, ours = _models(tiny_causal_lm)
    torch.manual_seed(0)
    input_ids = torch.randint(5, theirs.config.vocab_size, (3, 12))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[2, 9:] = 0
    labels = input_ids.clone()
    labels[:, :5] = -100  # the prompt
    labels[2, 9:] = -100  # padding
    results = []
    for model in (theirs, ours):
        out = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, fused_lm_head=True)
        out.loss.backward()
        results.append((out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (a, grads_a), (b, grads_b) = results
    mask = a.label_mask
    assert torch.equal(mask, b.label_mask) and mask.sum() == 7 + 7 + 4
    torch.testing.assert_close(b.loss, a.loss)
    for name in ("log_probs", "entropy", "mean_logits"):
        torch.testing.assert_close(getattr(b, name)[mask], getattr(a, name)[mask], rtol=1e-4, atol=1e-5)
        assert not getattr(b, name)[~mask].any()
    assert torch.equal(b.is_top1, a.is_top1)
    assert grads_a.keys() == grads_b.keys() and "model.embed_tokens.weight" in grads_b  # the tied head's weight
    for name, grad in grads_a.items():
        torch.testing.assert_close(grads_b[name], grad, rtol=1e-4, atol=1e-6)


def test_plain_calls_and_unlabelled_batches(tiny_causal_lm: Path) -> None:
    import torch

    theirs, ours = _models(tiny_causal_lm)
    input_ids = torch.randint(5, theirs.config.vocab_size, (2, 7))
    torch.testing.assert_close(ours(input_ids=input_ids).logits, theirs(input_ids=input_ids).logits)
    out = ours(input_ids=input_ids, labels=torch.full_like(input_ids, -100), fused_lm_head=True)
    out.loss.backward()  # a batch whose every label is ignored still gives a finite, differentiable zero
    assert out.loss.item() == 0.0 and not out.label_mask.any()
