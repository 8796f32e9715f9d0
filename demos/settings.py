"""The generation-settings panel shared by every tab; its ranges are `tasks.generation.GENERATION_LIMITS`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from serving.engine import GenerationSettings
from tasks import InvalidInput
from tasks.generation import GENERATION_LIMITS

INFO = {"temperature": "0 = greedy", "seed": "empty = random"}


@dataclass
class SettingsPanel:
    """The six controls, in the order generate functions receive them."""

    temperature: gr.Slider
    top_k: gr.Slider
    top_p: gr.Slider
    repetition_penalty: gr.Slider
    max_new_tokens: gr.Slider
    seed: gr.Number

    def components(self) -> list[gr.components.Component]:
        return [self.temperature, self.top_k, self.top_p, self.repetition_penalty,
                self.max_new_tokens, self.seed]


def build_settings_panel(defaults: GenerationSettings) -> SettingsPanel:
    """One control per setting; Gradio itself refuses API values outside a control's range."""
    controls: dict[str, Any] = {}
    with gr.Accordion("Generation settings (all tabs)", open=False):
        for row in (("temperature", "top_k", "top_p"), ("repetition_penalty", "max_new_tokens", "seed")):
            with gr.Row():
                for name in row:
                    limit = GENERATION_LIMITS[name]
                    if name == "seed":
                        controls[name] = gr.Number(value=None, precision=0, minimum=limit.minimum,
                                                   maximum=limit.maximum, label=limit.label, info=INFO[name])
                    else:
                        controls[name] = gr.Slider(limit.minimum, limit.maximum, value=getattr(defaults, name),
                                                   step=limit.step, label=limit.label, info=INFO.get(name))
    return SettingsPanel(**controls)


def settings_from_values(temperature: Any, top_k: Any, top_p: Any, repetition_penalty: Any,
                         max_new_tokens: Any, seed: Any) -> GenerationSettings:
    """Build validated settings from raw widget or API values (API callers can send anything)."""
    try:
        settings = GenerationSettings(
            temperature=float(temperature), top_k=_whole(top_k), top_p=float(top_p),
            repetition_penalty=float(repetition_penalty), max_new_tokens=_whole(max_new_tokens),
            seed=None if seed in (None, "") else _whole(seed),
        )
    except (TypeError, ValueError, OverflowError):  # OverflowError: int(inf)
        raise InvalidInput("Generation settings must be numbers.") from None
    return settings.validated()


def _whole(value: Any) -> int | float:
    """An integral number as int; a fractional one stays a float so validation names it."""
    number = float(value) if isinstance(value, str) else value
    return int(number) if float(number).is_integer() else float(number)
