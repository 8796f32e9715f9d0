"""Flywheel as a Hugging Face Space: the seven-tab suite, adapters from repos, hot reload.

The Space runs this file as `app.py` at its repo root, beside the `tasks/`, `hub/` and `demos/`
packages that `python -m hub space deploy` uploads. It is configured by Space variables
(`FLYWHEEL_MODEL`, `FLYWHEEL_ADAPTERS`, `FLYWHEEL_FEEDBACK_REPO`, `FLYWHEEL_POLL_SECONDS`, ...;
see `hub.space`) and the `HF_TOKEN` secret.

One base model is loaded once; each task's LoRA adapter is loaded from its repo into the
same PEFT model and chosen per request. A background `AdapterWatcher` polls the repos and
swaps in new revisions without a restart; every answer's "Served by" names the adapter
and revision that produced it.

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
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if importlib.util.find_spec("demos") is None:  # a checkout that was not `pip install -e .`-ed
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import gradio as gr  # noqa: E402

from demos.app import build_app  # noqa: E402
from demos.handlers import ArenaSides  # noqa: E402
from hub.errors import FlywheelError  # noqa: E402
from hub.feedback.callback import FeedbackCallback  # noqa: E402
from hub.space import SpaceConfig  # noqa: E402
from serving.engine import Engine  # noqa: E402
from serving.models import load_model  # noqa: E402
from serving.watcher import AdapterWatcher  # noqa: E402

logger = logging.getLogger("flywheel.space")

HEADER = """# Flywheel
Demos that learn from you: flag, rate, vote on or correct any answer, and that feedback trains
the next adapter. New adapter revisions are picked up while the app runs; each answer's
**Served by** shows the adapter and revision that produced it."""


@dataclass
class SpaceApp:
    """The running pieces: Gradio app, engine, adapter watcher, feedback store."""

    blocks: gr.Blocks
    engine: Engine
    watcher: AdapterWatcher | None
    feedback: FeedbackCallback
    config: SpaceConfig

    def launch(self, **kwargs: Any) -> Any:
        """Start polling for adapters, then `gr.Blocks.launch(**kwargs)` (host/port from GRADIO_* env)."""
        if self.watcher is not None and self.config.poll_seconds:
            self.watcher.start()
        kwargs.setdefault("show_error", True)
        return self.blocks.launch(**kwargs)

    def close(self) -> None:
        """Stop polling, push pending feedback, stop the server."""
        if self.watcher is not None:
            self.watcher.stop()
        self.blocks.close()
        self.feedback.close()


def create_app(config: SpaceConfig | None = None, *, concurrency_limit: int = 4) -> SpaceApp:
    """Load the base model and current adapters, and build the suite (the watcher starts at launch).

    Adapters that cannot be loaded now (repo missing, Hub down, broken files) are logged and
    their tab serves the base model until a valid revision appears.
    """
    config = config or SpaceConfig.from_env()
    engine = Engine(load_model(config.model))
    watcher = None
    if config.adapters:
        # With FLYWHEEL_POLL_SECONDS=0 this one check loads the adapters and `launch` starts no thread.
        watcher = AdapterWatcher(engine, config.adapters, interval=config.poll_seconds or 3600.0)
        for key, outcome in watcher.check_now().items():
            logger.info("Adapter %s: %s", key, outcome)
    feedback = FeedbackCallback(repo_id=config.feedback_repo, every=config.feedback_minutes)
    a, b = config.arena
    blocks = build_app(engine, feedback=feedback, arena=ArenaSides(a=a, b=b), header=HEADER,
                       concurrency_limit=concurrency_limit, title="Flywheel")
    _add_status_panel(blocks, engine, watcher, config)
    return SpaceApp(blocks=blocks, engine=engine, watcher=watcher, feedback=feedback, config=config)


def _add_status_panel(blocks: gr.Blocks, engine: Engine, watcher: AdapterWatcher | None,
                      config: SpaceConfig) -> None:
    """An accordion showing what each adapter key serves; also the `/adapters` API endpoint."""

    def status() -> dict[str, Any]:
        served = {key: info.label for key, info in engine.adapters().items()}
        return {"base": engine.loaded.base_id, "serving": served,
                "watching": watcher.status() if watcher is not None else {},
                "poll_seconds": config.poll_seconds}

    with blocks, gr.Accordion("Adapters being served", open=False):
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
    space.launch()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
