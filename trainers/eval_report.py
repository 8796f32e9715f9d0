"""The report of one evaluation, whatever was evaluated: aggregate metrics, every sample, and tables.

`trainers.evaluation` fills it by generating and scoring text (policies); `trainers/reward.py`
by scoring held-out preference pairs (reward models). `compare_table` is the before/after
table of every trainer's console output and model card.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

METRIC_HELP: dict[str, str] = {
    "bleu": "corpus BLEU, 0-100 (sacrebleu)",
    "rouge1": "ROUGE-1 F, stemmed, best reference",
    "rouge2": "ROUGE-2 F, stemmed, best reference",
    "rougeL": "ROUGE-L F, stemmed, best reference",
    "bertscore_f1": "BERTScore F1 on all-MiniLM-L6-v2",
    "embedding_cosine": "sentence-embedding cosine (all-MiniLM-L6-v2)",
    "toxicity_mean": "mean P(toxic) of outputs",
    "toxic_fraction": "share of outputs with P(toxic) > 0.5",
    "distinct_1": "unique unigrams / unigrams, all outputs",
    "distinct_2": "unique bigrams / bigrams, all outputs",
    "self_bleu": "mean BLEU of each output against the others (lower = more diverse)",
    "perplexity": "base-model perplexity of outputs given the prompt (fluency guard)",
    "reward": "mean reward",
    "reward_model": "mean reward-model score",
    "preference_accuracy": "share of human-labelled pairs the reward ranks like the human",
    "length_words": "mean output length, words",
    "empty_fraction": "share of empty outputs",
    "accuracy": "share of decisive pairs ranked like the person (a coin flip scores 0.5)",
    "log_loss": "log loss of P(preferred) on decisive pairs (chance: ln 2 = 0.693)",
    "accuracy_3way": "3-way accuracy (a / b / tie) over all pairs",
    "log_loss_3way": "3-way log loss (a / b / tie) over all pairs",
}
LOWER_IS_BETTER = {"toxicity_mean", "toxic_fraction", "self_bleu", "perplexity", "empty_fraction", "log_loss",
                   "log_loss_3way"}


@dataclass
class SampleResult:
    """One evaluated example: what went in, what came out, and its own scores."""

    id: str
    inputs: dict[str, str]
    references: list[str]
    completion: str
    scores: dict[str, float | None]
    """Per-sample metric values; None where a metric does not apply (e.g. no reference)."""
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class EvalReport:
    """Aggregate metrics of one model (+ adapter) on one task, and every sample behind them."""

    task: str
    model: str
    adapter: str | None
    main_metric: str
    higher_is_better: bool
    metrics: dict[str, float]
    samples: list[SampleResult]
    settings: dict[str, Any] = field(default_factory=dict)
    """Generation settings used."""
    timing: dict[str, float] = field(default_factory=dict)
    """Seconds spent generating and scoring, and generated tokens per second."""
    info: dict[str, Any] = field(default_factory=dict)
    """Provenance added by callers: data source, scorer names, command-line config."""
    baselines: dict[str, dict[str, float]] = field(default_factory=dict)
    """Metrics of other predictors on the same examples, for reference (a reward model's TF-IDF
    baseline); `compare_table` shows each as a column."""

    def to_json(self, path: str | Path) -> Path:
        """Write the report (aggregate + every sample) as indented JSON; return the path."""
        target = Path(path).expanduser()
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(asdict(self), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return target

    def table(self) -> str:
        """A plain-text table of the aggregate metrics, main metric first, then any baselines."""
        title = f"{self.task} · {self.model}" + (f" + {self.adapter}" if self.adapter else "")
        rows = [(_label(name, self.main_metric, self.higher_is_better), _fmt(name, value),
                 METRIC_HELP.get(name, "")) for name, value in _ordered(self.metrics, self.main_metric)]
        width = max([len(r[0]) for r in rows] + [6])
        value_width = max([len(r[1]) for r in rows] + [5])
        size = f"  (n={len(self.samples)})" if self.samples else ""
        lines = [title + size, "-" * (width + value_width + 40)]
        lines += [f"{a:<{width}}  {b:>{value_width}}  {c}" for a, b, c in rows]
        for name, metrics in self.baselines.items():
            lines.append(f"baseline {name}: " + ", ".join(f"{metric} {_fmt(metric, metrics.get(metric))}"
                                                           for metric in self.metrics))
        return "\n".join(lines)


def compare_table(before: EvalReport, after: EvalReport) -> str:
    """A markdown table of before/after/delta for a model card; the main metric comes first.

    The baselines of `before` (if any) get a column each, between before and after.

    Example:
        | metric | before | after | Δ |
        |---|---|---|---|
        | **rougeL** ↑ | 0.1670 | 0.2840 | +0.1170 ✓ |
    """
    names = list(dict.fromkeys([*before.metrics, *after.metrics]))
    ordered = [n for n, _ in _ordered(dict.fromkeys(names, 0.0), after.main_metric)]
    baselines = before.baselines
    head = ["metric", "before", *baselines, "after", "Δ"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for name in ordered:
        old, new = before.metrics.get(name), after.metrics.get(name)
        higher = after.higher_is_better if name == after.main_metric else name not in LOWER_IS_BETTER
        arrow = "↑" if higher else "↓"
        label = f"**{name}** {arrow}" if name == after.main_metric else f"{name} {arrow}"
        delta = "n/a"
        if is_measured(old) and is_measured(new):
            change = new - old
            verdict = "" if abs(change) < 1e-12 else (" ✓" if (change > 0) == higher else " ✗")
            delta = f"{change:+.4f}{verdict}"
        references = "".join(f" {_fmt(name, metrics.get(name))} |" for metrics in baselines.values())
        lines.append(f"| {label} | {_fmt(name, old)} |{references} {_fmt(name, new)} | {delta} |")
    return "\n".join(lines)


def _ordered(metrics: dict[str, Any], main: str) -> list[tuple[str, Any]]:
    known = list(METRIC_HELP)
    return sorted(metrics.items(), key=lambda kv: (kv[0] != main,
                                                   known.index(kv[0]) if kv[0] in known else len(known)))


def _label(name: str, main: str, higher: bool) -> str:
    return f"{name} (main, {'higher' if higher else 'lower'} is better)" if name == main else name


def is_measured(value: Any) -> bool:
    """True for a metric value that is a real number (not missing, not NaN)."""
    return isinstance(value, (int, float)) and not math.isnan(value)


def _fmt(name: str, value: Any) -> str:
    if not is_measured(value):
        return "n/a"
    if name in {"bleu", "self_bleu", "perplexity", "length_words"}:
        return f"{value:.2f}"
    return f"{value:.4f}"
