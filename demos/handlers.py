"""What the tabs do when clicked: validate, generate (streaming), record feedback.

Everything a person can get wrong becomes a `gr.Error` with one clear sentence; the server
keeps serving whatever happens inside generation.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import gradio as gr

from demos.settings import settings_from_values
from hub.errors import FlywheelError
from serving.engine import BASE_LABEL, Engine, GenerationSettings
from tasks import InvalidInput, Task, get_task

logger = logging.getLogger(__name__)

ARENA_VOTES = ("A", "B", "tie", "both bad")


@dataclass(frozen=True)
class ArenaSides:
    """Which model answers on each side of the arena: an adapter key, or None for the base model.

    When both sides use the same model, side B samples with `b_temperature` so they differ.
    """

    a: str | None = None
    b: str | None = "arena"
    b_temperature: float = 1.2


def user_message(error: BaseException) -> str:
    return str(error) if isinstance(error, (InvalidInput, FlywheelError)) else f"Something went wrong: {error}"


class Suite:
    """The app's behaviour, independent of layout: one engine, one optional feedback sink."""

    def __init__(self, engine: Engine, *, feedback: Any | None = None,
                 arena: ArenaSides = ArenaSides(), toxicity: Any | None = None) -> None:
        self.engine = engine
        self.feedback = feedback
        self.arena = arena
        self._toxicity = toxicity

    # Generation -------------------------------------------------------------------------------
    def generate(self, slug: str, values: list[Any]) -> Iterator[tuple[Any, ...]]:
        """Stream (text, served-by[, toxicity]) for a single-output tab."""
        task = get_task(slug)
        inputs, settings = self._parse(task, values)
        adapter = slug if slug in self.engine.adapters() else None
        served_by = self._served_by(adapter, settings)
        text = ""
        try:
            for text in self.engine.stream(task, inputs, settings, adapter=adapter,
                                           on_start=self._pin(served_by)):
                yield self._outputs(task, text, served_by, final=False)
        except Exception as error:  # noqa: BLE001 - reported to the person, server keeps going
            logger.exception("Generation failed for %s", slug)
            raise gr.Error(user_message(error)) from None
        yield self._outputs(task, text, served_by, final=True)

    def generate_arena(self, values: list[Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
        """Stream both arena answers, A first then B."""
        task = get_task("arena")
        inputs, settings = self._parse(task, values)
        adapters = self.engine.adapters()
        a_key = self.arena.a if self.arena.a in adapters else None
        b_key = self.arena.b if self.arena.b in adapters else None
        b_settings = settings
        if a_key == b_key:
            seed = None if settings.seed is None else settings.seed + 1
            b_settings = GenerationSettings(**{**asdict(settings), "temperature": self.arena.b_temperature,
                                               "seed": seed})
        served = {"A": self._served_by(a_key, settings), "B": self._served_by(b_key, b_settings)}
        answer_a = answer_b = ""
        try:
            for answer_a in self.engine.stream(task, inputs, settings, adapter=a_key,
                                               on_start=self._pin(served["A"])):
                yield answer_a, answer_b, served
            for answer_b in self.engine.stream(task, inputs, b_settings, adapter=b_key,
                                               on_start=self._pin(served["B"])):
                yield answer_a, answer_b, served
        except Exception as error:  # noqa: BLE001
            logger.exception("Arena generation failed")
            raise gr.Error(user_message(error)) from None

    def _parse(self, task: Task, values: list[Any]) -> tuple[dict[str, str], GenerationSettings]:
        n = len(task.fields)
        try:
            inputs = task.validate(dict(zip(task.field_names, values[:n], strict=True)))
            settings = settings_from_values(*values[n:n + 6])
        except InvalidInput as error:
            raise gr.Error(str(error)) from None
        return inputs, settings

    @staticmethod
    def _pin(served_by: dict[str, Any]) -> Any:
        """Make `served_by` name the adapter revision the request actually holds (hot swaps race)."""
        def update(info: Any) -> None:
            served_by.update(adapter=info.ref if info else None, revision=info.revision if info else None,
                             label=info.label if info else BASE_LABEL)
        return update

    def _served_by(self, adapter: str | None, settings: GenerationSettings) -> dict[str, Any]:
        info = self.engine.adapters().get(adapter) if adapter else None
        return {
            "base": self.engine.loaded.base_id,
            "adapter": info.ref if info else None,
            "revision": info.revision if info else None,
            "label": info.label if info else BASE_LABEL,
            "generation": asdict(settings),
        }

    def _outputs(self, task: Task, text: str, served_by: dict[str, Any], *, final: bool) -> tuple[Any, ...]:
        if task.slug != "detox":
            return text, served_by
        score = self.toxicity_of(text) if final and text.strip() else None
        return text, served_by, score

    def toxicity_of(self, text: str) -> float | None:
        """The automatic toxicity score shown with each detox output."""
        try:
            if self._toxicity is None:
                from tasks.toxicity import make_toxicity_scorer

                self._toxicity = make_toxicity_scorer("auto")
            return round(float(self._toxicity([text])[0]), 4)
        except Exception:  # noqa: BLE001 - a missing scorer must not break generation
            logger.exception("Toxicity scoring failed")
            return None

    # Feedback ---------------------------------------------------------------------------------
    def record(self, slug: str, values: list[Any], served_by: dict[str, Any] | None,
               session: str | None, *, kind: str, **fields: Any) -> str:
        """Validate and store one feedback record; return the confirmation shown to the person."""
        if self.feedback is None:
            raise gr.Error("Feedback is switched off for this app.")
        task = get_task(slug)
        try:
            inputs = task.validate(dict(zip(task.field_names, values, strict=True)))
            served_by = served_by or {}
            record = self.feedback.log(
                task=slug, kind=kind, inputs=inputs, prompt=task.messages(inputs),
                model={"base": served_by.get("base", self.engine.loaded.base_id),
                       "adapter": served_by.get("adapter"), "revision": served_by.get("revision")},
                generation=served_by.get("generation"), session=self.feedback.session_id(session),
                **fields,
            )
        except (InvalidInput, FlywheelError) as error:
            raise gr.Error(str(error)) from None
        return f"Thanks! Saved your {kind} (record {record['id'][:8]})."
