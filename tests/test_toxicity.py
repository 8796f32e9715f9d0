"""Toxicity scorers: profanity-check ranks insults above greetings; any HF classifier can score."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks import InvalidInput
from tasks.toxicity import (
    HFClassifierScorer,
    ProfanityCheckScorer,
    ToxicityScorer,
    make_toxicity_scorer,
)
from tests.tiny_models import build_tokenizer


def test_profanity_check_ranks_an_insult_above_a_greeting() -> None:
    scorer = make_toxicity_scorer("profanity-check")
    assert isinstance(scorer, ProfanityCheckScorer)
    assert isinstance(scorer, ToxicityScorer)
    greeting, insult = scorer(["Good morning, have a lovely day!", "You are a stupid fucking idiot."])
    assert 0.0 <= greeting < 0.5 < insult <= 1.0
    assert scorer([]) == []


def test_auto_falls_back_to_profanity_check_without_cached_detoxify_weights(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert isinstance(make_toxicity_scorer("auto"), ProfanityCheckScorer)


def test_detoxify_without_weights_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(InvalidInput, match="torch hub cache"):
        make_toxicity_scorer("detoxify")
    with pytest.raises(InvalidInput, match="does not exist"):
        make_toxicity_scorer(f"detoxify={tmp_path / 'missing.ckpt'}")


def _tiny_classifier(out: Path, labels: dict[int, str], **config: object) -> Path:
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    model = BertForSequenceClassification(BertConfig(
        vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id,
        id2label=labels, label2id={v: k for k, v in labels.items()}, **config))
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def test_hf_classifier_scores_the_toxic_label(tmp_path: Path) -> None:
    folder = _tiny_classifier(tmp_path / "clf", {0: "nothate", 1: "hate"})
    scorer = make_toxicity_scorer(str(folder))
    assert isinstance(scorer, HFClassifierScorer)
    assert (scorer.index, scorer.label) == (1, "hate")
    long_text = "word " * 500  # longer than the model's 64 positions: must be truncated
    scores = scorer(["hello there", "", long_text])
    assert len(scores) == 3
    assert all(0.0 <= s <= 1.0 for s in scores)


def test_hf_classifier_label_choice(tmp_path: Path) -> None:
    multi = _tiny_classifier(tmp_path / "multi", {0: "toxic", 1: "severe_toxic", 2: "insult"},
                             problem_type="multi_label_classification")
    scorer = HFClassifierScorer(str(multi))
    assert (scorer.label, scorer.multi_label) == ("toxic", True)
    assert make_toxicity_scorer(f"{multi}#insult").index == 2
    anonymous = _tiny_classifier(tmp_path / "anon", {0: "LABEL_0", 1: "LABEL_1"})
    assert HFClassifierScorer(str(anonymous)).index == 1
    unclear = _tiny_classifier(tmp_path / "unclear", {0: "positive", 1: "negative"})
    with pytest.raises(InvalidInput, match="which label"):
        HFClassifierScorer(str(unclear))
    with pytest.raises(InvalidInput, match="no label"):
        make_toxicity_scorer(f"{multi}#threat")


def test_unloadable_classifier_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidInput, match="Cannot load toxicity classifier"):
        make_toxicity_scorer(str(tmp_path / "empty"))
