"""The shape every Flywheel task shares: input fields, prompt rendering and feedback options."""

from __future__ import annotations

import os
import re
import unicodedata
from dataclasses import dataclass, field


class InvalidInput(ValueError):
    """An input a person typed that the task refuses, with a message meant for that person."""


_TOKEN_PATTERN = re.compile(r"hf_[A-Za-z0-9]{6,}")


def redact(text: str, *secrets: str | None) -> str:
    """`text` with `HF_TOKEN`, the given secrets and anything shaped like a Hub token masked.

    Example:
        >>> redact("401 for hf_abcdefgh1234 and s3cr3t-value", "s3cr3t-value")
        '401 for hf_*** and ***'
    """
    for secret in {os.environ.get("HF_TOKEN"), *secrets}:
        if secret and len(secret) >= 8:
            text = text.replace(secret, "***")
    return _TOKEN_PATTERN.sub("hf_***", text)


def first_line(error: BaseException, *secrets: str | None) -> str:
    """How an error is quoted in a one-line message: its first line (or its type's name), secrets masked.

    Example:
        >>> first_line(OSError("Connection refused\\nretrying..."))
        'Connection refused'
    """
    text = str(error).strip()
    return redact(text.splitlines()[0] if text else type(error).__name__, *secrets)


@dataclass(frozen=True)
class InputField:
    """One text box of a task's form."""

    name: str
    """Key of the field in the `inputs` dict and in feedback records."""
    label: str
    """What the UI shows above the box."""
    max_chars: int
    """Longest accepted value, counted after trimming surrounding whitespace."""
    lines: int = 1
    """Height of the box in the UI."""
    placeholder: str = ""
    """Greyed-out hint shown in an empty box."""


@dataclass(frozen=True)
class Task:
    """A text-generation task: what it asks for, how it prompts, how people judge it."""

    slug: str
    """Public identifier: used in endpoint names, dataset configs and recipe names."""
    title: str
    """Tab title."""
    description: str
    """One sentence under the tab title."""
    fields: tuple[InputField, ...]
    """The form, in display order."""
    system_prompt: str
    """System message put before the user turn for chat models."""
    user_template: str
    """`str.format` template over the field names that makes the user turn."""
    flags: tuple[str, ...] = ()
    """Flag options a person can attach to an output."""
    good_flags: tuple[str, ...] = ()
    """The subset of `flags` that means "this output is good" (SFT and KTO positives)."""
    feedback_kinds: tuple[str, ...] = ("flag", "edit")
    """Which feedback record kinds this task's tab produces."""
    rating_weights: dict[str, float] = field(default_factory=dict)
    """Rating name -> weight; ratings are 1..5 and the reward is their weighted, normalised sum."""
    examples: tuple[dict[str, str], ...] = ()
    """Example inputs shown under the form; written by us."""
    main_metric: str = "rougeL"
    """Metric of `trainers/evaluate_model.py` that decides whether an adapter beats its base model."""
    higher_is_better: bool = True
    """Direction of `main_metric`."""
    continuation: bool = False
    """If true the plain-text prompt is the raw input to continue (no instruction wrapper)."""

    @property
    def field_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    def validate(self, inputs: dict[str, object]) -> dict[str, str]:
        """Return trimmed inputs, or raise `InvalidInput` naming the first bad field.

        Example:
            >>> from tasks import get_task
            >>> get_task("tweet").validate({"prompt": "  Advice for founders "})
            {'prompt': 'Advice for founders'}
        """
        cleaned: dict[str, str] = {}
        for spec in self.fields:
            raw = inputs.get(spec.name)
            if raw is None:
                raise InvalidInput(f"{spec.label} is missing.")
            if not isinstance(raw, str):
                raise InvalidInput(f"{spec.label} must be text.")
            # Raw length first (with room for surrounding whitespace), so huge values cost no per-character work.
            text = raw if len(raw) > 2 * spec.max_chars + 100 else strip_control_characters(raw).strip()
            if not text:
                raise InvalidInput(f"{spec.label} is empty: please write something.")
            if len(text) > spec.max_chars:
                raise InvalidInput(
                    f"{spec.label} is too long ({len(text)} characters; the limit is {spec.max_chars})."
                )
            cleaned[spec.name] = text
        return cleaned

    def messages(self, inputs: dict[str, str]) -> list[dict[str, str]]:
        """Chat messages for a chat model; `inputs` should already be validated."""
        user = self.user_template.format(**inputs)
        return [{"role": "system", "content": self.system_prompt}, {"role": "user", "content": user}]

    def text_prompt(self, inputs: dict[str, str]) -> str:
        """A plain-text prompt for models without a chat template (seq2seq, base LMs)."""
        if self.continuation:
            return inputs[self.fields[0].name]
        return self.user_template.format(**inputs)

    def reward_from_ratings(self, ratings: dict[str, int]) -> float:
        """Weighted sum of 1..5 ratings mapped onto [0, 1].

        Example:
            >>> from tasks import get_task
            >>> get_task("tweet").reward_from_ratings(
            ...     {"relevance": 5, "clarity": 5, "originality": 5, "engagement": 5})
            1.0
        """
        if not self.rating_weights:
            raise InvalidInput(f"Task {self.slug} has no ratings.")
        missing = set(self.rating_weights) - set(ratings)
        if missing:
            raise InvalidInput(f"Missing ratings: {', '.join(sorted(missing))}.")
        total = sum(self.rating_weights.values())
        score = 0.0
        for name, weight in self.rating_weights.items():
            value = ratings[name]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 1 <= value <= 5:
                raise InvalidInput(f"Rating {name} must be a number from 1 to 5.")
            score += weight * (value - 1) / 4
        return round(score / total, 6)


def strip_control_characters(text: str) -> str:
    """Drop control and format characters except newlines and tabs (they break prompts and logs)."""
    return "".join(
        ch for ch in text if ch in "\n\t" or unicodedata.category(ch)[0] != "C"
    )
