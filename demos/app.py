"""The Gradio Blocks suite: one tab per task, shared settings, named API endpoints.

Endpoints (for `gradio_client`): `generate_<slug>` and `feedback_<slug>` for every task.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from demos.handlers import ARENA_VOTES, ArenaSides, Suite
from demos.settings import SettingsPanel, build_settings_panel
from serving.engine import Engine, GenerationSettings
from tasks import TASKS, Task

PRIVATE = {"api_visibility": "private"}


def build_app(engine: Engine, *, feedback: Any | None = None, arena: ArenaSides = ArenaSides(),
              defaults: GenerationSettings = GenerationSettings(), title: str = "Flywheel",
              concurrency_limit: int = 4, header: str | None = None) -> gr.Blocks:
    """Build the seven-tab app around one engine.

    Example:
        >>> from serving.models import load_model
        >>> app = build_app(Engine(load_model()))   # doctest: +SKIP
        >>> app.queue().launch()                    # doctest: +SKIP
    """
    suite = Suite(engine, feedback=feedback, arena=arena)
    with gr.Blocks(title=title) as app:
        gr.Markdown(header or f"# {title}\nDemos that learn from you: every answer can be flagged, "
                    "rated, voted on or corrected, and that feedback trains the next adapter.")
        settings = build_settings_panel(defaults)
        with gr.Tabs():
            for task in TASKS.values():
                with gr.Tab(task.title, id=task.slug):
                    gr.Markdown(task.description)
                    if task.slug == "arena":
                        _arena_tab(suite, task, settings)
                    else:
                        _task_tab(suite, task, settings)
    app.queue(default_concurrency_limit=concurrency_limit)
    app.flywheel_suite = suite
    return app


def _inputs(task: Task) -> list[gr.Textbox]:
    return [gr.Textbox(label=f.label, lines=f.lines, max_lines=max(f.lines, 20), placeholder=f.placeholder,
                       elem_id=f"{task.slug}-{f.name}") for f in task.fields]


def _task_tab(suite: Suite, task: Task, settings: SettingsPanel) -> None:
    with gr.Row():
        with gr.Column():
            fields = _inputs(task)
            button = gr.Button("Generate", variant="primary", elem_id=f"{task.slug}-generate")
            if task.examples:
                gr.Examples([[ex[name] for name in task.field_names] for ex in task.examples], fields)
        with gr.Column():
            output = gr.Textbox(label="Output", lines=6, interactive=False, elem_id=f"{task.slug}-output")
            outputs: list[gr.components.Component] = [output]
            if task.slug == "detox":
                outputs.append(gr.Number(label="Toxicity score (0 = clean, 1 = toxic)", precision=4))
            with gr.Accordion("Served by (model, adapter, revision, settings)", open=False):
                served_by = gr.JSON(show_label=False)
            outputs.insert(1, served_by)

    def generate(*values: Any):
        yield from suite.generate(task.slug, list(values))

    event = button.click(generate, fields + settings.components(), outputs, api_name=f"generate_{task.slug}")
    if task.rating_weights:
        _ratings_feedback(suite, task, fields, output, served_by)
    else:
        edit = _flag_feedback(suite, task, fields, output, served_by)
        event.success(lambda text: text, output, edit, **PRIVATE)


def _flag_feedback(suite: Suite, task: Task, fields: list[gr.Textbox], output: gr.Textbox,
                   served_by: gr.JSON) -> gr.Textbox:
    with gr.Group():
        gr.Markdown("**Your feedback**: flag the output, or correct it and send the corrected text.")
        flag = gr.Radio(list(task.flags), label="Flag", elem_id=f"{task.slug}-flag")
        edit = gr.Textbox(label="Corrected output (optional)", lines=4, elem_id=f"{task.slug}-edit")
        send = gr.Button("Send feedback", elem_id=f"{task.slug}-send")
        status = gr.Markdown(elem_id=f"{task.slug}-status")

    def feedback(request: gr.Request, *values: Any) -> str:
        *inputs, completion, label, edited, served = values
        session = getattr(request, "session_hash", None)
        if not (completion or "").strip():
            raise gr.Error("Generate an output first, then give feedback on it.")
        edited = (edited or "").strip()
        is_edit = bool(edited) and edited != completion.strip()
        if not label and not is_edit:
            raise gr.Error("Choose a flag or write a corrected output.")
        messages = []
        if label:
            messages.append(suite.record(task.slug, inputs, served, session, kind="flag",
                                         completion=completion, label=label))
        if is_edit:
            messages.append(suite.record(task.slug, inputs, served, session, kind="edit",
                                         completion=completion, edited=edited))
        return " ".join(messages)

    send.click(feedback, [*fields, output, flag, edit, served_by], status, api_name=f"feedback_{task.slug}")
    return edit


def _ratings_feedback(suite: Suite, task: Task, fields: list[gr.Textbox], output: gr.Textbox,
                      served_by: gr.JSON) -> None:
    with gr.Group():
        gr.Markdown("**Rate this output** from 1 (poor) to 5 (excellent).")
        with gr.Row():
            sliders = [gr.Slider(1, 5, value=3, step=1, label=name.capitalize(), elem_id=f"{task.slug}-{name}")
                       for name in task.rating_weights]
        reward = gr.Number(label="Reward (weighted, 0 to 1)", value=task.reward_from_ratings(
            dict.fromkeys(task.rating_weights, 3)), interactive=False)
        send = gr.Button("Send ratings", elem_id=f"{task.slug}-send")
        status = gr.Markdown(elem_id=f"{task.slug}-status")

    def ratings_of(values: tuple[Any, ...]) -> dict[str, int]:
        return {name: int(value) for name, value in zip(task.rating_weights, values, strict=True)}

    def show_reward(*values: Any) -> float:
        return task.reward_from_ratings(ratings_of(values))

    for slider in sliders:
        slider.change(show_reward, sliders, reward, **PRIVATE)

    def feedback(request: gr.Request, *values: Any) -> str:
        n = len(fields)
        inputs, completion = values[:n], values[n]
        served, ratings = values[-1], ratings_of(values[n + 1:-1])
        if not (completion or "").strip():
            raise gr.Error("Generate an output first, then rate it.")
        return suite.record(task.slug, list(inputs), served, getattr(request, "session_hash", None),
                            kind="rating", completion=completion, ratings=ratings,
                            reward=task.reward_from_ratings(ratings))

    send.click(feedback, [*fields, output, *sliders, served_by], status, api_name=f"feedback_{task.slug}")


def _arena_tab(suite: Suite, task: Task, settings: SettingsPanel) -> None:
    fields = _inputs(task)
    button = gr.Button("Generate both", variant="primary", elem_id="arena-generate")
    gr.Examples([[ex[name] for name in task.field_names] for ex in task.examples], fields)
    with gr.Row():
        answer_a = gr.Textbox(label="Answer A", lines=8, interactive=False, elem_id="arena-a")
        answer_b = gr.Textbox(label="Answer B", lines=8, interactive=False, elem_id="arena-b")
    with gr.Accordion("Served by (model, adapter, revision, settings)", open=False):
        served_by = gr.JSON(show_label=False)
    vote = gr.Radio(list(ARENA_VOTES), label="Which answer is better?", elem_id="arena-vote")
    send = gr.Button("Send vote", elem_id="arena-send")
    status = gr.Markdown(elem_id="arena-status")

    def generate(*values: Any):
        yield from suite.generate_arena(list(values))

    button.click(generate, fields + settings.components(), [answer_a, answer_b, served_by],
                 api_name="generate_arena")

    def feedback(request: gr.Request, *values: Any) -> str:
        *inputs, a, b, choice, served = values
        if not (a or "").strip() or not (b or "").strip():
            raise gr.Error("Generate both answers first, then vote.")
        if choice not in ARENA_VOTES:
            raise gr.Error(f"Vote must be one of: {', '.join(ARENA_VOTES)}.")
        chosen, rejected = (b, a) if choice == "B" else (a, b)
        served = served or {}
        side = served.get("B" if choice == "B" else "A") or {}
        return suite.record(task.slug, inputs, side, getattr(request, "session_hash", None),
                            kind="preference", chosen=chosen, rejected=rejected,
                            tie=choice in ("tie", "both bad"), label=choice.replace(" ", "-"))

    send.click(feedback, [*fields, answer_a, answer_b, vote, served_by], status, api_name="feedback_arena")
