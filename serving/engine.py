"""One base model in memory serving every tab: messages + settings -> a stream of text.

Per-task LoRA adapters are loaded once into the same PEFT model. Concurrent requests are decoded
together, each with its own settings and adapter (`serving.batching`).
A newer revision of an adapter is loaded beside the old one and swapped in atomically;
the old one is unloaded once no request still uses it. An adapter is checked from its files
first (`serving.adapters`) and must give a short finite test answer; a refused one leaves the
base model and every loaded adapter exactly as they were (`serving.injection`).
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

from hub.errors import FlywheelError
from hub.repos import DEFAULT_LIMITS, HubLimits, resolve_adapter
from serving.adapters import validate_adapter
from serving.batching import MAX_BATCH, Batcher, ModelLock, Request
from serving.injection import add_adapter, remove_adapter
from serving.models import LoadedModel
from serving.slots import AdapterSlots, ServedAdapter
from tasks import TASKS, Task
from tasks.generation import check_generation_settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerationSettings:
    """Sampling settings shared by every tab."""

    temperature: float = 0.7
    """0 means greedy decoding."""
    top_k: int = 50
    """Sample among the k most likely tokens (0 disables)."""
    top_p: float = 0.9
    """Nucleus sampling mass."""
    repetition_penalty: float = 1.1
    """>1 discourages repeating tokens already generated."""
    max_new_tokens: int = 96
    """Longest answer, in tokens."""
    seed: int | None = None
    """Fixes sampling for reproducible answers; None draws a fresh one."""

    def validated(self) -> GenerationSettings:
        """Self, or `InvalidInput` naming the first setting outside `tasks.generation.GENERATION_LIMITS`."""
        check_generation_settings(asdict(self))
        return self

    def generate_kwargs(self) -> dict[str, Any]:
        if self.temperature == 0:
            return {"do_sample": False, "max_new_tokens": self.max_new_tokens,
                    "repetition_penalty": self.repetition_penalty}
        return {"do_sample": True, "temperature": self.temperature, "top_k": self.top_k,
                "top_p": self.top_p, "repetition_penalty": self.repetition_penalty,
                "max_new_tokens": self.max_new_tokens}


@dataclass
class AdapterInfo(ServedAdapter):
    """A LoRA adapter loaded into the engine."""

    peft_name: str = ""
    """Unique name inside the PEFT model (one per loaded revision)."""


BASE_LABEL = "base model"
TEST_ANSWER_TOKENS = 4
"""Length of the greedy answer a new adapter must give (with finite scores) before it serves."""


class Engine:
    """Serves generation for all tabs from one base model and any number of adapters.

    Example:
        >>> from serving.models import load_model
        >>> from tasks import get_task
        >>> engine = Engine(load_model())                          # doctest: +SKIP
        >>> task = get_task("tweet")
        >>> for text in engine.stream(task, {"prompt": "Advice for founders"},
        ...                           GenerationSettings(max_new_tokens=20)):  # doctest: +SKIP
        ...     pass
    """

    def __init__(self, loaded: LoadedModel, *, max_batch: int = MAX_BATCH) -> None:
        self.loaded = loaded
        self._model = loaded.model
        self._slots: AdapterSlots[AdapterInfo] = AdapterSlots()
        self._names = itertools.count(1)
        # Held by the decode loop one step at a time; `with` it to change the model between two steps.
        self._generate_lock = ModelLock()
        self._batcher = Batcher(lambda: self._model, lock=self._generate_lock, max_batch=max_batch)
        self._load_lock = threading.Lock()
        self._shared: dict[str, list[int]] = {}

    @property
    def max_batch(self) -> int:
        """How many requests are decoded together at most; more wait for a free row."""
        return self._batcher.max_batch

    @property
    def waiting(self) -> int:
        """Requests waiting for a free row in the batch."""
        return self._batcher.waiting

    @property
    def tokenizer(self) -> Any:
        return self.loaded.tokenizer

    @property
    def model(self) -> Any:
        return self._model

    @property
    def base_id(self) -> str:
        return self.loaded.base_id

    def describe(self, adapter: AdapterInfo | None) -> str:
        """Where answers are generated, for the served-by box."""
        return "local"

    def adapters(self) -> dict[str, AdapterInfo]:
        return self._slots.serving()

    def load_adapter(self, key: str, ref: str, *, revision: str | None = None,
                     limits: HubLimits = DEFAULT_LIMITS) -> AdapterInfo:
        """Load (or reload at a newer revision) the adapter served under `key`.

        Nothing in the model changes until the files pass `validate_adapter` (config, targets, rank,
        shapes, finite values). The adapter is then loaded under a new PEFT name and must give a short
        greedy test answer with finite scores before any request sees it; the swap is atomic and
        requests that already started keep the old adapter. On any failure the new name is removed
        again and the base model and every loaded adapter are exactly as they were.

        Raises:
            FlywheelError: the adapter cannot be fetched or was refused (the old one keeps serving).
        """
        path, resolved_revision = resolve_adapter(ref, revision=revision, limits=limits)
        current = self.adapters().get(key)
        if current is not None and current.revision == resolved_revision:
            return current
        info = AdapterInfo(key=key, ref=ref, revision=resolved_revision,
                           peft_name=f"{_safe(key)}_{next(self._names)}")
        with self._load_lock, self._generate_lock:
            validate_adapter(path, base_id=self.loaded.base_id, model=self._model)
            try:
                self._model = add_adapter(self._model, path, info.peft_name,
                                          check=lambda model: self._test_answer(model, info))
            except FlywheelError as error:
                raise FlywheelError(f"Adapter {ref} could not be loaded: {error}") from error
            idle = self._slots.install(key, info)
            if idle is not None:
                self._unload(idle)
        logger.info("Serving adapter %s for %s", info.label, key)
        return info

    def _test_answer(self, model: Any, info: AdapterInfo) -> None:
        """A few greedy tokens with the new adapter on its task's first example: every score must be finite."""
        import torch

        task = TASKS.get(info.key, TASKS["arena"])
        model.set_adapter(info.peft_name)
        with torch.inference_mode():
            output = model.generate(**self.encode(task, task.examples[0]), do_sample=False,
                                    max_new_tokens=TEST_ANSWER_TOKENS, output_logits=True,
                                    return_dict_in_generate=True, pad_token_id=self.tokenizer.pad_token_id)
        if not all(bool(torch.isfinite(step).all()) for step in output.logits):
            raise FlywheelError("its test answer scores are not finite numbers (NaN or infinity)")

    def stream(self, task: Task, inputs: dict[str, str], settings: GenerationSettings,
               *, adapter: str | None = None,
               on_start: Callable[[AdapterInfo | None], None] | None = None) -> Iterator[str]:
        """Yield the growing answer text; `adapter` is a key given to `load_adapter` or None.

        `on_start` receives the adapter this request holds (None: the base model) before the
        first token, so callers report the exact revision even if a hot swap happens meanwhile.
        """
        info = self._slots.acquire(adapter)
        try:
            if on_start is not None:
                on_start(info)
            yield from self._stream_with(info, task, inputs, settings)
        finally:
            self._release(info)

    def label_for(self, adapter: str | None) -> str:
        info = self.adapters().get(adapter) if adapter else None
        return info.label if info else BASE_LABEL

    def _release(self, info: AdapterInfo | None) -> None:
        idle = self._slots.release(info)
        if idle is not None:
            with self._generate_lock:
                self._unload(idle)

    def _unload(self, info: AdapterInfo) -> None:
        """Take the adapter out of the model (the caller holds the model whole)."""
        remove_adapter(self._model, info.peft_name)
        self._batcher.forget(info.peft_name)

    def encode(self, task: Task, inputs: dict[str, str]) -> dict[str, Any]:
        """Tokenize a task's prompt the way this model expects (chat template or plain text)."""
        tokenizer = self.tokenizer
        if self.loaded.has_chat_template and not self.loaded.is_seq2seq:
            text = tokenizer.apply_chat_template(task.messages(inputs), tokenize=False,
                                                 add_generation_prompt=True)
            return tokenizer(text, return_tensors="pt", add_special_tokens=False)
        return tokenizer(task.text_prompt(inputs), return_tensors="pt")

    def shared_prefix(self, task: Task, ids: list[int]) -> int:
        """How many leading tokens of the prompt `ids` every prompt of `task` has (chat template, system
        prompt, instruction up to the first field); 0 if none or if this prompt does not start with them.

        Found once per task as the tokens two prompts with different field values have in common; each
        prompt is compared token by token, so a tokenizer that merges a field's first characters into the
        template's last token only shortens what is shared."""
        if self.loaded.is_seq2seq:
            return 0
        shared = self._shared.get(task.slug)
        if shared is None:
            first, second = (self.encode(task, {field.name: text for field in task.fields})["input_ids"][0].tolist()
                             for text in ("a", "b"))
            shared = self._shared[task.slug] = _common_prefix(first, second)
        return len(shared) if len(ids) > len(shared) and ids[:len(shared)] == shared else 0

    def _stream_with(self, info: AdapterInfo | None, task: Task, inputs: dict[str, str],
                     settings: GenerationSettings) -> Iterator[str]:
        import torch

        settings = settings.validated()
        encoded = self.encode(task, inputs)
        request = Request(encoded, {**settings.generate_kwargs(), "pad_token_id": self.tokenizer.pad_token_id},
                          adapter=info.peft_name if info else None, seed=settings.seed,
                          prefix=self.shared_prefix(task, encoded["input_ids"][0].tolist()))
        text, shown = _text_pieces(self.tokenizer), None
        self._batcher.submit(request)
        try:
            for ids in request.tokens():
                for token in ids:
                    text.put(torch.tensor([token]))
                if text.value != shown:  # a token may end mid-word: nothing new to show yet
                    shown = text.value
                    yield shown
            text.end()
            if text.value != shown:
                yield text.value
        except Exception as error:  # noqa: BLE001 - a failed step, in the caller's words
            raise FlywheelError(f"Generation failed: {error}") from error
        finally:
            # Closing this generator (Gradio does when the client goes away) stops the request at the
            # next step; the adapter it holds is released only once its row has left the batch.
            request.cancel()
            request.finished.wait()


def _text_pieces(tokenizer: Any) -> Any:
    """A `TextStreamer` that collects the growing answer in `.value`, cut as it cuts it for printing:
    whole words, never half a character."""
    from transformers import TextStreamer

    class TextPieces(TextStreamer):
        value = ""

        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            self.value += text

    return TextPieces(tokenizer, skip_special_tokens=True)


def _common_prefix(first: list[int], second: list[int]) -> list[int]:
    length = 0
    while length < min(len(first), len(second)) and first[length] == second[length]:
        length += 1
    return first[:length]


def _safe(key: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in key)
