"""Flywheel as a Hugging Face Space: the seven-tab suite, adapters from repos, hot reload.

The Space runs this file as `app.py` at its repo root, beside the `tasks/`, `hub/` and `demos/`
packages that `python -m hub space deploy` uploads. It is configured by Space variables
(`FLYWHEEL_MODEL`, `FLYWHEEL_ADAPTERS`, `FLYWHEEL_FEEDBACK_REPO`, `FLYWHEEL_POLL_SECONDS`, ...;
see `hub.space`) and the `HF_TOKEN` and `FLYWHEEL_SECRET` secrets (the latter signs every
output, so feedback can only judge outputs this Space served).

One base model is loaded once; each task's LoRA adapter is loaded from its repo into the
same PEFT model and chosen per request. Feedback is kept under `FLYWHEEL_HOME` (on a Space
with persistent storage, `/data/flywheel`; see `hub.paths.choose_home`) and pushed to
`FLYWHEEL_FEEDBACK_REPO`, also on SIGTERM; the status panel shows the sync's health and warns
when the Space has no persistent storage. A background `AdapterWatcher` polls the repos and
swaps in new revisions without a restart; every answer's "Served by" names the adapter
and revision that produced it. With `FLYWHEEL_BACKEND=openai=URL` the base model and the
adapters (as LoRAs) live on an OpenAI-compatible server instead (`serving.openai_backend`).

Run it locally (any folder or Hub id works as an adapter reference):

    FLYWHEEL_ADAPTERS=tweet=me/flywheel-tweet-sft FLYWHEEL_POLL_SECONDS=30 python spaces/app.py

Or in-process:

    >>> from hub.space import SpaceConfig
    >>> space = create_app(SpaceConfig(adapters={"tweet": "me/flywheel-tweet-sft"}))  # doctest: +SKIP
    >>> space.launch(prevent_thread_lock=True)                                       # doctest: +SKIP
    >>> space.close()                                                                # doctest: +SKIP
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if importlib.util.find_spec("demos") is None:  # a checkout that was not `pip install -e .`-ed
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import gradio as gr  # noqa: E402

from demos.app import MAX_FILE_SIZE, build_app, login_problem, stop_on_sigterm  # noqa: E402
from demos.handlers import ArenaSides  # noqa: E402
from demos.quotas import Access, Limits  # noqa: E402
from hub.errors import FlywheelError  # noqa: E402
from hub.feedback.callback import FeedbackCallback  # noqa: E402
from hub.paths import choose_home  # noqa: E402
from hub.space import SpaceConfig  # noqa: E402
from serving import compute_threads, startup_heap  # noqa: E402
from serving.backends import GenerationBackend, open_backend  # noqa: E402
from serving.batching import MAX_BATCH  # noqa: E402
from serving.guard import GuardConfig, ToxicityGuard  # noqa: E402
from serving.online import OnlineLearning, parse_online_tasks, start_online  # noqa: E402
from serving.watcher import AdapterWatcher  # noqa: E402
from tasks import InvalidInput  # noqa: E402

logger = logging.getLogger("flywheel.space")

HEADER = """# Flywheel
Demos that learn from you: flag, rate, vote on or correct any answer, and that feedback trains
the next adapter. New adapter revisions are picked up while the app runs; each answer's
**Served by** shows the adapter and revision that produced it."""


@dataclass
class SpaceApp:
    """The running pieces: Gradio app, engine, adapter watcher, feedback store, online learners."""

    blocks: gr.Blocks
    engine: GenerationBackend
    watcher: AdapterWatcher | None
    feedback: FeedbackCallback
    config: SpaceConfig
    online: OnlineLearning | None = None

    def launch(self, **kwargs: Any) -> Any:
        """Start polling for adapters, then `gr.Blocks.launch(**kwargs)` (host/port from GRADIO_* env)."""
        if self.watcher is not None and self.config.poll_seconds:
            self.watcher.start()
        kwargs.setdefault("show_error", True)
        kwargs.setdefault("max_file_size", MAX_FILE_SIZE)
        return self.blocks.launch(**kwargs)

    def close(self) -> None:
        """Stop polling, push pending feedback, stop the server, checkpoint the online adapters."""
        if self.watcher is not None:
            self.watcher.stop()
        self.blocks.close()
        if self.online is not None:
            self.online.stop()
        self.feedback.close()


def create_app(config: SpaceConfig | None = None, *, concurrency_limit: int = MAX_BATCH) -> SpaceApp:
    """Load the base model and current adapters, and build the suite (the watcher starts at launch).

    Adapters that cannot be loaded now (repo missing, Hub down or hanging, broken files) are
    logged and their tab serves the base model until a valid revision appears; every Hub call
    is bounded by `config.hub_limits`, so a hanging Hub cannot stop the app from starting.
    """
    config = config or SpaceConfig.from_env()
    access = space_access(config)
    guard_config = _variable(GuardConfig.parse, config.guard, "FLYWHEEL_GUARD")
    _variable(parse_online_tasks, config.online, "FLYWHEEL_ONLINE")  # before the model loads
    compute_threads.reserve()  # before the model loads: see serving.compute_threads
    engine = space_backend(config)
    watcher = None
    if config.adapters:
        # With FLYWHEEL_POLL_SECONDS=0 this one check loads the adapters and `launch` starts no thread.
        watcher = AdapterWatcher(engine, config.adapters, interval=config.poll_seconds or 3600.0,
                                 limits=config.hub_limits)
        for key, outcome in watcher.check_now().items():
            logger.info("Adapter %s: %s", key, outcome)
    guard = guard_config.build() if guard_config is not None else None
    online = _variable(lambda tasks: start_online(engine, tasks, toxicity=guard.scorer if guard else None),
                       config.online, "FLYWHEEL_ONLINE")
    feedback = FeedbackCallback(repo_id=config.feedback_repo, every=config.feedback_minutes)
    feedback.setup()  # starts the Hub sync now, so rows a previous run left unpushed go up at once
    a, b = config.arena
    blocks = build_app(engine, feedback=feedback, arena=ArenaSides(a=a, b=b), header=HEADER,
                       concurrency_limit=concurrency_limit, title="Flywheel", access=access, guard=guard,
                       online=online)
    _add_status_panel(blocks, engine, watcher, config, feedback, guard=guard, online=online)
    return SpaceApp(blocks=blocks, engine=engine, watcher=watcher, feedback=feedback, config=config, online=online)


def _variable(parse: Any, value: str, name: str) -> Any:
    """`parse(value)`, its `InvalidInput` reported as a `FlywheelError` naming the Space variable."""
    try:
        return parse(value)
    except InvalidInput as error:
        raise FlywheelError(f"{name}: {error}") from None


def space_backend(config: SpaceConfig) -> GenerationBackend:
    """The base model loaded here, or with `FLYWHEEL_BACKEND=openai=URL` a connection to the server holding it."""
    try:
        return open_backend(config.backend, model=config.model, lora_source=config.lora_source)
    except InvalidInput as error:
        raise FlywheelError(f"FLYWHEEL_BACKEND / FLYWHEEL_LORA_SOURCE: {error}") from None


def space_access(config: SpaceConfig) -> Access:
    """Quotas, sign-in, proxies and queue length from the Space variables.

    "Sign in with Hugging Face" shows whenever the Space has OAuth (`hf_oauth: true` in its
    README); `FLYWHEEL_REQUIRE_LOGIN` then makes it necessary for feedback.
    """
    try:
        limits = Limits.parse(config.limits)
    except InvalidInput as error:
        raise FlywheelError(f"FLYWHEEL_LIMITS: {error}") from None
    problem = login_problem() if config.require_login else None
    if problem:
        raise FlywheelError(f"FLYWHEEL_REQUIRE_LOGIN: {problem}")
    on_space = bool(os.environ.get("SPACE_ID"))
    return Access(limits=limits, login=bool(os.environ.get("OAUTH_CLIENT_ID")), require_login=config.require_login,
                  proxy_hops=config.proxy_hops if config.proxy_hops is not None else int(on_space),
                  queue_size=config.queue_size if config.queue_size is not None else Access.queue_size)


def _add_status_panel(blocks: gr.Blocks, engine: GenerationBackend, watcher: AdapterWatcher | None,
                      config: SpaceConfig, feedback: FeedbackCallback, *, guard: ToxicityGuard | None = None,
                      online: OnlineLearning | None = None) -> None:
    """An accordion showing what each adapter key serves, the feedback sync's health (last push,
    rows waiting, last error), the guard and the online adapters (updates, probe scores, rollbacks);
    also the `/adapters` API endpoint. It opens with a warning when feedback would not survive a
    restart (no persistent storage)."""
    storage_warning = choose_home().warning

    def status() -> dict[str, Any]:
        served = {key: info.label for key, info in engine.adapters().items()}
        return {"base": engine.base_id, "backend": engine.describe(None), "serving": served,
                "watching": watcher.status() if watcher is not None else {},
                "poll_seconds": config.poll_seconds, "feedback": feedback.health(),
                "guard": guard.describe() if guard is not None else None,
                "online": online.status() if online is not None else {}, "storage_warning": storage_warning}

    with blocks, gr.Accordion("Status: adapters and feedback sync", open=storage_warning is not None):
        if storage_warning is not None:
            gr.Markdown(f"**Warning:** {storage_warning}", elem_id="storage-warning")
        panel = gr.JSON(label="Adapters", elem_id="adapters-status")
        refresh = gr.Button("Refresh", size="sm", elem_id="adapters-refresh")
        refresh.click(status, None, panel, api_name="adapters")
        blocks.load(status, None, panel, api_visibility="private")
        if watcher is not None and config.poll_seconds:
            gr.Timer(max(config.poll_seconds, 5.0)).tick(status, None, panel, api_visibility="private")


def main() -> int:
    """Entry point of `python app.py` on a Space and `python spaces/app.py` here."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        space = create_app()
    except FlywheelError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    stop_on_sigterm()
    startup_heap.freeze()  # the model and the app live as long as the process: see serving.startup_heap
    try:
        space.launch()
    finally:
        space.close()  # on SIGTERM too: the last feedback push
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
