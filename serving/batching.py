"""Continuous batching: concurrent requests decoded together, each with its own settings and adapter.

One background thread owns the model while there is work. Each turn it prefills the requests
that arrived (alone, so a prompt costs what it costs in `generate`), adds them to the running
batch, and decodes one token for every row at once; a row leaves as soon as it stops (end of
sequence, `max_new_tokens`, or its consumer went away) and the next request takes its place.

Why not transformers' own continuous batching (`generate_batch`, `init_continuous_batching`):
it decides greedy vs sampling once per manager, samples from the global RNG (no per-request
seed), has no per-request repetition penalty, flattens all tokens into one row so PEFT's
per-row `adapter_names` cannot apply, and does not serve encoder-decoder models. What this
module reuses from transformers and PEFT instead: each row's logits processors are the ones
`generate` would build for its settings (`_get_logits_processor`), the batch's KV cache is a
`DynamicCache`, and PEFT applies each row's LoRA adapter inside one forward (`adapter_names`).

The batch's cache is left-padded: a row that joins or leaves realigns it once, and every
decode step passes the padding mask and each row's own position ids. Batched float arithmetic
can flip a greedy near-tie compared with decoding a request alone; nothing else differs.
Encoder-decoder models are served one request at a time through `generate`.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

logger = logging.getLogger(__name__)

BASE_ROW = "__base__"
"""PEFT's name for "no adapter" in a mixed-adapter batch."""
_END = object()


class ModelLock:
    """Access to the shared model: the decode loop takes it one step at a time; anyone else
    (loading or unloading an adapter and its test answer) takes it whole with `with lock:` or
    `acquire()`, and gets it at the next step boundary, ahead of the loop."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._turns = threading.Condition()
        self._waiting = 0

    def acquire(self, timeout: float = -1) -> bool:
        with self._turns:
            self._waiting += 1
        try:
            return self._lock.acquire(timeout=timeout)
        finally:
            with self._turns:
                self._waiting -= 1
                self._turns.notify_all()

    def release(self) -> None:
        self._lock.release()

    def __enter__(self) -> ModelLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    @contextmanager
    def step(self) -> Iterator[None]:
        """One turn of the decode loop: waits while someone else asked for the model."""
        with self._turns:
            self._turns.wait_for(lambda: self._waiting == 0)
        with self._lock:
            yield


class Request:
    """One generation: the prompt in, generated token ids out as they come; cancellable.

    Args:
        encoded: the tokenized prompt (`input_ids`, `attention_mask`), batch of one.
        generate_kwargs: the settings as `generate` takes them (`do_sample`, `temperature`, ...).
        adapter: the PEFT adapter name to decode with, or None for the base model.
        seed: seeds this request's own sampler; None draws a fresh seed.
    """

    def __init__(self, encoded: dict[str, Any], generate_kwargs: dict[str, Any], *, adapter: str | None,
                 seed: int | None) -> None:
        self.encoded = encoded
        self.generate_kwargs = generate_kwargs
        self.adapter = adapter
        self.seed = seed
        self.finished = threading.Event()
        """Set once the request holds no model resources any more (its row left the batch)."""
        self._cancelled = threading.Event()
        self._out: queue.SimpleQueue[Any] = queue.SimpleQueue()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cancel(self) -> None:
        """Stop at the next step; `finished` is set once its row has left the batch."""
        self._cancelled.set()

    def tokens(self) -> Iterator[list[int]]:
        """Yield new token ids as they are generated (several at once if the consumer fell behind).

        Raises whatever stopped generation for this request.
        """
        while True:
            items = [self._out.get()]
            while not self._out.empty():
                items.append(self._out.get())
            ids = [item for item in items if isinstance(item, int)]
            if ids:
                yield ids
            for item in items:
                if isinstance(item, BaseException):
                    raise item
                if item is _END:
                    return

    def emit(self, token: int) -> None:
        self._out.put(token)

    def finish(self, error: BaseException | None = None) -> None:
        if error is not None:
            self._out.put(error)
        self._out.put(_END)
        self.finished.set()


class Batcher:
    """Runs submitted `Request`s on the model `model()` returns (read anew every step, as loading
    the first adapter wraps the model in a PeftModel), at most `max_batch` rows at once."""

    def __init__(self, model: Callable[[], Any], *, lock: ModelLock, max_batch: int = 16) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.max_batch = max_batch
        self._model = model
        self._lock = lock
        self._waiting: list[Request] = []
        self._wake = threading.Condition()
        self._running = False

    @property
    def waiting(self) -> int:
        """Requests submitted that have no row yet."""
        with self._wake:
            return len(self._waiting)

    def submit(self, request: Request) -> Request:
        with self._wake:
            self._waiting.append(request)
            if not self._running:  # the loop thread exists only while there is work
                self._running = True
                threading.Thread(target=self._run, name="flywheel-batcher", daemon=True).start()
        return request

    def _take_waiting(self, free: int, busy: bool) -> list[Request] | None:
        """Up to `free` waiting requests; None (and the loop ends) when there is no work at all."""
        with self._wake:
            if not self._waiting and not busy:
                self._running = False
                return None
            joining, self._waiting = self._waiting[:free], self._waiting[free:]
            return joining

    def _run(self) -> None:
        batch = _Batch()
        try:
            self._loop(batch)
        except BaseException as error:  # a bug here must not leave requests waiting forever
            logger.exception("The batching loop stopped")
            with self._wake:
                stranded, self._waiting, self._running = self._waiting, [], False
            for request in [*(row.request for row in batch.rows), *stranded]:
                request.finish(error)

    def _loop(self, batch: _Batch) -> None:
        import torch

        while True:
            # Requests that arrived while the model was busy (or held by someone else) join in this turn.
            with self._lock.step(), torch.inference_mode():
                model = self._model()
                alone = getattr(model.config, "is_encoder_decoder", False)
                joining = self._take_waiting(1 if alone else self.max_batch - len(batch.rows), bool(batch.rows))
                if joining is None:
                    return
                if alone:
                    for request in joining:
                        _run_alone(model, request)
                    continue
                for request in joining:
                    self._join(model, batch, request)
                if batch.rows:
                    self._step(model, batch)

    def _join(self, model: Any, batch: _Batch, request: Request) -> None:
        if request.cancelled:
            request.finish()
            return
        try:
            row, cache = _Row.prefill(model, request)
        except Exception as error:  # noqa: BLE001 - this request fails, the batch goes on
            logger.exception("Prefill failed")
            request.finish(error)
            return
        if row.done:
            request.finish()
        else:
            batch.join(row, cache)

    def _step(self, model: Any, batch: _Batch) -> None:
        import torch

        try:
            batch.drop_cancelled()
            if not batch.rows:
                return
            logits = _forward(model, batch.next_inputs(), [row.adapter for row in batch.rows])
            for index, row in enumerate(batch.rows):
                row.take(logits[index:index + 1].to(dtype=torch.float32))
            batch.drop_done()
        except Exception as error:  # noqa: BLE001 - every row in this step fails, the server goes on
            logger.exception("Decode step failed")
            for row in batch.rows:
                row.request.finish(error)
            batch.clear()


class _Row:
    """One request inside the batch: its tokens so far, logits processors, sampler and stop rule."""

    def __init__(self, model: Any, request: Request) -> None:
        import torch

        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.request = request
        self.ids = request.encoded["input_ids"]
        self.position = self.ids.shape[1]
        self.adapter = request.adapter or BASE_ROW
        config, _ = base._prepare_generation_config(None, **request.generate_kwargs)
        base._prepare_special_tokens(config, True, device=self.ids.device)
        # Exactly the processors `generate` would apply for these settings (repetition penalty, warpers, ...).
        self.processors = base._get_logits_processor(generation_config=config, input_ids_seq_length=self.position,
                                                     encoder_input_ids=self.ids, device=self.ids.device,
                                                     model_kwargs={})
        eos = config._eos_token_tensor
        self.eos = set() if eos is None else set(eos.reshape(-1).tolist())
        self.max_new_tokens = config.max_new_tokens
        self.generated = 0
        self.sampler: torch.Generator | None = None
        if config.do_sample:
            self.sampler = torch.Generator(device=self.ids.device)
            if request.seed is None:
                self.sampler.seed()
            else:
                self.sampler.manual_seed(request.seed)

    @classmethod
    def prefill(cls, model: Any, request: Request) -> tuple[_Row, Any]:
        """Run the prompt alone; return the row (holding its first token) and its KV cache."""
        import torch
        from transformers import DynamicCache

        row = cls(model, request)
        cache = DynamicCache()
        inputs = {"input_ids": row.ids, "position_ids": torch.arange(row.position).unsqueeze(0), "cache": cache}
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        if base._supports_logits_to_keep():
            inputs["logits_to_keep"] = 1
        logits = _forward(model, inputs, [row.adapter])
        row.take(logits.to(dtype=torch.float32))
        return row, cache

    @property
    def done(self) -> bool:
        return self.request.cancelled or self.generated >= self.max_new_tokens or (
            self.generated > 0 and int(self.ids[0, -1]) in self.eos)

    def take(self, logits: Any) -> None:
        """Choose the next token from this row's last logits (shape [1, vocab]) and emit it."""
        import torch

        scores = self.processors(self.ids, logits)
        if self.sampler is None:
            token = int(scores.argmax(dim=-1))
        else:
            token = int(torch.multinomial(scores.softmax(dim=-1), 1, generator=self.sampler))
        self.ids = torch.cat([self.ids, self.ids.new_tensor([[token]])], dim=1)
        self.generated += 1
        self.request.emit(token)


class _Batch:
    """The running rows and their shared, left-padded KV cache (`mask` marks the real positions)."""

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.rows: list[_Row] = []
        self.cache: Any = None
        self.mask: Any = None

    def join(self, row: _Row, cache: Any) -> None:
        import torch

        if not self.rows:
            self.rows, self.cache = [row], cache
            self.mask = torch.ones(1, cache.get_seq_length(), dtype=torch.long)
            return
        length = max(self.mask.shape[1], cache.get_seq_length())
        self.cache = _cache_of([
            (torch.cat([_pad_left(old_k, length), _pad_left(new_k, length)]),
             torch.cat([_pad_left(old_v, length), _pad_left(new_v, length)]))
            for (old_k, old_v), (new_k, new_v) in zip(_layers(self.cache), _layers(cache), strict=True)
        ])
        new_mask = torch.ones(1, cache.get_seq_length(), dtype=torch.long)
        self.mask = torch.cat([_pad_left(self.mask, length), _pad_left(new_mask, length)])
        self.rows.append(row)

    def next_inputs(self) -> dict[str, Any]:
        """The forward inputs that feed every row's last token (counted in the cache from now on)."""
        import torch

        self.mask = torch.cat([self.mask, self.mask.new_ones(len(self.rows), 1)], dim=1)
        positions = torch.tensor([[row.position] for row in self.rows])
        for row in self.rows:
            row.position += 1
        return {"input_ids": torch.cat([row.ids[:, -1:] for row in self.rows]), "position_ids": positions,
                # Without padding, no mask: the same attention path `generate` takes for one request.
                "attention_mask": None if bool(self.mask.all()) else self.mask, "cache": self.cache}

    def drop_cancelled(self) -> None:
        self._keep([i for i, row in enumerate(self.rows) if not row.request.cancelled])

    def drop_done(self) -> None:
        self._keep([i for i, row in enumerate(self.rows) if not row.done])

    def _keep(self, indices: list[int]) -> None:
        """Keep only these rows, trim padding columns no row needs, and finish the others."""
        import torch

        if len(indices) == len(self.rows):
            return
        leaving = [row for i, row in enumerate(self.rows) if i not in set(indices)]
        if indices:
            index = torch.tensor(indices)
            mask = self.mask[index]
            start = int(mask.any(dim=0).long().argmax())
            self.cache = _cache_of([(k[index][:, :, start:], v[index][:, :, start:]) for k, v in _layers(self.cache)])
            self.mask = mask[:, start:]
            self.rows = [self.rows[i] for i in indices]
        else:
            self.clear()
        for row in leaving:
            row.request.finish()


def _forward(model: Any, inputs: dict[str, Any], adapters: list[str]) -> Any:
    """The last position's logits, each row through its own adapter when the model holds adapters."""
    if hasattr(model, "peft_config"):
        inputs = {**inputs, "adapter_names": adapters}
    return model(**inputs, use_cache=True).logits[:, -1]


def _layers(cache: Any) -> list[tuple[Any, Any]]:
    return [(layer.keys, layer.values) for layer in cache.layers]


def _cache_of(layers: list[tuple[Any, Any]]) -> Any:
    from transformers import DynamicCache

    return DynamicCache(ddp_cache_data=layers)


def _pad_left(tensor: Any, length: int) -> Any:
    """Zeros on the left of the sequence axis (-2 for keys and values, -1 for the mask) up to `length`."""
    import torch

    axis = -1 if tensor.dim() == 2 else -2
    missing = length - tensor.shape[axis]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[axis] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=axis)


def _run_alone(model: Any, request: Request) -> None:
    """Serve one request with `generate` (encoder-decoder models), streaming and stopping like a row."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList
    from transformers.generation.streamers import BaseStreamer

    class Emit(BaseStreamer):
        def __init__(self) -> None:
            self.started = False

        def put(self, value: Any) -> None:
            if self.started:  # the first call carries the decoder's start token
                for token in value.reshape(-1).tolist():
                    request.emit(token)
            self.started = True

        def end(self) -> None:
            pass

    class Cancelled(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            return torch.full((input_ids.shape[0],), request.cancelled, dtype=torch.bool)

    if request.cancelled:
        request.finish()
        return
    kwargs = {**request.encoded, **request.generate_kwargs, "streamer": Emit(),
              "stopping_criteria": StoppingCriteriaList([Cancelled()])}
    try:
        if request.seed is not None:
            torch.manual_seed(request.seed)
        if request.adapter is not None:
            if model.active_adapter != request.adapter:  # set_adapter walks every module (~30 ms)
                model.set_adapter(request.adapter)
            model.generate(**kwargs)
        elif hasattr(model, "disable_adapter"):
            with model.disable_adapter():
                model.generate(**kwargs)
        else:
            model.generate(**kwargs)
    except Exception as error:  # noqa: BLE001 - reported to this request's consumer
        logger.exception("Generation failed")
        request.finish(error)
        return
    request.finish()
