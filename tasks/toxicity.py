"""Toxicity scorers: callables from texts to probabilities in [0, 1], interchangeable as rewards.

Specs accepted by `make_toxicity_scorer`:

- `auto`: Detoxify when its weights are already in the torch hub cache, else profanity-check.
- `profanity-check`: alt-profanity-check's linear model (offline, fast, word-level).
- `detoxify` / `detoxify:<original|unbiased|multilingual|original-small|unbiased-small>`: weights
  from the torch hub cache; `detoxify=<checkpoint.ckpt or folder>` for a local checkpoint (a folder
  may also hold the Hugging Face config and tokenizer files, for fully offline loading).
- anything else: a Hugging Face text-classification model id or folder, optionally `<model>#<label>`
  to name the label whose probability is the score.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from tasks.base import InvalidInput, first_line

logger = logging.getLogger(__name__)

DETOXIFY_CHECKPOINTS = {
    "original": "v0.1-alpha/toxic_original-c1212f89.ckpt",
    "unbiased": "v0.3-alpha/toxic_debiased-c7548aa0.ckpt",
    "multilingual": "v0.4-alpha/multilingual_debiased-0b549669.ckpt",
    "original-small": "v0.1.2/original-albert-0e1d6498.ckpt",
    "unbiased-small": "v0.1.2/unbiased-albert-c8519128.ckpt",
}
"""Mirrors `detoxify.detoxify.MODEL_URLS`, so availability can be checked without a download."""

TOXIC_WORDS = ("toxic", "toxicity", "hate", "hateful", "offensive", "abusive", "profane", "profanity",
               "insult", "obscene")
"""Label names that mean "bad", most preferred first."""
_NEGATED = re.compile(r"^(not|non|no)[-_ ]?")


@runtime_checkable
class ToxicityScorer(Protocol):
    """Maps texts to the probability that each one is toxic."""

    def __call__(self, texts: Sequence[str]) -> list[float]: ...


class ProfanityCheckScorer:
    """alt-profanity-check: a TF-IDF + linear SVM model shipped in its wheel; no download."""

    name = "profanity-check"

    def __call__(self, texts: Sequence[str]) -> list[float]:
        if not texts:
            return []
        from profanity_check import predict_prob

        return [round(float(p), 6) for p in predict_prob(list(texts))]


class DetoxifyScorer:
    """Detoxify's `toxicity` head, from a local checkpoint or weights already in the torch hub cache."""

    def __init__(self, *, checkpoint: str | None = None, model_type: str = "original",
                 batch_size: int = 32) -> None:
        from detoxify import Detoxify

        self.batch_size = batch_size
        config_dir = None
        if checkpoint is None:
            if detoxify_cached_checkpoint(model_type) is None:
                raise InvalidInput(
                    f"Detoxify {model_type!r} weights are not in the torch hub cache and cannot be "
                    "downloaded here: pass detoxify=<checkpoint.ckpt>, or use --toxicity profanity-check.")
        else:
            path = Path(checkpoint).expanduser()
            if path.is_dir():
                found = sorted(path.glob("*.ckpt"))
                if not found:
                    raise InvalidInput(f"No .ckpt file in the Detoxify folder {path}.")
                config_dir = str(path) if (path / "config.json").exists() else None
                path = found[0]
            if not path.exists():
                raise InvalidInput(f"Detoxify checkpoint {checkpoint} does not exist.")
            checkpoint = str(path)
        try:
            self._model = Detoxify(model_type, checkpoint=checkpoint, device="cpu",
                                   huggingface_config_path=config_dir)
        except Exception as error:  # noqa: BLE001 - any loading failure becomes one clear line
            raise InvalidInput(f"Detoxify could not load: {first_line(error)}") from error
        self.name = f"detoxify:{Path(checkpoint).name if checkpoint else model_type}"

    def __call__(self, texts: Sequence[str]) -> list[float]:
        scores: list[float] = []
        for start in range(0, len(texts), self.batch_size):
            batch = list(texts[start:start + self.batch_size])
            result = self._model.predict(batch)["toxicity"]
            values = result if isinstance(result, list) else [result]
            scores.extend(round(float(v), 6) for v in values)
        return scores


class HFClassifierScorer:
    """Any Hugging Face sequence-classification model, scored by its toxic label's probability.

    The label is `label` if given, else the first label whose name means toxic/hate/offensive
    (and is not negated like `nothate`); a two-class model with anonymous `LABEL_0/LABEL_1`
    names uses `LABEL_1`. Multi-label models (problem_type `multi_label_classification`) use a
    sigmoid, the others a softmax.
    """

    def __init__(self, model: str, *, label: str | None = None, batch_size: int = 16) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model)
            self.model = AutoModelForSequenceClassification.from_pretrained(model)
        except (OSError, ValueError, KeyError) as error:
            raise InvalidInput(f"Cannot load toxicity classifier {model!r}: {first_line(error)}") from error
        self.model.eval()
        self.batch_size = batch_size
        self.index, self.label = _toxic_label(dict(self.model.config.id2label), label, model)
        self.multi_label = self.model.config.problem_type == "multi_label_classification"
        limits = [self.tokenizer.model_max_length,
                  getattr(self.model.config, "max_position_embeddings", None) or 512]
        # RoBERTa reserves two positions for its padding offset.
        offset = 2 if self.model.config.model_type in {"roberta", "xlm-roberta"} else 0
        self.max_length = min(limits) - offset
        self.name = f"{model}#{self.label}"

    def __call__(self, texts: Sequence[str]) -> list[float]:
        import torch

        scores: list[float] = []
        for start in range(0, len(texts), self.batch_size):
            batch = [t if t.strip() else " " for t in texts[start:start + self.batch_size]]
            encoded = self.tokenizer(batch, return_tensors="pt", padding=True, truncation=True,
                                     max_length=self.max_length)
            with torch.inference_mode():
                logits = self.model(**encoded).logits.float()
            probs = torch.sigmoid(logits) if self.multi_label else torch.softmax(logits, dim=-1)
            scores.extend(round(float(p), 6) for p in probs[:, self.index])
        return scores


def detoxify_cached_checkpoint(model_type: str = "original") -> Path | None:
    """Where Detoxify's weights for `model_type` sit in the torch hub cache, or None."""
    import torch

    if model_type not in DETOXIFY_CHECKPOINTS:
        raise InvalidInput(f"Unknown Detoxify model {model_type!r}; "
                           f"choose one of: {', '.join(DETOXIFY_CHECKPOINTS)}.")
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(DETOXIFY_CHECKPOINTS[model_type]).name
    return path if path.exists() else None


def make_toxicity_scorer(spec: str = "auto") -> ToxicityScorer:
    """Build the scorer a spec names (see the module docstring for the accepted specs).

    Example:
        >>> scorer = make_toxicity_scorer("profanity-check")
        >>> scorer(["have a lovely day"])[0] < 0.5
        True
    """
    spec = spec.strip()
    if spec == "auto":
        if detoxify_cached_checkpoint("original") is not None:
            try:
                return DetoxifyScorer(model_type="original")
            except InvalidInput as error:
                logger.warning("%s; falling back to profanity-check", error)
        return ProfanityCheckScorer()
    if spec in {"profanity-check", "profanity_check", "alt-profanity-check"}:
        return ProfanityCheckScorer()
    if spec == "detoxify":
        return DetoxifyScorer()
    if spec.startswith("detoxify:"):
        return DetoxifyScorer(model_type=spec.split(":", 1)[1])
    if spec.startswith("detoxify="):
        return DetoxifyScorer(checkpoint=spec.split("=", 1)[1])
    if not spec:
        raise InvalidInput("The toxicity scorer spec is empty.")
    model, _, label = spec.partition("#")
    return HFClassifierScorer(model, label=label or None)


def _toxic_label(id2label: dict[Any, str], wanted: str | None, model: str) -> tuple[int, str]:
    labels = {int(i): str(name) for i, name in id2label.items()}
    if wanted is not None:
        for i, name in labels.items():
            if name.lower() == wanted.lower():
                return i, name
        raise InvalidInput(f"{model} has no label {wanted!r}; its labels: {', '.join(labels.values())}.")
    for word in TOXIC_WORDS:
        for i, name in sorted(labels.items()):
            key = name.lower().strip()
            if not _NEGATED.match(key) and word in re.split(r"[^a-z]+", key):
                return i, name
    if len(labels) == 2 and all(re.fullmatch(r"LABEL_\d", n) for n in labels.values()):
        return 1, labels[1]
    raise InvalidInput(f"Cannot tell which label of {model} means toxic ({', '.join(labels.values())}): "
                       f"name it as {model}#<label>.")

