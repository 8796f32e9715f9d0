"""A TF-IDF + logistic-regression preference classifier: the baseline a reward model must beat.

Like the Kaggle "LLM Classification Finetuning" notebooks (seed 003), it reads both responses
and predicts which one a person preferred. Each pair (`prompt`, `response_a`, `response_b`,
`winner` in a / b / tie) becomes

- `tfidf(a) - tfidf(b)`: which words one side has that the other lacks (word 1-2 grams);
- `|tfidf(a) - tfidf(b)|`: how different the two responses are (near zero suggests a tie);
- length and shape features of each side (characters, words, lines, questions, digits, word
  overlap with the prompt), as differences and absolute differences.

Training pairs are also added with A and B swapped, so the model has no position bias and
P(a | a, b) = P(b | b, a). With ties in the training data it is a 3-class model (a / b / tie),
otherwise 2-class.

`preference_metrics` scores any preference predictor the same way (this baseline and the neural
reward model): accuracy and log loss on decisive pairs (ties left out, P(a) renormalised
against P(b); chance is 0.5 and ln 2 = 0.693), plus 3-way accuracy and log loss over all pairs
when the held-out set has ties.

Example:
    >>> rows = [{"prompt": "hi", "response_a": "thanks, glad to help", "response_b": "no",
    ...          "winner": "a"}, {"prompt": "hi", "response_a": "go away",
    ...          "response_b": "thanks for asking", "winner": "b"}] * 10
    >>> model = PreferenceBaseline(min_df=1).fit(rows)
    >>> round(model.evaluate(rows)["accuracy"], 2)
    1.0
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

WINNERS = ("a", "b", "tie")
_WORD = re.compile(r"\w+")


def swap(row: dict[str, Any]) -> dict[str, Any]:
    """The same pair with A and B exchanged (the winner follows its response)."""
    winner = {"a": "b", "b": "a"}.get(row["winner"], row["winner"])
    return {**row, "response_a": row["response_b"], "response_b": row["response_a"], "winner": winner}


def check_rows(rows: Sequence[dict[str, Any]]) -> None:
    """Raise ValueError naming the first row that is not a usable preference pair."""
    for index, row in enumerate(rows):
        for key in ("response_a", "response_b"):
            if not isinstance(row.get(key), str):
                raise ValueError(f"Preference row {index} has no text in {key!r}.")
        if row.get("winner") not in WINNERS:
            raise ValueError(f"Preference row {index}: winner must be a, b or tie ({row.get('winner')!r}).")


def _shape(text: str, prompt_words: set[str]) -> list[float]:
    words = _WORD.findall(text.lower())
    overlap = len(prompt_words & set(words)) / (len(set(words)) + 1)
    return [math.log1p(len(text)), math.log1p(len(words)), float(text.count("\n")),
            float(text.count("?")), sum(ch.isdigit() for ch in text) / (len(text) + 1), overlap,
            float(len(text.strip()) == 0)]


def _prompt_text(prompt: Any) -> str:
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list):  # chat messages
        return "\n".join(str(m.get("content", "")) for m in prompt if isinstance(m, dict))
    return ""


class PreferenceBaseline:
    """TF-IDF + logistic regression over both responses; `fit` then `predict_proba`/`evaluate`."""

    def __init__(self, *, C: float = 0.1, max_features: int = 50_000, min_df: int = 2,  # noqa: N803
                 seed: int = 0) -> None:
        self.C, self.max_features, self.min_df, self.seed = C, max_features, min_df, seed
        self.classes_: list[str] = []

    def _shapes(self, rows: Sequence[dict[str, Any]]) -> np.ndarray:
        shapes = []
        for row in rows:
            prompt_words = set(_WORD.findall(_prompt_text(row.get("prompt")).lower()))
            a = np.array(_shape(row["response_a"], prompt_words))
            b = np.array(_shape(row["response_b"], prompt_words))
            shapes.append(np.concatenate([a - b, np.abs(a - b)]))
        return np.asarray(shapes, dtype=np.float64)

    def _features(self, rows: Sequence[dict[str, Any]]) -> Any:
        from scipy import sparse

        diff = (self.vectorizer_.transform([r["response_a"] for r in rows])
                - self.vectorizer_.transform([r["response_b"] for r in rows]))
        dense = sparse.csr_matrix(self._shapes(rows) / self.scale_)
        return sparse.hstack([diff, abs(diff), dense]).tocsr()

    def fit(self, rows: Sequence[dict[str, Any]]) -> PreferenceBaseline:
        """Fit on preference rows; raises ValueError on malformed rows or a single class."""
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression

        check_rows(rows)
        train = list(rows) + [swap(r) for r in rows]
        self.classes_ = [c for c in WINNERS if any(r["winner"] == c for r in train)]
        if len(self.classes_) < 2:
            raise ValueError("The baseline needs pairs with at least two different outcomes.")
        texts = [r["response_a"] for r in rows] + [r["response_b"] for r in rows]
        min_df = self.min_df if len(texts) >= 10 * self.min_df else 1
        self.vectorizer_ = TfidfVectorizer(ngram_range=(1, 2), min_df=min_df, sublinear_tf=True,
                                           max_features=self.max_features)
        self.vectorizer_.fit(texts)
        self.scale_ = self._shapes(train).std(axis=0) + 1e-6
        features = self._features(train)
        self.model_ = LogisticRegression(C=self.C, max_iter=3000, random_state=self.seed)
        self.model_.fit(features, [r["winner"] for r in train])
        return self

    def predict_proba(self, rows: Sequence[dict[str, Any]]) -> np.ndarray:
        """Array (n, 3) of P(a), P(b), P(tie) (the tie column is 0 for a 2-class model)."""
        if not self.classes_:
            raise RuntimeError("Call fit() first.")
        probs = self.model_.predict_proba(self._features(rows))
        out = np.zeros((len(rows), 3))
        for column, label in enumerate(self.model_.classes_):
            out[:, WINNERS.index(label)] = probs[:, column]
        return out

    def evaluate(self, rows: Sequence[dict[str, Any]]) -> dict[str, float]:
        """`preference_metrics` of this model on held-out rows."""
        check_rows(rows)
        return preference_metrics(self.predict_proba(rows), [r["winner"] for r in rows])


def preference_metrics(probs: Any, winners: Iterable[str]) -> dict[str, float]:
    """Accuracy and log loss of P(a), P(b), P(tie) rows against the true winners.

    `accuracy` / `log_loss` use decisive pairs only (binary, P(a) / (P(a) + P(b))); when ties are
    present `accuracy_3way` / `log_loss_3way` cover every pair with all three probabilities.

    Example:
        >>> preference_metrics([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0]], ["a", "a"])["accuracy"]
        0.5
    """
    probs = np.clip(np.asarray(probs, dtype=np.float64), 1e-7, 1.0)
    winners = list(winners)
    if probs.ndim != 2 or probs.shape != (len(winners), 3):
        raise ValueError("probs must have one row of (P(a), P(b), P(tie)) per winner.")
    decisive = np.array([w in ("a", "b") for w in winners])
    result: dict[str, float] = {"n": float(decisive.sum()), "n_ties": float(len(winners) - decisive.sum())}
    if decisive.any():
        p_a = probs[decisive, 0] / (probs[decisive, 0] + probs[decisive, 1])
        truth = np.array([w == "a" for w, d in zip(winners, decisive, strict=True) if d])
        hits = np.where(np.isclose(p_a, 0.5), 0.5, (p_a > 0.5) == truth)  # a coin flip earns half
        result["accuracy"] = float(np.mean(hits))
        result["log_loss"] = float(-np.mean(np.where(truth, np.log(p_a), np.log1p(-p_a))))
    if not decisive.all():
        normalised = probs / probs.sum(axis=1, keepdims=True)
        index = np.array([WINNERS.index(w) for w in winners])
        result["accuracy_3way"] = float(np.mean(normalised.argmax(axis=1) == index))
        result["log_loss_3way"] = float(-np.mean(np.log(normalised[np.arange(len(index)), index])))
    return result
