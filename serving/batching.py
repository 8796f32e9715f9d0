"""Continuous batching: concurrent requests decoded together, each with its own settings and adapter.

One background thread owns the model while there is work. Each turn it prefills the requests
that arrived together (one forward over their left-padded prompts; if that fails, one at a time,
so only a bad request fails), adds them to the running batch, and decodes one token for every
row at once; a row leaves as soon as it stops (end of sequence, `max_new_tokens`, or its
consumer went away) and the next request takes its place.

Why not transformers' own continuous batching (`generate_batch`, `init_continuous_batching`):
it decides greedy vs sampling once per manager, samples from the global RNG (no per-request
seed), has no per-request repetition penalty, flattens all tokens into one row so PEFT's
per-row `adapter_names` cannot apply, and does not serve encoder-decoder models. What this
module reuses from transformers and PEFT instead: each row's logits processors are the ones
`generate` would build for its settings (`_get_logits_processor`), the batch's KV cache is a
`DynamicCache`, and PEFT applies each row's LoRA adapter inside one forward (`adapter_names`).
A request's shared prompt prefix (its task's template) is prefilled once per adapter and reused
(`serving.prefix_cache`).

The rows and their left-padded cache are `serving.batch_rows`. Batched float arithmetic can flip
a greedy near-tie compared with decoding a request alone; nothing else differs. PEFT cannot mix
DoRA adapters per row, so each DoRA adapter decodes its rows in a batch of its own. Encoder-decoder
models are served one request at a time through `generate`.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from serving import compute_threads
from serving.batch_rows import BASE_ROW, Row, RowBatch, prefill
from serving.prefix_cache import PrefixCache

logger = logging.getLogger(__name__)

MAX_BATCH = 16
"""Rows decoded together at most, by default; more requests wait for a free row. (On 2 CPU cores
bare `generate` makes ~4x the tokens/s at batch 8 than at batch 1: see DESIGN.md.)"""
STREAM_EVERY = 0.25
"""Seconds at least between two partial updates of one streaming answer that a server sends (the final
text goes at once). Each update is an event the server encodes and the client decodes and renders, on
the CPU that decodes tokens: at one per token, one visitor of the app on 2 cores got ~0.85x the tokens/s
of bare `generate`."""
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
        prefix: how many leading prompt tokens other requests share (a task's chat template and
            instruction); their keys and values are computed once per adapter. 0: none.
    """

    def __init__(self, encoded: dict[str, Any], generate_kwargs: dict[str, Any], *, adapter: str | None,
                 seed: int | None, prefix: int = 0) -> None:
        if prefix < 0 or (prefix > 0 and prefix >= encoded["input_ids"].shape[1]):
            raise ValueError("a shared prefix must leave at least one prompt token to prefill")
        self.encoded = encoded
        self.generate_kwargs = generate_kwargs
        self.adapter = adapter
        self.seed = seed
        self.prefix = prefix
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
    """Runs submitted `Request`s on the model `model()` returns (read anew every turn, as loading
    the first adapter wraps the model in a PeftModel), at most `max_batch` rows at once."""

    def __init__(self, model: Callable[[], Any], *, lock: ModelLock, max_batch: int = MAX_BATCH) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.max_batch = max_batch
        self._model = model
        self._lock = lock
        self._waiting: list[Request] = []
        self._wake = threading.Lock()
        self._running = False
        self.prefixes = PrefixCache()
        """Keys and values of the shared prompt prefixes; touched only by the decode loop or by whoever
        holds the model whole."""

    def forget(self, adapter: str | None) -> None:
        """Drop what was computed with `adapter` (call it holding the model whole, as it is unloaded)."""
        self.prefixes.forget(adapter or BASE_ROW)

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
        compute_threads.use_reserved()  # this thread decodes for as long as there is work, then ends
        batches: dict[str | None, RowBatch] = {}
        taken: list[Request] = []  # taken from the queue this turn, perhaps not in a batch yet
        try:
            self._loop(batches, taken)
        except BaseException as error:  # a bug here must not leave requests waiting forever
            logger.exception("The batching loop stopped")
            with self._wake:
                stranded, self._waiting, self._running = self._waiting, [], False
            held = [row.request for batch in batches.values() for row in batch.rows]
            for request in dict.fromkeys([*held, *taken, *stranded]):
                if not request.finished.is_set():
                    request.finish(error)

    def _loop(self, batches: dict[str | None, RowBatch], taken: list[Request]) -> None:
        import torch

        while True:
            # Requests that arrived while the model was busy (or held by someone else) join in this turn.
            with self._lock.step(), torch.inference_mode():
                model = self._model()
                alone = getattr(model.config, "is_encoder_decoder", False)
                rows = sum(len(batch.rows) for batch in batches.values())
                joining = self._take_waiting(1 if alone else self.max_batch - rows, rows > 0)
                if joining is None:
                    return
                taken[:] = joining
                if alone:
                    for request in joining:
                        _run_alone(model, request)
                else:
                    self._join(model, batches, joining, self.prefixes)
                for batch in batches.values():
                    if batch.rows:
                        self._step(model, batch)

    @staticmethod
    def _join(model: Any, batches: dict[str | None, RowBatch], requests: list[Request],
              prefixes: PrefixCache) -> None:
        """Prefill the requests arriving in this turn, one forward per mixing group, into their batch."""
        groups: dict[str | None, list[Row]] = {}
        for request in requests:
            if request.cancelled:
                request.finish()
                continue
            try:
                row = Row(model, request)
            except Exception as error:  # noqa: BLE001 - this request fails, the batch goes on
                logger.exception("Prefill failed")
                request.finish(error)
                continue
            groups.setdefault(row.group, []).append(row)
        for group, rows in groups.items():
            for new in _prefilled(model, rows, prefixes):
                if new.rows:
                    batches.setdefault(group, RowBatch(group)).join(new.rows, cache=new.cache, mask=new.mask)

    @staticmethod
    def _step(model: Any, batch: RowBatch) -> None:
        leaving: list[Row] = []
        try:
            leaving += batch.keep([i for i, row in enumerate(batch.rows) if not row.request.cancelled])
            if batch.rows:
                batch.step(model)
                leaving += batch.keep([i for i, row in enumerate(batch.rows) if not row.done])
        except Exception as error:  # noqa: BLE001 - every row of this batch fails, the server goes on
            logger.exception("Decode step failed")
            for row in batch.rows:
                row.request.finish(error)
            batch.clear()
        for row in leaving:  # only now: the row holds nothing in the batch any more
            row.request.finish()


def _prefilled(model: Any, rows: list[Row], prefixes: PrefixCache) -> list[RowBatch]:
    """`rows` (one mixing group) prefilled in one forward; if that forward fails, each row alone,
    so that only a bad request fails. A row that failed or is done after its first token is finished."""
    try:
        return [_prefill_together(model, rows, prefixes)]
    except Exception as error:  # noqa: BLE001 - retried one row at a time: only a bad request fails
        logger.exception("Prefill failed")
        if len(rows) == 1:
            rows[0].request.finish(error)
            return []
    return [new for row in rows for new in _prefilled(model, [row], prefixes)]


def _prefill_together(model: Any, rows: list[Row], prefixes: PrefixCache) -> RowBatch:
    """One forward over the rows' prompts (raises if it fails); each row takes its first token from its
    own logits. Returns the batch of the rows that go on; the others are finished."""
    logits, cache, mask = prefill(model, rows, prefixes=prefixes)
    new = RowBatch(rows[0].group)
    new.join(rows, cache=cache, mask=mask)
    failed: dict[Row, BaseException] = {}
    for index, row in enumerate(rows):
        try:  # no row has taken a token before the forward succeeded: a retry alone emits nothing twice
            row.take(logits[index:index + 1])
        except Exception as error:  # noqa: BLE001 - this request fails, the others go on
            logger.exception("Prefill failed")
            failed[row] = error
    for row in new.keep([i for i, row in enumerate(rows) if row not in failed and not row.done]):
        row.request.finish(failed.get(row))
    return new


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
