"""Metric values on hand-made strings: identical texts score the maximum, unrelated ones score low."""

from __future__ import annotations

import pytest

from tasks import InvalidInput
from tasks.metrics import bertscore_f1, bleu, distinct_n, embedding_similarity, rouge, self_bleu

SAME = ["the quick brown fox jumps over the lazy dog", "she sells sea shells by the sea shore"]
OTHER = ["quarterly earnings beat analyst expectations", "please restart your router twice"]


def test_bleu_identical_is_100_and_disjoint_is_0() -> None:
    same = bleu(predictions=SAME, references=SAME)
    assert same.value == pytest.approx(100.0)
    assert same.per_sample == pytest.approx([100.0, 100.0])
    disjoint = bleu(predictions=SAME, references=OTHER)
    assert disjoint.value == pytest.approx(0.0)
    assert max(disjoint.per_sample) < 5


def test_bleu_uses_best_of_several_references_and_skips_missing_ones() -> None:
    result = bleu(predictions=[SAME[0], "anything"], references=[[OTHER[0], SAME[0]], []])
    assert result.per_sample == pytest.approx([100.0, 0.0])
    assert result.value == pytest.approx(100.0)


def test_rouge_identical_disjoint_and_stemming() -> None:
    same = rouge(predictions=SAME, references=SAME)
    assert {name: r.value for name, r in same.items()} == pytest.approx(
        {"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0})
    disjoint = rouge(predictions=SAME, references=OTHER)
    assert disjoint["rouge1"].value < 0.1
    stemmed = rouge(predictions=["the dogs jumped"], references=["the dog jumps"])
    assert stemmed["rouge1"].value == pytest.approx(1.0)


def test_rouge_takes_the_best_reference() -> None:
    result = rouge(predictions=[SAME[0]], references=[[OTHER[0], SAME[0]]])
    assert result["rougeL"].per_sample == pytest.approx([1.0])


def test_bertscore_identical_beats_unrelated() -> None:
    result = bertscore_f1(predictions=[SAME[0], SAME[0], ""], references=[SAME[0], OTHER[0], SAME[0]])
    identical, unrelated, empty = result.per_sample
    assert identical == pytest.approx(1.0, abs=1e-4)
    assert unrelated < 0.6
    assert empty == 0.0


def test_embedding_similarity_identical_beats_paraphrase_beats_unrelated() -> None:
    result = embedding_similarity(
        predictions=[SAME[0], "a fast brown fox leaps over a sleepy dog", SAME[0]],
        references=[SAME[0], SAME[0], OTHER[0]])
    identical, paraphrase, unrelated = result.per_sample
    assert identical == pytest.approx(1.0, abs=1e-4)
    assert identical > paraphrase > unrelated
    assert unrelated < 0.3


def test_distinct_n_on_repeated_and_varied_text() -> None:
    repeated = distinct_n(["yes yes yes yes"], n=1)
    assert repeated.value == pytest.approx(0.25)
    assert repeated.per_sample == pytest.approx([0.25])
    varied = distinct_n(["one two three", "four five six"], n=2)
    assert varied.value == pytest.approx(1.0)
    copies = distinct_n(["one two three"] * 4, n=2)
    assert copies.value == pytest.approx(0.25)
    assert copies.per_sample == pytest.approx([1.0] * 4)


def test_self_bleu_is_high_for_copies_and_low_for_varied_texts() -> None:
    assert self_bleu([SAME[0]] * 3).value == pytest.approx(100.0)
    assert self_bleu(SAME + OTHER).value < 10
    assert self_bleu(["only one"]).value == 0.0


def test_mismatched_lengths_are_refused() -> None:
    with pytest.raises(InvalidInput):
        rouge(predictions=["a", "b"], references=["a"])
