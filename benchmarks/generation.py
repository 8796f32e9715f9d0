"""Generation speed of a tab's path (Engine.stream) against bare `model.generate`, and start-up cost.

    python benchmarks/generation.py                 # bundled model, fp32 and bf16
    python benchmarks/generation.py --model gpt2 --new-tokens 128 --repeats 5

Prints a table: time to first token, tokens/s and their ratio to bare generate (same prompt,
greedy decoding, same number of new tokens), then cold start (GGUF conversion) vs cached start.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers.generation.streamers import BaseStreamer

from serving import models
from serving.engine import Engine, GenerationSettings
from serving.models import load_model
from tasks import get_task


class TimingStreamer(BaseStreamer):
    """Records when the first generated token arrives and how many arrive."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.first: float | None = None
        self.calls = 0

    def put(self, value: torch.Tensor) -> None:
        self.calls += 1
        if self.calls == 2 and self.first is None:  # the first call carries the prompt
            self.first = time.perf_counter()

    def end(self) -> None:
        pass


def bare_generate(engine: Engine, inputs: dict, settings: GenerationSettings) -> tuple[float, float, int]:
    task = get_task("tweet")
    encoded = engine.encode(task, inputs)
    streamer = TimingStreamer()
    with torch.inference_mode():
        output = engine.model.generate(**encoded, streamer=streamer, pad_token_id=engine.tokenizer.pad_token_id,
                                       **settings.generate_kwargs())
    total = time.perf_counter() - streamer.start
    new_tokens = output.shape[1] - encoded["input_ids"].shape[1]
    return (streamer.first or time.perf_counter()) - streamer.start, total, new_tokens


def tab_generate(engine: Engine, inputs: dict, settings: GenerationSettings) -> tuple[float, float]:
    start = time.perf_counter()
    first = None
    for _ in engine.stream(get_task("tweet"), inputs, settings):
        if first is None:
            first = time.perf_counter() - start
    return first or 0.0, time.perf_counter() - start


def measure(engine: Engine, new_tokens: int, repeats: int) -> dict[str, float]:
    inputs = {"prompt": "Advice for entrepreneurs who are launching their first product"}
    # min_new_tokens is not a tab setting; greedy decoding keeps both paths on the same tokens.
    settings = GenerationSettings(temperature=0, max_new_tokens=new_tokens, repetition_penalty=1.0)
    bare_generate(engine, inputs, settings)  # warm-up
    bare, tab = [], []
    for _ in range(repeats):
        bare.append(bare_generate(engine, inputs, settings))
        tab.append(tab_generate(engine, inputs, settings))
    tokens = statistics.median(b[2] for b in bare)
    bare_total = statistics.median(b[1] for b in bare)
    tab_total = statistics.median(t[1] for t in tab)
    return {
        "tokens": tokens,
        "bare_ttft": statistics.median(b[0] for b in bare), "tab_ttft": statistics.median(t[0] for t in tab),
        "bare_tps": tokens / bare_total, "tab_tps": tokens / tab_total,
    }


def startup(model: str) -> list[tuple[str, float]]:
    rows = []
    if model == models.BUNDLED:
        with tempfile.TemporaryDirectory() as cache:
            start = time.perf_counter()
            models.bundled_model_dir(cache=Path(cache))
            rows.append(("cold start: GGUF -> safetensors cache", time.perf_counter() - start))
    start = time.perf_counter()
    load_model(model)
    rows.append(("cached start: load_model()", time.perf_counter() - start))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=models.BUNDLED)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtypes", default="float32,bfloat16")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())

    print(f"model={args.model} new_tokens={args.new_tokens} repeats={args.repeats} "
          f"threads={torch.get_num_threads()}\n")
    print("| dtype | path | TTFT (s) | tokens/s | tab / bare |")
    print("|---|---|---:|---:|---:|")
    for dtype in args.dtypes.split(","):
        engine = Engine(load_model(args.model, dtype=dtype))
        result = measure(engine, args.new_tokens, args.repeats)
        print(f"| {dtype} | bare model.generate | {result['bare_ttft']:.3f} | {result['bare_tps']:.1f} | 1.00 |")
        print(f"| {dtype} | tab (Engine.stream) | {result['tab_ttft']:.3f} | {result['tab_tps']:.1f} | "
              f"{result['tab_tps'] / result['bare_tps']:.2f} |")
    print("\n| start-up | seconds |\n|---|---:|")
    for name, seconds in startup(args.model):
        print(f"| {name} | {seconds:.1f} |")


if __name__ == "__main__":
    main()
