"""Generate-and-score: evaluate a base model (optionally with a LoRA adapter) on a task's examples.

`evaluate` is the library call behind the `trainers/evaluate_model.py` CLI; `GenerationEvaluator`
is how the trainers of text-writing policies score the base model before training and the
adapter after it (see `trainers.lifecycle`). The results are `trainers.eval_report.EvalReport`s.

Generation is batched (left padding for causal LMs) with the same prompt encoding the demos
use (`serving.engine.Engine.encode`). Each task gets the metrics that make sense for it: reference
metrics when the examples have references, toxicity when a scorer is given (always for
`detox`), diversity and base-model perplexity for every task, rewards when a reward is given.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hub.errors import FlywheelError
from serving.engine import Engine, GenerationSettings
from serving.models import LoadedModel
from tasks import InvalidInput, Task
from tasks.seed_data import Example
from tasks.toxicity import ToxicityScorer, make_toxicity_scorer
from trainers.eval_report import EvalReport, SampleResult

logger = logging.getLogger(__name__)

RewardFn = Callable[[Sequence[str], Sequence[str]], list[float]]
DEFAULT_MAX_NEW_TOKENS = {"conversation_starter": 40, "dialogue_summary": 64, "dialogue_response": 48,
                          "detox": 30, "tweet": 64, "elevator_pitch": 128, "arena": 128}
"""Evaluation lengths: long enough for a good answer, short enough for CPU runs."""
TOXIC_THRESHOLD = 0.5


def default_settings(task: Task, *, max_new_tokens: int | None = None) -> GenerationSettings:
    """Greedy decoding with the demos' repetition penalty and a task-appropriate length."""
    return GenerationSettings(temperature=0.0, repetition_penalty=1.1, seed=0,
                              max_new_tokens=max_new_tokens or DEFAULT_MAX_NEW_TOKENS.get(task.slug, 48))


def evaluate(*, loaded: LoadedModel, task: Task, examples: list[Example], adapter: str | None = None,
             settings: GenerationSettings | None = None, batch_size: int = 8,
             reward_fn: RewardFn | None = None, toxicity: ToxicityScorer | None = None,
             progress: bool = True) -> EvalReport:
    """Generate an output for every example and score the outputs.

    Args:
        loaded: the base model; it is left as it was found (an adapter is removed afterwards).
        adapter: a LoRA adapter folder or Hub repo id applied on top, or None for the base model.
        settings: generation settings (default: `default_settings(task)`).
        reward_fn: `(prompts, completions) -> scores`; prompts are the task's plain-text prompts.
        toxicity: a scorer; `detox` uses `make_toxicity_scorer("auto")` when none is given.

    Raises:
        InvalidInput: no examples or a bad batch size; FlywheelError: the adapter cannot be loaded.
    """
    if not examples:
        raise InvalidInput(f"No examples to evaluate {task.slug} on.")
    if batch_size < 1:
        raise InvalidInput("Batch size must be at least 1.")
    settings = (settings or default_settings(task)).validated()
    if toxicity is None and task.slug == "detox":
        toxicity = make_toxicity_scorer("auto")
    with _applied(loaded, adapter) as model:
        started = time.perf_counter()
        engine = Engine(loaded)
        prompt_ids = [engine.encode(task, ex.inputs)["input_ids"][0].tolist() for ex in examples]
        completions, new_tokens = _generate(loaded, model, prompt_ids, settings, batch_size, progress)
        generated = time.perf_counter()
        with _base_only(model):
            perplexities = continuation_perplexity(loaded=loaded, model=model, prompt_ids=prompt_ids,
                                                   completions=completions, batch_size=batch_size)
    per_sample: dict[str, list[float | None]] = {"perplexity": perplexities}
    metrics: dict[str, float] = {}
    _score_text(completions, examples, metrics, per_sample)
    prompts = [task.text_prompt(ex.inputs) for ex in examples]
    if toxicity is not None:
        values = [float(v) for v in toxicity(completions)]
        per_sample["toxicity"] = values
        metrics["toxicity_mean"] = _mean(values)
        metrics["toxic_fraction"] = _mean([float(v > TOXIC_THRESHOLD) for v in values])
    if reward_fn is not None:
        rewards = [float(v) for v in reward_fn(prompts, completions)]
        per_sample["reward"] = rewards
        metrics["reward"] = _mean(rewards)
        if task.main_metric == "reward_model":
            metrics["reward_model"] = metrics["reward"]
        _preference_accuracy(reward_fn, examples, prompts, metrics)
    finished = time.perf_counter()
    samples = [
        SampleResult(id=str(ex.meta.get("id") or i), inputs=ex.inputs, references=ex.references,
                     completion=completions[i], scores={k: v[i] for k, v in per_sample.items()},
                     meta=ex.meta)
        for i, ex in enumerate(examples)
    ]
    return EvalReport(
        task=task.slug, model=loaded.base_id, adapter=adapter, main_metric=task.main_metric,
        higher_is_better=task.higher_is_better, metrics=metrics, samples=samples,
        settings=asdict(settings),
        timing={"generate_seconds": round(generated - started, 2),
                "score_seconds": round(finished - generated, 2),
                "generated_tokens_per_second": round(new_tokens / max(generated - started, 1e-9), 2)},
        info={"toxicity_scorer": getattr(toxicity, "name", type(toxicity).__name__) if toxicity else None},
    )


@dataclass
class GenerationEvaluator:
    """The lifecycle's evaluator for a policy: the base model (or the starting adapter) before training,
    base + trained adapter after.

    The main metric and its direction are the task's (`Task.main_metric`, `Task.higher_is_better`).
    """

    loaded: LoadedModel
    task: Task
    examples: list[Example]
    settings: GenerationSettings
    batch_size: int = 8
    reward_fn: RewardFn | None = None
    unmeasured_hint: str = ""
    """What the user can do when the main metric cannot be measured on these examples."""
    reference: str = "the base model"
    reference_adapter: str | None = None
    """The adapter `before` scores (the one training started from); None: the bare base model."""

    main_metric: str = field(init=False)
    higher_is_better: bool = field(init=False)

    def __post_init__(self) -> None:
        self.main_metric, self.higher_is_better = self.task.main_metric, self.task.higher_is_better

    def before(self) -> EvalReport | None:
        return self.score(adapter=self.reference_adapter) if self.examples else None

    def after(self, model: Any, adapter_dir: Path) -> EvalReport | None:
        """Score the saved adapter on the base model that `model` (the trained PEFT model) wraps."""
        # PEFT put the LoRA layers into the shared base model: take them out, then apply the saved adapter.
        if hasattr(model, "unload"):
            model.unload()
        model.eval()
        return self.score(adapter=str(adapter_dir)) if self.examples else None

    def score(self, *, adapter: str | None) -> EvalReport:
        return evaluate(loaded=self.loaded, task=self.task, examples=self.examples, adapter=adapter,
                        settings=self.settings, batch_size=self.batch_size, reward_fn=self.reward_fn)


def continuation_perplexity(*, loaded: LoadedModel, model: Any, prompt_ids: list[list[int]],
                            completions: Sequence[str], batch_size: int = 8) -> list[float | None]:
    """Perplexity of each completion's tokens given its prompt (None for an empty completion).

    `batch_size` applies to seq2seq models; causal models are scored one row at a time.
    """
    import torch

    tokenizer = loaded.tokenizer
    out: list[float | None] = [None] * len(completions)
    items = [(i, prompt_ids[i], tokenizer(c, add_special_tokens=False)["input_ids"])
             for i, c in enumerate(completions) if c.strip()]
    if loaded.is_seq2seq:
        for start in range(0, len(items), batch_size):
            batch = items[start:start + batch_size]
            enc = tokenizer.pad({"input_ids": [p for _, p, _ in batch]}, return_tensors="pt", padding_side="right")
            labels = _pad([c for _, _, c in batch], -100)
            with torch.inference_mode():
                logits = model(**enc, labels=labels).logits
            _record_perplexities(out, batch, logits, labels)
        return out
    # Causal models: one row at a time, projecting only its completion's positions through the vocabulary.
    # In a batch, prompts of different lengths widened that window to [batch, longest gap, vocab] floats:
    # the SFT recipe's memory peak (2.6 GB in evaluation; 1.7 GB, in training, once scored row by row).
    limit = _max_positions(loaded)
    trims = "logits_to_keep" in inspect.signature(loaded.model.forward).parameters
    for item in items:
        _, prompt, completion = item
        ids, labels = prompt + completion, [-100] * len(prompt) + completion
        if limit and len(ids) > limit:
            ids, labels = ids[-limit:], labels[-limit:]
        keep = min(len(ids), len(completion) + 1) if trims else len(ids)
        with torch.inference_mode():
            logits = model(input_ids=torch.tensor([ids]), **({"logits_to_keep": keep} if trims else {})).logits
        _record_perplexities(out, [item], logits[:, :-1], torch.tensor([labels])[:, len(ids) - keep + 1:])
    return out


def _record_perplexities(out: list[float | None], batch: list[tuple[int, Any, Any]], logits: Any,
                         targets: Any) -> None:
    """exp(mean negative log-likelihood of the labelled targets) of each row, into `out` at its index."""
    import torch

    nll = torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), targets, ignore_index=-100,
                                            reduction="none")
    counts = (targets != -100).sum(dim=1)
    for (i, _, _), total, count in zip(batch, nll.sum(dim=1).tolist(), counts.tolist(), strict=True):
        out[i] = round(math.exp(min(total / count, 700)), 4) if count else None


def _generate(loaded: LoadedModel, model: Any, prompt_ids: list[list[int]], settings: GenerationSettings,
              batch_size: int, progress: bool) -> tuple[list[str], int]:
    import torch
    from tqdm.auto import tqdm

    tokenizer = loaded.tokenizer
    limit = _max_positions(loaded)
    budget = limit - settings.max_new_tokens if limit and not loaded.is_seq2seq else None
    if budget is not None and budget < 1:
        raise InvalidInput(f"max_new_tokens={settings.max_new_tokens} leaves no room for a prompt "
                           f"in this model's {limit} positions.")
    # Longest prompts first, so batches hold similar lengths and memory peaks at the start.
    order = sorted(range(len(prompt_ids)), key=lambda i: -len(prompt_ids[i]))
    completions = [""] * len(prompt_ids)
    new_tokens = 0
    if settings.seed is not None:
        torch.manual_seed(settings.seed)
    batches = [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
    for batch in tqdm(batches, desc="generating", unit="batch", disable=not progress):
        # Over-long prompts keep their end, where the question and the generation prompt sit.
        rows = [prompt_ids[i][-budget:] if budget else prompt_ids[i] for i in batch]
        enc = tokenizer.pad({"input_ids": rows}, return_tensors="pt",
                            padding_side="right" if loaded.is_seq2seq else "left")
        with torch.inference_mode():
            output = model.generate(**enc, pad_token_id=tokenizer.pad_token_id, **settings.generate_kwargs())
        if not loaded.is_seq2seq:
            output = output[:, enc["input_ids"].shape[1]:]
        stops = {tokenizer.pad_token_id, tokenizer.eos_token_id}
        new_tokens += sum(1 for token in output.flatten().tolist() if token not in stops)
        for i, text in zip(batch, tokenizer.batch_decode(output, skip_special_tokens=True), strict=True):
            completions[i] = text.strip()
    return completions, new_tokens


def _score_text(completions: list[str], examples: list[Example], metrics: dict[str, float],
                per_sample: dict[str, list[float | None]]) -> None:
    from tasks.metrics import bertscore_f1, bleu, distinct_n, embedding_similarity, rouge, self_bleu

    with_refs = [i for i, ex in enumerate(examples) if ex.references]
    if with_refs:
        preds = [completions[i] for i in with_refs]
        refs = [examples[i].references for i in with_refs]
        results = {"bleu": bleu(predictions=preds, references=refs),
                   **rouge(predictions=preds, references=refs),
                   "bertscore_f1": bertscore_f1(predictions=preds, references=refs),
                   "embedding_cosine": embedding_similarity(predictions=preds, references=refs)}
        for name, result in results.items():
            metrics[name] = result.value
            column: list[float | None] = [None] * len(examples)
            for i, value in zip(with_refs, result.per_sample, strict=True):
                column[i] = value
            per_sample[name] = column
    for n in (1, 2):
        result = distinct_n(completions, n=n)
        metrics[f"distinct_{n}"] = result.value
        per_sample[f"distinct_{n}"] = list(result.per_sample)
    diversity = self_bleu(completions)
    metrics["self_bleu"] = diversity.value
    perplexities = [p for p in per_sample["perplexity"] if p is not None]
    if perplexities:
        # Geometric mean: the corpus perplexity if every output had the same length.
        metrics["perplexity"] = round(math.exp(sum(math.log(p) for p in perplexities) / len(perplexities)), 4)
    metrics["length_words"] = _mean([float(len(c.split())) for c in completions])
    metrics["empty_fraction"] = _mean([float(not c.strip()) for c in completions])


def _preference_accuracy(reward_fn: RewardFn, examples: list[Example], prompts: list[str],
                         metrics: dict[str, float]) -> None:
    labelled = [i for i, ex in enumerate(examples) if ex.meta.get("winner") in ("a", "b")]
    if not labelled:
        return
    chosen = [examples[i].meta["response_a" if examples[i].meta["winner"] == "a" else "response_b"]
              for i in labelled]
    rejected = [examples[i].meta["response_b" if examples[i].meta["winner"] == "a" else "response_a"]
                for i in labelled]
    both = reward_fn([prompts[i] for i in labelled] * 2, chosen + rejected)
    wins = [float(good > bad) for good, bad in zip(both[:len(labelled)], both[len(labelled):], strict=True)]
    metrics["preference_accuracy"] = _mean(wins)


@contextlib.contextmanager
def _applied(loaded: LoadedModel, adapter: str | None) -> Iterator[Any]:
    """Yield the model to generate with: the base model, or it wrapped with `adapter`, then undo."""
    if adapter is None:
        yield loaded.model
        return
    from peft import PeftModel

    from hub.repos import AdapterSpec, resolve_adapter
    from serving.adapters import validate_adapter

    if isinstance(loaded.model, PeftModel):
        raise FlywheelError("This model already carries adapters; evaluate from a freshly loaded base model.")
    spec = AdapterSpec.parse(adapter)  # REPO@REV pins a revision
    path, _ = resolve_adapter(spec.ref, revision=spec.revision)
    validate_adapter(path, base_id=loaded.base_id, model=loaded.model)
    try:
        wrapped = PeftModel.from_pretrained(loaded.model, str(path), adapter_name="evaluated")
    except Exception as error:  # noqa: BLE001 - any loading failure becomes one clear line
        raise FlywheelError(f"Adapter {adapter} could not be loaded: {error}") from error
    wrapped.eval()
    try:
        yield wrapped
    finally:
        # PEFT injects LoRA layers into the base modules in place: take them out again.
        wrapped.unload()


def _base_only(model: Any) -> contextlib.AbstractContextManager[Any]:
    return model.disable_adapter() if hasattr(model, "disable_adapter") else contextlib.nullcontext()


def _max_positions(loaded: LoadedModel) -> int | None:
    return getattr(loaded.model.config, "max_position_embeddings", None)


def _pad(rows: list[list[int]], value: int) -> Any:
    import torch

    width = max(len(r) for r in rows)
    return torch.tensor([r + [value] * (width - len(r)) for r in rows], dtype=torch.long)


def _mean(values: Sequence[float]) -> float:
    return round(sum(values) / len(values), 6) if values else 0.0
