"""The rows of a continuous batch and their shared KV cache (used by `serving.batching`).

A row is one request being decoded: its tokens so far, the logits processors `generate` would
apply for its settings, its own sampler and its stop rule. Rows decoded together share one
left-padded `DynamicCache`; `mask` marks which cache positions are real for each row, and each
row feeds its own position ids, so a row's attention sees exactly what it would see alone. Rows
that arrive together are prefilled together (`prefill`): one forward over their left-padded prompts.
"""

from __future__ import annotations

from typing import Any, Protocol

from serving.models import inner_model
from serving.prefix_cache import Layers, PrefixCache

BASE_ROW = "__base__"
"""PEFT's name for "no adapter" in a mixed-adapter batch."""


class Request(Protocol):
    """What a row needs of the request it serves (`serving.batching.Request`)."""

    encoded: dict[str, Any]
    generate_kwargs: dict[str, Any]
    adapter: str | None
    seed: int | None
    prefix: int

    @property
    def cancelled(self) -> bool: ...

    def emit(self, token: int) -> None: ...

    def finish(self, error: BaseException | None = None) -> None: ...


def mixing_group(model: Any, adapter: str | None) -> str | None:
    """The batch a row decodes in: None (the shared one) for the base model and every adapter PEFT
    can apply per row; an adapter it cannot (DoRA) decodes its rows in a batch of its own."""
    config = getattr(model, "peft_config", {}).get(adapter) if adapter else None
    return adapter if getattr(config, "use_dora", False) else None


def forward(model: Any, inputs: dict[str, Any], adapters: list[str], group: str | None) -> Any:
    """The last position's logits of each row (float32), each through its adapter."""
    import torch

    if group is not None:  # every row uses this one adapter
        if model.active_adapter != group:  # set_adapter walks every module (~30 ms)
            model.set_adapter(group)
    elif hasattr(model, "peft_config"):
        inputs = {**inputs, "adapter_names": adapters}
    return model(**inputs, use_cache=True).logits[:, -1].to(dtype=torch.float32)


class Row:
    """One request inside a batch."""

    def __init__(self, model: Any, request: Request) -> None:
        import torch

        base = inner_model(model)
        self.request = request
        self.ids = request.encoded["input_ids"]
        self.position = self.ids.shape[1]
        self.prefix = tuple(self.ids[0, :request.prefix].tolist())
        """The leading prompt tokens other requests share (`serving.prefix_cache`); () for none."""
        self.adapter = request.adapter or BASE_ROW
        self.group = mixing_group(model, request.adapter)
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
        if config.do_sample:  # its own generator: the draws do not depend on the other rows
            self.sampler = torch.Generator(device=self.ids.device)
            if request.seed is None:
                self.sampler.seed()
            else:
                self.sampler.manual_seed(request.seed)

    @property
    def done(self) -> bool:
        return self.request.cancelled or self.generated >= self.max_new_tokens or (
            self.generated > 0 and int(self.ids[0, -1]) in self.eos)

    def take(self, logits: Any) -> None:
        """Choose the next token from this row's logits (shape [1, vocab]) and emit it."""
        import torch

        scores = self.processors(self.ids, logits)
        if self.sampler is None:
            token = int(scores.argmax(dim=-1))
        else:
            token = int(torch.multinomial(scores.softmax(dim=-1), 1, generator=self.sampler))
        self.ids = torch.cat([self.ids, self.ids.new_tensor([[token]])], dim=1)
        self.generated += 1
        self.request.emit(token)


def prefill(model: Any, rows: list[Row], *, prefixes: PrefixCache | None = None) -> tuple[Any, Any, Any]:
    """One forward over the prompts of `rows` (all of one mixing group), left-padded to the longest.

    With `prefixes`, a row's shared prefix is not fed again: its keys and values come from the cache
    (computed there on first use), left-padded to the longest prefix, and the forward feeds the rest
    of each prompt, left-padded to the longest rest. Each row numbers its positions from its first
    real token, as `generate` does, and the mask hides the padding from its attention, so it sees
    exactly what it would see alone.

    Returns each row's logits for its first token (row i: `logits[i:i + 1]`, for `Row.take`), and the
    rows' KV cache and mask (zeros on the padding), as `RowBatch.join` takes them.
    """
    import torch
    from transformers import DynamicCache

    known = [_prefix_layers(model, row, prefixes) for row in rows]
    cached = [0 if layers is None else len(row.prefix) for row, layers in zip(rows, known, strict=True)]
    width = max(cached)
    rests = [row.ids[:, skip:] for row, skip in zip(rows, cached, strict=True)]
    length = max(rest.shape[1] for rest in rests)
    mask = torch.cat([torch.cat([_pad_left(torch.ones_like(row.ids[:, :skip]), width),
                                 _pad_left(torch.ones_like(rest), length)], dim=1)
                      for row, skip, rest in zip(rows, cached, rests, strict=True)])
    cache = DynamicCache() if width == 0 else _cache_of(_stacked(known, width))
    inputs = {"input_ids": torch.cat([_pad_left(rest, length) for rest in rests]),
              "position_ids": (mask.cumsum(-1) - 1).clamp(min=0)[:, width:],
              # Without padding, no mask: the attention path `generate` takes for one request.
              "attention_mask": None if bool(mask.all()) else mask, "cache": cache}
    if _supports_logits_to_keep(model):
        inputs["logits_to_keep"] = 1
    return forward(model, inputs, [row.adapter for row in rows], rows[0].group), cache, mask


def _prefix_layers(model: Any, row: Row, prefixes: PrefixCache | None) -> Layers | None:
    """The keys and values of the row's shared prefix (computed once per adapter), or None: no prefix."""
    if prefixes is None or not row.prefix:
        return None

    def compute() -> Layers:
        import torch
        from transformers import DynamicCache

        cache = DynamicCache()
        inputs: dict[str, Any] = {"input_ids": torch.tensor([row.prefix]), "cache": cache}
        if _supports_logits_to_keep(model):
            inputs["logits_to_keep"] = 1
        forward(model, inputs, [row.adapter], row.group)
        return _layers(cache)

    return prefixes.get(row.adapter, row.prefix, compute)


def _stacked(known: list[Layers | None], width: int) -> Layers:
    """Per layer, the rows' prefix keys and values left-padded to `width` (zeros for a row without one)."""
    import torch

    template = next(layers for layers in known if layers is not None)

    def padded(layers: Layers | None, index: int, part: int) -> Any:
        empty = template[index][part][:, :, :0]  # a row without a prefix: only padding
        return _pad_left(empty if layers is None else layers[index][part], width)

    return [tuple(torch.cat([padded(layers, index, part) for layers in known]) for part in (0, 1))
            for index in range(len(template))]


def _supports_logits_to_keep(model: Any) -> bool:
    return inner_model(model)._supports_logits_to_keep()


class RowBatch:
    """Rows decoded together, and their left-padded KV cache."""

    def __init__(self, group: str | None) -> None:
        self.group = group
        self.clear()

    def clear(self) -> None:
        self.rows: list[Row] = []
        self.cache: Any = None
        self.mask: Any = None

    def join(self, rows: list[Row], *, cache: Any, mask: Any) -> None:
        """Add prefilled rows with their left-padded cache and its mask (one mask row per row, zeros
        on the padding): the shorter of their cache and the batch's is padded on the left."""
        import torch

        if not self.rows:
            self.rows, self.cache, self.mask = list(rows), cache, mask
            return
        length = max(self.mask.shape[1], mask.shape[1])
        self.cache = _cache_of([
            (torch.cat([_pad_left(old_k, length), _pad_left(new_k, length)]),
             torch.cat([_pad_left(old_v, length), _pad_left(new_v, length)]))
            for (old_k, old_v), (new_k, new_v) in zip(_layers(self.cache), _layers(cache), strict=True)
        ])
        self.mask = torch.cat([_pad_left(self.mask, length), _pad_left(mask, length)])
        self.rows = [*self.rows, *rows]

    def step(self, model: Any) -> None:
        """Decode one token for every row."""
        import torch

        self.mask = torch.cat([self.mask, self.mask.new_ones(len(self.rows), 1)], dim=1)
        inputs = {"input_ids": torch.cat([row.ids[:, -1:] for row in self.rows]),
                  "position_ids": torch.tensor([[row.position] for row in self.rows]),
                  # Without padding, no mask: the attention path `generate` takes for one request.
                  "attention_mask": None if bool(self.mask.all()) else self.mask, "cache": self.cache}
        logits = forward(model, inputs, [row.adapter for row in self.rows], self.group)
        for index, row in enumerate(self.rows):
            row.position += 1
            row.take(logits[index:index + 1])

    def keep(self, indices: list[int]) -> list[Row]:
        """Keep only these rows (trimming padding no row needs any more); return the others."""
        import torch

        leaving = [row for i, row in enumerate(self.rows) if i not in set(indices)]
        if not leaving:
            return []
        if not indices:
            self.clear()
            return leaving
        index = torch.tensor(indices)
        mask = self.mask[index]
        start = int(mask.any(dim=0).long().argmax())
        self.cache = _cache_of([(k[index][:, :, start:], v[index][:, :, start:]) for k, v in _layers(self.cache)])
        self.mask = mask[:, start:]
        self.rows = [self.rows[i] for i in indices]
        return leaving


def _layers(cache: Any) -> list[tuple[Any, Any]]:
    return [(layer.keys, layer.values) for layer in cache.layers]


def _cache_of(layers: list[tuple[Any, Any]]) -> Any:
    from transformers import DynamicCache

    return DynamicCache(ddp_cache_data=layers)


def _pad_left(tensor: Any, length: int) -> Any:
    """Zeros on the left of the sequence axis (-2 for keys and values, -1 for a mask) up to `length`."""
    import torch

    axis = -1 if tensor.dim() == 2 else -2
    missing = length - tensor.shape[axis]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[axis] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=axis)
