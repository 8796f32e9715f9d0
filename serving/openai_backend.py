"""Generation on an OpenAI-compatible server (vLLM to scale out; `transformers serve` on a CPU).

`OpenAIBackend` satisfies `serving.backends.GenerationBackend`: the tabs, tickets, quotas and
feedback do not know which backend answers. It speaks plain HTTP (httpx):

- `GET /v1/models` at connection: the server must answer, and serve the base model (the only
  one it lists, or the one named by `--model` / `FLYWHEEL_MODEL`).
- `POST /v1/chat/completions` with `stream: true`: the task's messages, and the settings as
  `temperature`, `top_p`, `max_tokens`, `seed`, plus top-k and the repetition penalty. vLLM takes
  those two as documented extra fields (`top_k`, `repetition_penalty`); `transformers serve`
  refuses unknown fields and takes them in its `generation_config` field instead. One answer
  of one token at connection tells which one the server takes; both honour every setting.
- Each tab's adapter is a LoRA on the server, named `flywheel-<key>-<revision>`, and is the
  request's `model`. A new revision is loaded with vLLM's dynamic LoRA endpoints
  (`POST /v1/load_lora_adapter {"lora_name", "lora_path"}`, which needs `--enable-lora` and
  `VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`), must give a one-token test answer, then serves;
  the old name is unloaded (`POST /v1/unload_lora_adapter {"lora_name"}`) once no request uses it.

`lora_path` is where the server reads the adapter. With `lora_source="cache"` (default) it is the
local folder of the exact revision this process downloaded and checked (`FLYWHEEL_CACHE`), so the
server must see the same path (same machine, or the same volume mounted at the same path). With
`"hub"` it is the Hub repo id and the server downloads the repo's newest commit itself; then only
the newest commit can be served (a pin to an older one is refused).

A server that cannot be reached, or that stops in the middle of an answer, becomes one
`FlywheelError` line; the text streamed so far is not kept as an answer.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from hub.errors import FlywheelError, first_line
from hub.repos import DEFAULT_LIMITS, HubLimits, is_local_ref, latest_revision, resolve_adapter
from serving.adapters import validate_adapter
from serving.engine import BASE_LABEL, GenerationSettings
from serving.slots import AdapterSlots, ServedAdapter, adapter_label
from tasks import InvalidInput, Task

logger = logging.getLogger(__name__)

CACHE, HUB = "cache", "hub"
LORA_SOURCES = (CACHE, HUB)
"""Where the server reads a LoRA: the checked local copy (`FLYWHEEL_CACHE`), or the Hub repo."""
API_KEY_ENV = "FLYWHEEL_BACKEND_KEY"
"""Sent as `Authorization: Bearer ...` when set (vLLM's `--api-key`)."""
CONNECT_SECONDS = 10.0
"""How long the server may take to accept a connection or answer a management call."""
SILENCE_SECONDS = 120.0
"""How long the server may stay silent while an answer is queued or streaming."""
LOAD_SECONDS = 300.0
"""How long loading one LoRA on the server may take (it may download it first)."""
MODELS, CHAT = "/v1/models", "/v1/chat/completions"
LOAD_LORA, UNLOAD_LORA = "/v1/load_lora_adapter", "/v1/unload_lora_adapter"
VLLM_FIELDS, GENERATION_CONFIG = "vllm", "generation_config"
"""How a server takes top-k and the repetition penalty (see the module docstring)."""


@dataclass
class RemoteLora(ServedAdapter):
    """A LoRA adapter revision loaded on the server."""

    lora_name: str = ""
    """Its name on the server: the `model` of requests that use it."""


def lora_name_for(key: str, revision: str) -> str:
    """One name per adapter key and revision, so a server that outlived the app can keep it."""
    return "flywheel-" + "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in key) + "-" + revision[:12]


def load_lora_request(lora_name: str, lora_path: str) -> dict[str, str]:
    """Body of `POST /v1/load_lora_adapter`, as vLLM documents it."""
    return {"lora_name": lora_name, "lora_path": lora_path}


def unload_lora_request(lora_name: str) -> dict[str, str]:
    """Body of `POST /v1/unload_lora_adapter`, as vLLM documents it."""
    return {"lora_name": lora_name}


def chat_request(model: str, messages: list[dict[str, str]], settings: GenerationSettings, *,
                 sampling: str, stream: bool = True) -> dict[str, Any]:
    """Body of `POST /v1/chat/completions` carrying every setting; `sampling` is VLLM_FIELDS or GENERATION_CONFIG."""
    body: dict[str, Any] = {"model": model, "messages": messages, "stream": stream,
                            "max_tokens": settings.max_new_tokens, "temperature": settings.temperature,
                            "top_p": settings.top_p}
    if settings.seed is not None:
        body["seed"] = settings.seed
    if sampling == VLLM_FIELDS:  # vLLM: -1 considers every token
        body.update(top_k=settings.top_k or -1, repetition_penalty=settings.repetition_penalty)
    else:  # transformers serve: unset fields keep the model's generation config (eos and pad tokens)
        body["generation_config"] = json.dumps({"do_sample": settings.temperature > 0, "top_k": settings.top_k,
                                                "repetition_penalty": settings.repetition_penalty})
    return body


class OpenAIBackend:
    """Tabs answered by an OpenAI-compatible server; build it with `connect`.

    Example:
        >>> backend = OpenAIBackend.connect("http://127.0.0.1:8000")            # doctest: +SKIP
        >>> backend.load_adapter("tweet", "me/flywheel-tweet-sft")              # doctest: +SKIP
        >>> from tasks import get_task
        >>> for text in backend.stream(get_task("tweet"), {"prompt": "Advice for founders"},
        ...                            GenerationSettings(), adapter="tweet"):  # doctest: +SKIP
        ...     pass
    """

    def __init__(self, *, url: str, client: httpx.Client, base_id: str, sampling: str,
                 lora_source: str = CACHE) -> None:
        self.url = url
        self.lora_source = lora_source
        self._client = client
        self._base_id = base_id
        self.sampling = sampling
        """VLLM_FIELDS or GENERATION_CONFIG: how this server takes top-k and the repetition penalty."""
        self._slots: AdapterSlots[RemoteLora] = AdapterSlots()
        self._load_lock = threading.Lock()

    @classmethod
    def connect(cls, url: str, *, model: str | None = None, lora_source: str = CACHE) -> OpenAIBackend:
        """Check that the server at `url` answers and serves `model` (None: the one base model it lists).

        Raises:
            InvalidInput: `lora_source` is not one of `LORA_SOURCES`.
            FlywheelError: unreachable, not an OpenAI-compatible server, or the model is not served there.
        """
        if lora_source not in LORA_SOURCES:
            raise InvalidInput(f"LoRA source must be {' or '.join(LORA_SOURCES)}; got {lora_source!r}.")
        key = os.environ.get(API_KEY_ENV)
        client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"} if key else None,
                              timeout=httpx.Timeout(SILENCE_SECONDS, connect=CONNECT_SECONDS))
        backend = cls(url=url, client=client, base_id="", sampling=VLLM_FIELDS, lora_source=lora_source)
        try:
            backend._base_id = backend._choose_base(model)
            backend.sampling = backend._choose_sampling()
        except BaseException:
            client.close()
            raise
        logger.info("Generating on %s (%s), base model %s", backend.where, backend.sampling, backend.base_id)
        return backend

    # -- GenerationBackend -----------------------------------------------------------------------

    @property
    def base_id(self) -> str:
        return self._base_id

    @property
    def where(self) -> str:
        """The server's address without any credentials in it."""
        parts = urlsplit(self.url)
        host = parts.hostname or ""
        return f"{parts.scheme}://{host}{f':{parts.port}' if parts.port else ''}{parts.path}"

    def describe(self, adapter: RemoteLora | None) -> str:
        return f"openai {self.where}, " + (f"LoRA {adapter.lora_name}" if adapter is not None else "base model")

    def adapters(self) -> dict[str, RemoteLora]:
        return self._slots.serving()

    def label_for(self, adapter: str | None) -> str:
        lora = self.adapters().get(adapter) if adapter else None
        return lora.label if lora else BASE_LABEL

    def load_adapter(self, key: str, ref: str, *, revision: str | None = None,
                     limits: HubLimits = DEFAULT_LIMITS) -> RemoteLora:
        """Load a revision of `ref` on the server as `key`'s LoRA; the old one serves until the swap.

        The files are checked here first (`serving.adapters.validate_adapter`: files, config, base
        model, finite values); the server checks the shapes when it loads them. The new LoRA must
        give a one-token answer before it serves.

        Raises:
            FlywheelError: the adapter cannot be fetched, or was refused here or by the server
                (the old one keeps serving).
        """
        path, resolved = resolve_adapter(ref, revision=revision, limits=limits)
        current = self.adapters().get(key)
        if current is not None and current.revision == resolved:
            return current
        validate_adapter(path, base_id=self.base_id)
        lora_path = str(path)
        if self.lora_source == HUB and not is_local_ref(ref):
            newest = latest_revision(ref, limits=limits)
            if newest != resolved:
                raise FlywheelError(f"Adapter {adapter_label(ref, resolved)} is not the newest commit of {ref} "
                                    f"({newest[:12]}), and with the LoRA source `hub` the server loads the newest.")
            lora_path = ref
        lora = RemoteLora(key=key, ref=ref, revision=resolved, lora_name=lora_name_for(key, resolved))
        with self._load_lock:
            if lora.lora_name not in self._listed_models():  # a server that outlived this app keeps its LoRAs
                self._call(LOAD_LORA, load_lora_request(lora.lora_name, lora_path), timeout=LOAD_SECONDS,
                           doing=f"load adapter {lora.label} as LoRA {lora.lora_name}")
            try:
                self._answer_one_token(lora.lora_name, self.sampling)
            except FlywheelError as error:
                self._unload(lora)
                raise FlywheelError(f"Adapter {lora.label} was loaded but gives no answer: {error}") from None
            idle = self._slots.install(key, lora)
        if idle is not None:
            self._unload(idle)
        logger.info("Serving adapter %s for %s as LoRA %s on %s", lora.label, key, lora.lora_name, self.where)
        return lora

    def stream(self, task: Task, inputs: dict[str, str], settings: GenerationSettings, *,
               adapter: str | None = None,
               on_start: Callable[[RemoteLora | None], None] | None = None) -> Iterator[str]:
        """Yield the growing answer; `on_start` receives the LoRA this request holds (None: the base model)."""
        settings = settings.validated()
        lora = self._slots.acquire(adapter)
        try:
            if on_start is not None:
                on_start(lora)
            model = lora.lora_name if lora is not None else self.base_id
            yield from self._stream_chat(chat_request(model, task.messages(inputs), settings,
                                                      sampling=self.sampling))
        finally:
            idle = self._slots.release(lora)
            if idle is not None:
                self._unload(idle)

    def close(self) -> None:
        self._client.close()

    # -- internals -------------------------------------------------------------------------------

    def _stream_chat(self, body: dict[str, Any]) -> Iterator[str]:
        text, finished = "", False
        try:
            # Leaving this block (also when the caller closes the generator) closes the connection,
            # which makes the server stop generating this answer.
            with self._client.stream("POST", CHAT, json=body) as response:
                if response.status_code != 200:
                    response.read()
                    raise FlywheelError(f"The generation server at {self.where} refused the request "
                                        f"(HTTP {response.status_code}): {server_message(response)}")
                for event in sse_events(response.iter_lines()):
                    problem = event_error(event)
                    if problem:
                        raise FlywheelError(f"The generation server at {self.where} failed in the middle of "
                                            f"the answer: {problem}")
                    for choice in event.get("choices") or []:
                        piece = (choice.get("delta") or {}).get("content")
                        if piece:
                            text += piece
                            yield text
                        finished = finished or bool(choice.get("finish_reason"))
        except httpx.TransportError as error:
            if text:
                raise FlywheelError(f"The generation server at {self.where} stopped in the middle of the answer "
                                    f"({self._quote(error)}); please try again.") from None
            raise self._unreachable(error) from None
        if not finished:
            raise FlywheelError(f"The generation server at {self.where} stopped in the middle of the answer "
                                "(the stream ended without a finish reason); please try again.")

    def _choose_base(self, model: str | None) -> str:
        listed = self._get_models()
        bases = [entry["id"] for entry in listed if not entry.get("parent")]  # vLLM lists LoRAs with a parent
        if model is not None:
            if model in bases:
                return model
            raise FlywheelError(f"The generation server at {self.where} serves {', '.join(bases) or 'no model'}, "
                                f"not {model}; start it with that model, or pick one of those as the model.")
        if len(bases) != 1:
            raise FlywheelError(f"The generation server at {self.where} serves {len(bases)} models "
                                f"({', '.join(bases) or 'none'}); name the base model with --model or FLYWHEEL_MODEL.")
        return bases[0]

    def _choose_sampling(self) -> str:
        """VLLM_FIELDS if the server takes `top_k`/`repetition_penalty`, else GENERATION_CONFIG if it takes that."""
        try:
            self._answer_one_token(self.base_id, VLLM_FIELDS)
            return VLLM_FIELDS
        except FlywheelError as vllm_error:
            if "top_k" not in str(vllm_error) and "repetition_penalty" not in str(vllm_error):
                raise
            self._answer_one_token(self.base_id, GENERATION_CONFIG)
            return GENERATION_CONFIG

    def _answer_one_token(self, model: str, sampling: str) -> None:
        probe = GenerationSettings(temperature=0.0, max_new_tokens=1, repetition_penalty=1.0)
        body = chat_request(model, [{"role": "user", "content": "Hello"}], probe, sampling=sampling, stream=False)
        self._call(CHAT, body, timeout=SILENCE_SECONDS, doing=f"answer with {model}")

    def _get_models(self) -> list[dict[str, Any]]:
        try:
            response = self._client.get(MODELS, timeout=CONNECT_SECONDS)
        except httpx.TransportError as error:
            raise self._unreachable(error) from None
        try:
            listed = response.json()["data"] if response.status_code == 200 else None
        except (ValueError, KeyError, TypeError):
            listed = None
        if not isinstance(listed, list) or not all(isinstance(e, dict) and "id" in e for e in listed):
            raise FlywheelError(f"The server at {self.where} does not answer GET {MODELS} like an OpenAI-compatible "
                                f"server (HTTP {response.status_code}); check the backend URL.")
        return listed

    def _listed_models(self) -> set[str]:
        return {entry["id"] for entry in self._get_models()}

    def _call(self, path: str, body: dict[str, Any], *, timeout: float, doing: str) -> httpx.Response:
        try:
            response = self._client.post(path, json=body, timeout=httpx.Timeout(timeout, connect=CONNECT_SECONDS))
        except httpx.TransportError as error:
            raise self._unreachable(error) from None
        if response.status_code == 200:
            return response
        hint = ""
        if path in (LOAD_LORA, UNLOAD_LORA) and response.status_code in (404, 405):
            hint = (f"; it has no {path}: start vLLM with --enable-lora and the environment variable "
                    "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True")
        raise FlywheelError(f"The generation server at {self.where} could not {doing} "
                            f"(HTTP {response.status_code}): {server_message(response)}{hint}.")

    def _unload(self, lora: RemoteLora) -> None:
        """Best effort: a LoRA left loaded costs the server memory, never a wrong answer."""
        try:
            self._call(UNLOAD_LORA, unload_lora_request(lora.lora_name), timeout=CONNECT_SECONDS,
                       doing=f"unload LoRA {lora.lora_name}")
        except FlywheelError as error:
            logger.warning("%s", error)

    def _unreachable(self, error: BaseException) -> FlywheelError:
        return FlywheelError(f"Cannot reach the generation server at {self.where} ({self._quote(error)}); "
                             "is it running, and is the backend URL right?")

    def _quote(self, error: BaseException) -> str:
        return first_line(error, os.environ.get(API_KEY_ENV))


def sse_events(lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    """The JSON objects of a server-sent event stream's `data:` lines, up to `data: [DONE]`."""
    for line in lines:
        if not line.startswith("data:"):
            continue
        data = line[len("data:"):].strip()
        if data == "[DONE]":
            return
        try:
            event = json.loads(data)
        except ValueError:
            raise FlywheelError(f"The generation server sent a line that is not JSON: {data[:80]!r}") from None
        if isinstance(event, dict):
            yield event


def event_error(event: dict[str, Any]) -> str | None:
    """The message of an error event (`{"error": ...}` or vLLM's `{"object": "error", ...}`), else None."""
    if event.get("object") == "error":
        return str(event.get("message") or "unknown error")
    error = event.get("error")
    if error is None:
        return None
    return str(error.get("message") or error) if isinstance(error, dict) else str(error)


def server_message(response: httpx.Response) -> str:
    """The one-line reason in an error response: OpenAI's `error.message`, FastAPI's `detail`, or the text."""
    try:
        payload = response.json()
    except ValueError:
        payload = None
    message: Any = None
    if isinstance(payload, dict):
        message = event_error(payload) or payload.get("detail") or payload.get("message")
    text = str(message) if message is not None else response.text.strip() or response.reason_phrase
    return first_line(RuntimeError(text), os.environ.get(API_KEY_ENV))[:300]
