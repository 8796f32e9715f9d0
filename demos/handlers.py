"""What the tabs do when clicked: validate, generate (streaming), and hand feedback to the desk.

Everything a person can get wrong becomes a `gr.Error` with one clear sentence; the server
keeps serving whatever happens inside generation.

Every finished output's served-by carries a signed ticket (`hub.feedback.tickets`), so that
feedback (`demos.feedback.FeedbackDesk`) can only judge real outputs. Quotas (`demos.quotas`)
bound how often one person or one IP address may generate or send feedback.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Iterator
from contextlib import closing, nullcontext
from dataclasses import asdict, dataclass
from typing import Any

from demos.feedback import FeedbackDesk
from demos.quotas import Quotas, Visitor
from demos.refusals import refusal, user_message
from demos.settings import settings_from_values
from hub.arena import leaderboard, load_matches, table_rows
from hub.errors import FlywheelError
from hub.feedback.records import MODEL_KEYS
from hub.feedback.tickets import TICKET_TTL, secret_key, sign_ticket
from serving.backends import GenerationBackend
from serving.batching import STREAM_EVERY
from serving.engine import BASE_LABEL, GenerationSettings
from serving.guard import Rejection, ToxicityGuard, guarded, negative_example
from serving.online import OnlineLearning
from tasks import InvalidInput, Task, get_task

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ArenaSides:
    """The arena's two candidates: each an adapter key, or None for the base model.

    The arena is blind: each request draws which candidate answers as A, and the vote's
    confirmation is the first place that names them. When both are the same model, the second
    samples with `b_temperature` so they differ (and there is nothing to hide).
    """

    a: str | None = None
    b: str | None = "arena"
    b_temperature: float = 1.2


class Suite:
    """The app's behaviour, independent of layout: one engine, one optional feedback sink.

    Args:
        quotas: per-person and per-IP limits (None: unlimited).
        require_login: refuse feedback from people not signed in with Hugging Face.
        key: the ticket-signing key (default `hub.feedback.tickets.secret_key()`).
        stream_every: seconds at least between two partial updates of one answer (0: every token).
        ticket_ttl: seconds an output stays open to feedback.
        guard: scores every answer before it is final (`serving.guard`); None serves them unchecked.
        online: the tabs that learn from their ratings and flags while serving (`serving.online`).
    """

    def __init__(self, engine: GenerationBackend, *, feedback: Any | None = None,
                 arena: ArenaSides = ArenaSides(), toxicity: Any | None = None, quotas: Quotas | None = None,
                 require_login: bool = False, key: bytes | None = None, ticket_ttl: float = TICKET_TTL,
                 guard: ToxicityGuard | None = None, online: OnlineLearning | None = None,
                 stream_every: float = STREAM_EVERY) -> None:
        self.engine = engine
        self.stream_every = stream_every
        self._coin = random.SystemRandom()
        self.guard = guard
        self.online = online
        self.feedback = feedback
        self.arena = arena
        self.quotas = quotas
        self.ticket_ttl = ticket_ttl
        self._key = secret_key() if key is None else key
        self._toxicity = toxicity
        self.desk = FeedbackDesk(feedback=feedback, key=self._key, require_login=require_login,
                                 admit=lambda visitor: self._admit("feedback", visitor),
                                 on_record=online.observe if online is not None else None)

    # Generation -------------------------------------------------------------------------------
    def generate(self, slug: str, values: list[Any], *,
                 visitor: Visitor | None = None) -> Iterator[tuple[Any, ...]]:
        """Stream (text, served-by[, toxicity]) for a single-output tab; the last served-by has the ticket."""
        task = get_task(slug)
        self._admit("generation", visitor)
        as_sent, inputs, settings = self._parse(task, values)
        online = self.online.adapter_key(slug) if self.online is not None else None
        adapter = online or (slug if slug in self.engine.adapters() else None)
        try:
            # closing(): a client that goes away closes this generator, which stops the engine at once.
            with closing(self._serve(task, inputs, settings, adapter, as_sent=as_sent)) as steps:
                for text, served_by, final in steps:
                    yield self._outputs(task, text, served_by, final=final)
        except Exception as error:  # noqa: BLE001 - reported to the person, server keeps going
            logger.exception("Generation failed for %s", slug)
            raise refusal(user_message(error)) from None

    def generate_arena(self, values: list[Any], *,
                       visitor: Visitor | None = None) -> Iterator[tuple[str, str, dict[str, Any]]]:
        """Stream both arena answers, A first then B; each side's served-by gets its ticket when done.

        Blind through the API too: a side's served-by holds only its sealed ticket (model, adapter,
        revision and settings encrypted, `hub.feedback.tickets`), which `record_vote` opens to reveal them.
        """
        task = get_task("arena")
        self._admit("generation", visitor)
        as_sent, inputs, settings = self._parse(task, values)
        adapters = self.engine.adapters()
        a_key = self.arena.a if self.arena.a in adapters else None
        b_key = self.arena.b if self.arena.b in adapters else None
        b_settings = settings
        if a_key == b_key:
            seed = None if settings.seed is None else (settings.seed + 1) % (2**63)
            b_settings = GenerationSettings(**{**asdict(settings), "temperature": self.arena.b_temperature,
                                               "seed": seed})
        candidates = [(a_key, settings), (b_key, b_settings)]
        if a_key != b_key and self._coin.random() < 0.5:  # blind: no side belongs to a model
            candidates.reverse()
        served = {side: self._served_by(key, chosen) for side, (key, chosen) in zip("AB", candidates, strict=True)}
        answers = {"A": "", "B": ""}
        try:
            for side, (key, side_settings) in zip("AB", candidates, strict=True):
                with closing(self._serve(task, inputs, side_settings, key, as_sent=as_sent, sealed=True)) as steps:
                    for answers[side], served[side], _ in steps:
                        yield answers["A"], answers["B"], _blind(served)
        except Exception as error:  # noqa: BLE001
            logger.exception("Arena generation failed")
            raise refusal(user_message(error)) from None
        yield answers["A"], answers["B"], _blind(served)

    def _serve(self, task: Task, inputs: dict[str, str], settings: GenerationSettings, adapter: str | None, *,
               as_sent: dict[str, Any], sealed: bool = False) -> Iterator[tuple[str, dict[str, Any], bool]]:
        """Stream (text, served-by, final) of one answer through the guard; the final served-by has the
        ticket, unless the guard withheld every attempt (then the text is its message, with no ticket).

        The ticket signs the inputs `as_sent` by the client, not as validated: feedback sends them back
        the same way, and the store validates them once, with the record."""
        attempts: list[dict[str, Any]] = []

        def generate(attempt: GenerationSettings) -> Iterator[str]:
            attempts.append(self._served_by(adapter, attempt))
            return self.engine.stream(task, inputs, attempt, adapter=adapter, on_start=self._pin(attempts[-1]))

        def rejected(rejection: Rejection) -> None:
            self._record_guarded(task, inputs, rejection, attempts[-1])

        shown = -math.inf
        with self.online.generating() if self.online is not None else nullcontext():
            for step in guarded(generate, settings, guard=self.guard, on_reject=rejected):
                if not step.final and time.monotonic() - shown < self.stream_every:
                    continue  # the next update carries this text too
                shown = time.monotonic()
                served_by = attempts[-1]
                if step.withheld:
                    served_by["withheld"] = "toxicity"
                elif step.final:
                    self._sign(task, as_sent, step.text, served_by, sealed=sealed)
                yield step.text, served_by, step.final

    def _record_guarded(self, task: Task, inputs: dict[str, str], rejection: Rejection,
                        served_by: dict[str, Any]) -> None:
        """Keep a refused answer as a negative detox example; a failure to store it never fails the request."""
        if self.feedback is None:
            return
        try:
            record = self.feedback.log(**negative_example(task, inputs, rejection),
                                       model={key: served_by[key] for key in MODEL_KEYS})
        except (InvalidInput, FlywheelError) as error:
            logger.warning("The guard's negative example was not stored: %s", error)
            return
        if self.online is not None:
            self.online.observe(record)

    def _parse(self, task: Task, values: list[Any]) -> tuple[dict[str, Any], dict[str, str], GenerationSettings]:
        """(inputs as sent, inputs validated, settings) of a generate call."""
        n = len(task.fields)
        as_sent = dict(zip(task.field_names, values[:n], strict=True))
        try:
            inputs = task.validate(as_sent)
            settings = settings_from_values(*values[n:n + 6])
        except InvalidInput as error:
            raise refusal(str(error)) from None
        return as_sent, inputs, settings

    def _pin(self, served_by: dict[str, Any]) -> Any:
        """Make `served_by` name the adapter revision the request actually holds (hot swaps race)."""
        def update(info: Any) -> None:
            served_by.update(self._provenance(info))
        return update

    def _served_by(self, adapter: str | None, settings: GenerationSettings) -> dict[str, Any]:
        info = self.engine.adapters().get(adapter) if adapter else None
        return {"base": self.engine.base_id, **self._provenance(info), "generation": asdict(settings)}

    def _provenance(self, info: Any) -> dict[str, Any]:
        """The adapter, revision and backend (e.g. the server and its LoRA name) that answer."""
        return {"adapter": info.ref if info else None, "revision": info.revision if info else None,
                "label": self._label(info), "backend": self.engine.describe(info)}

    def _label(self, info: Any) -> str:
        """"online, update N" for a tab's online adapter, else the adapter's ref@revision, else the base model."""
        online = self.online.label(info) if self.online is not None else None
        return online or (info.label if info else BASE_LABEL)

    def _sign(self, task: Task, inputs: dict[str, str], text: str, served_by: dict[str, Any], *,
              sealed: bool = False) -> None:
        served_by["ticket"] = sign_ticket(key=self._key, task=task.slug, inputs=inputs, completion=text,
                                          model={key: served_by[key] for key in MODEL_KEYS},
                                          generation=served_by["generation"], ttl=self.ticket_ttl, sealed=sealed)

    def _outputs(self, task: Task, text: str, served_by: dict[str, Any], *, final: bool) -> tuple[Any, ...]:
        if task.slug != "detox":
            return text, served_by
        score = self.toxicity_of(text) if final and text.strip() and "withheld" not in served_by else None
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

    def _admit(self, action: str, visitor: Visitor | None) -> None:
        if self.quotas is not None and visitor is not None:
            try:
                self.quotas.check(action, visitor)
            except InvalidInput as error:  # the only one `check` raises is `QuotaExceeded`
                raise refusal(str(error), status=429) from None

    def arena_leaderboard(self) -> list[list[str]]:
        """The arena's Bradley-Terry leaderboard from the votes this app stored (`hub.arena`), as table rows."""
        folder = getattr(self.feedback, "folder", None)
        if folder is None:
            return []
        matches, _, _ = load_matches(str(folder))
        return table_rows(leaderboard(matches)) if matches else []


def _blind(served: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """What the arena shows of each side before the vote: its sealed ticket once done, or that it was withheld."""
    return {side: {key: value for key, value in facts.items() if key in ("ticket", "withheld")}
            for side, facts in served.items()}
