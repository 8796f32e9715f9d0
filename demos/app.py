"""The Gradio Blocks suite: one tab per task, shared settings, named API endpoints.

Endpoints (for `gradio_client`): `generate_<slug>` and `feedback_<slug>` for every task.
A feedback call passes back the served-by its output came with (it holds the output's ticket).
The same feedback is also a plain HTTP call, `POST /feedback/<slug>` (`demos.feedback_route`).
"""

from __future__ import annotations

import os
import signal
from typing import Any

import gradio as gr

from demos.endpoints import field_parameters, name_parameters, setting_parameters
from demos.feedback import ARENA_VOTES, feedback_parameters, feedback_summary
from demos.feedback_route import FlywheelBlocks, feedback_route
from demos.handlers import ArenaSides, Suite
from demos.quotas import Access, Quotas, Visitor, visitor_from
from demos.settings import SettingsPanel, build_settings_panel
from hub.arena import HEADER as LEADERBOARD_HEADER
from serving.backends import GenerationBackend
from serving.batching import MAX_BATCH, STREAM_EVERY
from serving.engine import GenerationSettings
from serving.guard import ToxicityGuard
from serving.online import OnlineLearning
from tasks import TASKS, Task

PRIVATE = {"api_visibility": "private"}
FEEDBACK_EVENT = {"concurrency_limit": None, "queue": False}
"""Feedback writes one line: it never waits behind generation (no concurrency limit, its own group),
and the browser sends it as a plain HTTP call outside the queue (gradio_client still joins the queue;
scripts that send much feedback use the HTTP route, `demos.feedback_route`)."""
MAX_FILE_SIZE = "1mb"
"""`launch(max_file_size=...)`: no tab takes files, so Gradio's upload route gets a small cap."""


def stop_on_sigterm() -> None:
    """Make SIGTERM (a Space restart, `docker stop`, `kill`) end `launch()` as Ctrl-C does.

    Python's default for SIGTERM ends the process on the spot, so a `finally` that closes the
    feedback store (pushing the rows it holds) would never run. As a KeyboardInterrupt in the
    main thread it stops Gradio's server and lets that cleanup run; a second SIGTERM is
    ignored so it cannot cut the last push short. Call it from the main thread.
    """
    def interrupt(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def login_problem() -> str | None:
    """Why "Sign in with Hugging Face" cannot work in this process, or None if it can."""
    if os.environ.get("OAUTH_CLIENT_ID"):  # a Space whose README says `hf_oauth: true`
        return None
    if os.environ.get("SYSTEM") == "spaces":
        return "signing in needs `hf_oauth: true` in the Space's README front matter."
    from huggingface_hub import get_token

    if get_token() is None:  # off a Space, Gradio signs everyone in as this machine's account
        return "off a Space, Gradio signs you in as this machine's Hugging Face account: run `hf auth login` first."
    return None


def build_app(engine: GenerationBackend, *, feedback: Any | None = None, arena: ArenaSides = ArenaSides(),
              defaults: GenerationSettings = GenerationSettings(), title: str = "Flywheel",
              concurrency_limit: int = MAX_BATCH, header: str | None = None, access: Access = Access(),
              guard: ToxicityGuard | None = None, online: OnlineLearning | None = None,
              stream_every: float = STREAM_EVERY) -> gr.Blocks:
    """Build the seven-tab app around one generation backend (a local `Engine` or an `OpenAIBackend`).

    `access` sets the quotas, Hugging Face sign-in and the queue length. Every generate
    endpoint shares one concurrency group of `concurrency_limit` (the engine decodes them together).
    `guard` checks every answer before it is final (the detox tab's score uses its scorer);
    `online` (already started) learns from the ratings and flags of its tabs, and gets a status
    panel and the `online_status` endpoint. A streaming answer is sent at most every `stream_every`
    seconds until it is final (0: at every token).

    Example:
        >>> from serving.engine import Engine
        >>> from serving.models import load_model
        >>> app = build_app(Engine(load_model()))              # doctest: +SKIP
        >>> app.launch(max_file_size=MAX_FILE_SIZE)            # doctest: +SKIP
    """
    suite = Suite(engine, feedback=feedback, arena=arena, quotas=Quotas(access.limits),
                  require_login=access.require_login, guard=guard, online=online,
                  toxicity=guard.scorer if guard is not None else None, stream_every=stream_every)
    tabs = _Tabs(suite, access, concurrency_limit)
    with FlywheelBlocks(title=title, routes=[feedback_route(suite, proxy_hops=access.proxy_hops)]) as app:
        gr.Markdown(header or f"# {title}\nDemos that learn from you: every answer can be flagged, "
                    "rated, voted on or corrected, and that feedback trains the next adapter.")
        if access.login or access.require_login:
            gr.LoginButton(elem_id="login")
        settings = build_settings_panel(defaults)
        with gr.Tabs():
            for task in TASKS.values():
                with gr.Tab(task.title, id=task.slug):
                    gr.Markdown(task.description)
                    if task.slug == "arena":
                        tabs.arena(task, settings)
                    else:
                        tabs.task(task, settings)
        if online is not None:
            with gr.Accordion("Online learning: updates, probe scores, rollbacks", open=False):
                panel = gr.JSON(show_label=False, elem_id="online-status")
                refresh = gr.Button("Refresh", size="sm", elem_id="online-refresh")
                refresh.click(online.status, None, panel, api_name="online_status")
                app.load(online.status, None, panel, **PRIVATE)
    app.queue(default_concurrency_limit=concurrency_limit, max_size=access.queue_size)
    app.flywheel_suite = suite
    return app


def _inputs(task: Task) -> list[gr.Textbox]:
    return [gr.Textbox(label=f.label, lines=f.lines, max_lines=max(f.lines, 20), placeholder=f.placeholder,
                       elem_id=f"{task.slug}-{f.name}") for f in task.fields]


class _Tabs:
    """Lays out the tabs and wires their events to the suite, with who is asking."""

    def __init__(self, suite: Suite, access: Access, concurrency_limit: int) -> None:
        self.suite = suite
        self.proxy_hops = access.proxy_hops
        self.generation = {"concurrency_id": "generation", "concurrency_limit": concurrency_limit}

    def visitor(self, request: gr.Request | None, profile: gr.OAuthProfile | None) -> Visitor:
        return visitor_from(request, profile.username if profile else None, proxy_hops=self.proxy_hops)

    def feedback_event(self, task: Task, send: gr.Button, components: list[gr.components.Component],
                       status: gr.Markdown) -> None:
        """Wire `send` to `feedback_<slug>`: `components` in `feedback_parameters(task)` order."""
        names = [parameter.name for parameter in feedback_parameters(task)]

        async def feedback(request: gr.Request, profile: gr.OAuthProfile | None, *values: Any) -> str:
            return await self.suite.desk.give(task, dict(zip(names, values, strict=True)),
                                              self.visitor(request, profile))

        name_parameters(feedback, name=f"feedback_{task.slug}", mcp_tool=False, summary=feedback_summary(task),
                        parameters=feedback_parameters(task))
        send.click(feedback, components, status, api_name=f"feedback_{task.slug}", **FEEDBACK_EVENT)

    def task(self, task: Task, settings: SettingsPanel) -> None:
        suite = self.suite
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
                with gr.Accordion("Served by (model, adapter, revision, settings, ticket)", open=False):
                    served_by = gr.JSON(show_label=False)
                outputs.insert(1, served_by)

        def generate(request: gr.Request, profile: gr.OAuthProfile | None, *values: Any):
            yield from suite.generate(task.slug, list(values), visitor=self.visitor(request, profile))

        name_parameters(generate, name=f"generate_{task.slug}", summary=f"{task.title}: {task.description} Returns "
                        "the output, then its served_by (model, adapter, settings and the signed ticket that "
                        "feedback on this output must pass back).",
                        parameters=field_parameters(task) + setting_parameters())
        event = button.click(generate, fields + settings.components(), outputs, api_name=f"generate_{task.slug}",
                             **self.generation)
        if task.rating_weights:
            self._ratings_feedback(task, fields, output, served_by)
        else:
            edit = self._flag_feedback(task, fields, output, served_by)
            event.success(lambda text: text, output, edit, **PRIVATE)

    def _flag_feedback(self, task: Task, fields: list[gr.Textbox], output: gr.Textbox,
                       served_by: gr.JSON) -> gr.Textbox:
        with gr.Group():
            gr.Markdown("**Your feedback**: flag the output, or correct it and send the corrected text.")
            flag = gr.Radio(list(task.flags), label="Flag", elem_id=f"{task.slug}-flag")
            edit = gr.Textbox(label="Corrected output (optional)", lines=4, elem_id=f"{task.slug}-edit")
            send = gr.Button("Send feedback", elem_id=f"{task.slug}-send")
            status = gr.Markdown(elem_id=f"{task.slug}-status")
        self.feedback_event(task, send, [*fields, output, flag, edit, served_by], status)
        return edit

    def _ratings_feedback(self, task: Task, fields: list[gr.Textbox], output: gr.Textbox,
                          served_by: gr.JSON) -> None:
        with gr.Group():
            gr.Markdown("**Rate this output** from 1 (poor) to 5 (excellent).")
            with gr.Row():
                sliders = [gr.Slider(1, 5, value=3, step=1, label=name.capitalize(),
                                     elem_id=f"{task.slug}-{name}") for name in task.rating_weights]
            reward = gr.Number(label="Reward (weighted, 0 to 1)", value=task.reward_from_ratings(
                dict.fromkeys(task.rating_weights, 3)), interactive=False)
            send = gr.Button("Send ratings", elem_id=f"{task.slug}-send")
            status = gr.Markdown(elem_id=f"{task.slug}-status")

        def show_reward(*values: Any) -> float:
            return task.reward_from_ratings({name: int(value) for name, value in
                                             zip(task.rating_weights, values, strict=True)})

        for slider in sliders:
            slider.change(show_reward, sliders, reward, **PRIVATE)
        self.feedback_event(task, send, [*fields, output, *sliders, served_by], status)

    def arena(self, task: Task, settings: SettingsPanel) -> None:
        fields = _inputs(task)
        button = gr.Button("Generate both", variant="primary", elem_id="arena-generate")
        gr.Examples([[ex[name] for name in task.field_names] for ex in task.examples], fields)
        with gr.Row():
            answer_a = gr.Textbox(label="Answer A", lines=8, interactive=False, elem_id="arena-a")
            answer_b = gr.Textbox(label="Answer B", lines=8, interactive=False, elem_id="arena-b")
        # Blind: the served-by (with the tickets) travels with the answers but is not shown; the vote's
        # confirmation names the models.
        served_by = gr.JSON(visible=False)
        vote = gr.Radio(list(ARENA_VOTES), label="Which answer is better? (which model wrote which is revealed "
                        "after your vote)", elem_id="arena-vote")
        send = gr.Button("Send vote", elem_id="arena-send")
        status = gr.Markdown(elem_id="arena-status")
        with gr.Accordion("Leaderboard: Bradley-Terry ratings from the votes, 95% bootstrap intervals", open=False):
            board = gr.Dataframe(headers=list(LEADERBOARD_HEADER), interactive=False, elem_id="arena-leaderboard")
            refresh = gr.Button("Refresh", size="sm", elem_id="arena-leaderboard-refresh")
        refresh.click(self.suite.arena_leaderboard, None, board, api_name="arena_leaderboard")

        def generate(request: gr.Request, profile: gr.OAuthProfile | None, *values: Any):
            yield from self.suite.generate_arena(list(values), visitor=self.visitor(request, profile))

        name_parameters(generate, name="generate_arena", summary=f"{task.title}: {task.description} Returns "
                        "answer A, answer B, then their served_by (which the vote must pass back).",
                        parameters=field_parameters(task) + setting_parameters())
        button.click(generate, fields + settings.components(), [answer_a, answer_b, served_by],
                     api_name="generate_arena", **self.generation)

        self.feedback_event(task, send, [*fields, answer_a, answer_b, vote, served_by], status)
