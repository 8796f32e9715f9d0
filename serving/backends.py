"""The generation interface every tab uses, and the choice of backend behind it.

A backend turns a task's messages and `GenerationSettings` into a stream of text, and serves
each task's LoRA adapter under a key (a task slug). Two backends satisfy `GenerationBackend`:

- `local` (default): `serving.engine.Engine`, the base model and its adapters in this process.
- `openai=URL`: `serving.openai_backend.OpenAIBackend`, an OpenAI-compatible server that holds
  the base model and the LoRAs (vLLM to scale out; `transformers serve` runs on a CPU).

`python -m demos --backend` and the Space variable `FLYWHEEL_BACKEND` take the same text.
Tickets, quotas and feedback live in `demos` above this interface, so they work alike with both.

Example:
    >>> BackendSpec.parse("openai=http://gpu-box:8000/v1")
    BackendSpec(kind='openai', url='http://gpu-box:8000')
    >>> str(BackendSpec.parse(""))
    'local'
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol
from urllib.parse import urlsplit

from hub.repos import BUNDLED, DEFAULT_LIMITS, HubLimits
from serving.slots import ServedAdapter
from tasks import InvalidInput

if TYPE_CHECKING:
    from serving.engine import GenerationSettings
    from tasks import Task

LOCAL, OPENAI = "local", "openai"
BACKEND_FORMS = "`local` or `openai=URL` (an OpenAI-compatible server such as vLLM, e.g. openai=http://host:8000)"


class GenerationBackend(Protocol):
    """What the tabs, the Space and the adapter watcher need from a backend."""

    @property
    def base_id(self) -> str:
        """The base model's name (Hub id or path) as feedback records and adapter checks use it."""
        ...

    def describe(self, adapter: ServedAdapter | None) -> str:
        """Where an answer is generated, for the served-by box (e.g. the server and its LoRA name)."""
        ...

    def adapters(self) -> Mapping[str, ServedAdapter]: ...

    def load_adapter(self, key: str, ref: str, *, revision: str | None = None,
                     limits: HubLimits = DEFAULT_LIMITS) -> ServedAdapter:
        """Serve `ref` (at `revision`, else its newest) under `key`; `FlywheelError` if refused."""
        ...

    def stream(self, task: Task, inputs: dict[str, str], settings: GenerationSettings, *,
               adapter: str | None = None,
               on_start: Callable[[ServedAdapter | None], None] | None = None) -> Iterator[str]:
        """Yield the growing answer; `on_start` gets the adapter this request holds before the first token."""
        ...

    def label_for(self, adapter: str | None) -> str: ...


@dataclass(frozen=True)
class BackendSpec:
    """Which backend generates: `local`, or `openai` with the server's base URL (without `/v1`)."""

    kind: str = LOCAL
    url: str | None = None

    @classmethod
    def parse(cls, text: str | None) -> BackendSpec:
        """`local` (or empty) or `openai=URL`; `InvalidInput` in one line for anything else."""
        text = (text or "").strip()
        if text in ("", LOCAL):
            return cls()
        kind, has_url, url = text.partition("=")
        if kind.strip() != OPENAI or not has_url:
            raise InvalidInput(f"Backend must be {BACKEND_FORMS}; got {text!r}.")
        url = url.strip().rstrip("/")
        url = url[:-len("/v1")] if url.endswith("/v1") else url
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
            raise InvalidInput(f"Backend URL must be http(s)://host[:port][/path], e.g. http://127.0.0.1:8000; "
                               f"got {url!r}.")
        return cls(kind=OPENAI, url=url)

    def __str__(self) -> str:
        return self.kind if self.url is None else f"{self.kind}={self.url}"


def open_backend(spec: BackendSpec | str | None, *, model: str | None = BUNDLED, dtype: str = "float32",
                 lora_source: str | None = None) -> GenerationBackend:
    """The backend `spec` names: a local engine loading `model`, or a connection to a server serving it.

    For a server, `model` None or `bundled` means the one base model it serves, and `lora_source`
    (`serving.openai_backend.LORA_SOURCES`, None: `cache`) says where it reads adapters. Raises
    `InvalidInput` for a malformed spec and `FlywheelError` for a server that cannot be used.
    """
    spec = spec if isinstance(spec, BackendSpec) else BackendSpec.parse(spec)
    if spec.kind == OPENAI:
        from serving.openai_backend import CACHE, OpenAIBackend

        return OpenAIBackend.connect(spec.url or "", model=None if model in (None, BUNDLED) else model,
                                     lora_source=lora_source or CACHE)
    from serving.engine import Engine
    from serving.models import load_model

    return Engine(load_model(model, dtype=dtype))
