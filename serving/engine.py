"""One base model in memory serving every tab: messages + settings -> a stream of text.

Per-task LoRA adapters are loaded once into the same PEFT model and switched per request.
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
from dataclasses import asdict, dataclass, field
from typing import Any

from hub.errors import FlywheelError
from hub.repos import DEFAULT_LIMITS, HubLimits, resolve_adapter
from serving.adapters import validate_adapter
from serving.injection import add_adapter, remove_adapter
from serving.models import LoadedModel
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
class AdapterInfo:
    """A LoRA adapter loaded into the engine."""

    key: str
    """What requests ask for: usually a task slug."""
    ref: str
    """Hub repo id or local folder it came from."""
    revision: str
    """Commit sha (Hub) or content hash (folder) of the loaded files."""
    peft_name: str
    """Unique name inside the PEFT model (one per loaded revision)."""
    users: int = field(default=0, repr=False)
    retired: bool = field(default=False, repr=False)

    @property
    def label(self) -> str:
        return f"{self.ref}@{self.revision[:12]}"


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

    def __init__(self, loaded: LoadedModel) -> None:
        self.loaded = loaded
        self._model = loaded.model
        self._adapters: dict[str, AdapterInfo] = {}
        self._names = itertools.count(1)
        self._generate_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._load_lock = threading.Lock()

    @property
    def tokenizer(self) -> Any:
        return self.loaded.tokenizer

    @property
    def model(self) -> Any:
        return self._model

    def adapters(self) -> dict[str, AdapterInfo]:
        with self._state_lock:
            return dict(self._adapters)

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
            with self._state_lock:
                old = self._adapters.get(key)
                self._adapters[key] = info
                if old is not None:
                    old.retired = True
            if old is not None and old.users == 0:
                self._unload(old)
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
        info = self._acquire(adapter)
        try:
            if on_start is not None:
                on_start(info)
            yield from self._stream_with(info, task, inputs, settings)
        finally:
            self._release(info)

    def label_for(self, adapter: str | None) -> str:
        info = self.adapters().get(adapter) if adapter else None
        return info.label if info else BASE_LABEL

    def _acquire(self, key: str | None) -> AdapterInfo | None:
        if key is None:
            return None
        with self._state_lock:
            info = self._adapters.get(key)
            if info is None:
                return None
            info.users += 1
            return info

    def _release(self, info: AdapterInfo | None) -> None:
        if info is None:
            return
        with self._state_lock:
            info.users -= 1
            unload = info.retired and info.users == 0
        if unload:
            with self._generate_lock:
                self._unload(info)

    def _unload(self, info: AdapterInfo) -> None:
        remove_adapter(self._model, info.peft_name)

    def encode(self, task: Task, inputs: dict[str, str]) -> dict[str, Any]:
        """Tokenize a task's prompt the way this model expects (chat template or plain text)."""
        tokenizer = self.tokenizer
        if self.loaded.has_chat_template and not self.loaded.is_seq2seq:
            text = tokenizer.apply_chat_template(task.messages(inputs), tokenize=False,
                                                 add_generation_prompt=True)
            return tokenizer(text, return_tensors="pt", add_special_tokens=False)
        return tokenizer(task.text_prompt(inputs), return_tensors="pt")

    def _stream_with(self, info: AdapterInfo | None, task: Task, inputs: dict[str, str],
                     settings: GenerationSettings) -> Iterator[str]:
        import torch
        from transformers import TextIteratorStreamer

        settings = settings.validated()
        encoded = self.encode(task, inputs)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=not self.loaded.is_seq2seq,
                                        skip_special_tokens=True, timeout=600)
        failure: list[BaseException] = []
        # Set when this generator is closed early (Gradio closes it when the client goes away):
        # generation then stops at the next token instead of holding the lock to the end.
        stop = threading.Event()

        def run() -> None:
            with self._generate_lock, torch.inference_mode():
                if stop.is_set():  # the client left while waiting for the lock
                    streamer.end()
                    return
                try:
                    if settings.seed is not None:
                        torch.manual_seed(settings.seed)
                    self._generate(info, encoded, streamer, settings, stop=stop)
                except BaseException as error:  # noqa: BLE001 - surfaced to the caller below
                    failure.append(error)
                    streamer.end()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        text = ""
        try:
            for piece in streamer:
                text += piece
                yield text
        finally:
            stop.set()
        thread.join()
        if failure:
            raise FlywheelError(f"Generation failed: {failure[0]}") from failure[0]

    def _generate(self, info: AdapterInfo | None, encoded: dict[str, Any], streamer: Any,
                  settings: GenerationSettings, *, stop: threading.Event) -> None:
        kwargs = dict(**encoded, streamer=streamer, pad_token_id=self.tokenizer.pad_token_id,
                      stopping_criteria=_stop_when(stop), **settings.generate_kwargs())
        model = self._model
        if info is not None:
            if model.active_adapter != info.peft_name:  # set_adapter walks every module (~30 ms)
                model.set_adapter(info.peft_name)
            model.generate(**kwargs)
        elif hasattr(model, "disable_adapter"):
            with model.disable_adapter():
                model.generate(**kwargs)
        else:
            model.generate(**kwargs)


def _stop_when(event: threading.Event) -> Any:
    """Stopping criteria that end `generate` at the next token once `event` is set."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class StopWhenSet(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            return torch.full((input_ids.shape[0],), event.is_set(), dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([StopWhenSet()])


def _safe(key: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in key)
