"""The generation-settings panel shared by every tab."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from serving.engine import GenerationSettings


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
    with gr.Accordion("Generation settings (all tabs)", open=False):
        with gr.Row():
            temperature = gr.Slider(0, 2, value=defaults.temperature, step=0.05, label="Temperature",
                                    info="0 = greedy")
            top_k = gr.Slider(0, 200, value=defaults.top_k, step=1, label="Top-k")
            top_p = gr.Slider(0.05, 1, value=defaults.top_p, step=0.01, label="Top-p")
        with gr.Row():
            repetition_penalty = gr.Slider(0.5, 2.5, value=defaults.repetition_penalty, step=0.05,
                                           label="Repetition penalty")
            max_new_tokens = gr.Slider(1, 512, value=defaults.max_new_tokens, step=1,
                                       label="Max new tokens")
            seed = gr.Number(value=None, precision=0, label="Seed", info="empty = random")
    return SettingsPanel(temperature, top_k, top_p, repetition_penalty, max_new_tokens, seed)


def settings_from_values(temperature: float, top_k: float, top_p: float, repetition_penalty: float,
                         max_new_tokens: float, seed: float | None) -> GenerationSettings:
    """Build validated settings from raw widget or API values (API callers can send anything)."""
    from tasks import InvalidInput

    try:
        settings = GenerationSettings(
            temperature=float(temperature), top_k=int(top_k), top_p=float(top_p),
            repetition_penalty=float(repetition_penalty), max_new_tokens=int(max_new_tokens),
            seed=None if seed in (None, "") else int(seed),
        )
    except (TypeError, ValueError):
        raise InvalidInput("Generation settings must be numbers.") from None
    return settings.validated()
