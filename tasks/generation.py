"""The limits of every generation setting: one table for the UI sliders, API validation, the engine and records.

`serving.engine.GenerationSettings` validates with it, `demos.settings` builds its sliders
from it and `hub.feedback.records` refuses stored settings outside it (a seed above
2**63 - 1 would otherwise break every trainer reading the row: Arrow's int64 overflows).

Example:
    >>> GENERATION_LIMITS["seed"].problem(10**19)
    'must be a whole number from 0 to 9223372036854775807'
    >>> check_generation_settings({"temperature": 0.7, "top_k": 50, "top_p": 0.9,
    ...                            "repetition_penalty": 1.1, "max_new_tokens": 96, "seed": None})
    >>> check_generation_settings({"temperature": 3})
    Traceback (most recent call last):
    ...
    tasks.base.InvalidInput: Temperature must be a number from 0 to 2.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tasks.base import InvalidInput

SEED_MAX = 2**63 - 1
"""Largest seed: the largest int64, so every stored seed fits the dataset's int64 column."""


@dataclass(frozen=True)
class SettingLimit:
    """The accepted range of one generation setting, and how a slider shows it."""

    label: str
    """What the UI calls it and error messages name."""
    minimum: float
    maximum: float
    step: float
    """Slider step."""
    whole: bool = False
    """Whole numbers only (stored as int64)."""
    optional: bool = False
    """None is accepted (an empty seed draws a fresh one)."""

    @property
    def kind(self) -> type:
        return int if self.whole else float

    @property
    def span(self) -> str:
        """The range as error messages and API docs word it: "from 0 to 2"."""
        return f"from {_plain(self.minimum)} to {_plain(self.maximum)}"

    def problem(self, value: Any) -> str | None:
        """None if `value` is acceptable, else what is wrong, as a predicate ("must be ...")."""
        if value is None and self.optional:
            return None
        number = "a whole number" if self.whole else "a number"
        wanted = f"must be {number} {self.span}"
        if isinstance(value, bool) or not isinstance(value, int | float):
            return wanted
        if isinstance(value, float) and not math.isfinite(value):
            return wanted
        if self.whole and value != int(value) or not self.minimum <= value <= self.maximum:
            return wanted
        return None


GENERATION_LIMITS: dict[str, SettingLimit] = {
    "temperature": SettingLimit("Temperature", 0.0, 2.0, 0.05),
    "top_k": SettingLimit("Top-k", 0, 1000, 1, whole=True),
    "top_p": SettingLimit("Top-p", 0.01, 1.0, 0.01),
    "repetition_penalty": SettingLimit("Repetition penalty", 0.5, 2.5, 0.05),
    "max_new_tokens": SettingLimit("Max new tokens", 1, 1024, 1, whole=True),
    "seed": SettingLimit("Seed", 0, SEED_MAX, 1, whole=True, optional=True),
}
"""Setting name -> limit, in the order of `GenerationSettings`' fields and the UI's controls."""


def check_generation_settings(settings: Mapping[str, Any]) -> None:
    """Raise `InvalidInput` naming the first setting outside its limit (absent settings are not checked)."""
    for name, limit in GENERATION_LIMITS.items():
        if name in settings:
            problem = limit.problem(settings[name])
            if problem:
                raise InvalidInput(f"{limit.label} {problem}.")


def _plain(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)
