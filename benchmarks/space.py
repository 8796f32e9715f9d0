"""What the Space's design buys: switching adapters vs loading them, one base + N adapters vs N models.

    python benchmarks/space.py                        # bundled SmolLM2-135M, 7 LoRA adapters (r16)
    python benchmarks/space.py --model gpt2 --adapters 3 --rank 8

Prints two tables:

1. Time per request to switch the active adapter (`set_adapter`, what `Engine` does for every
   request), against loading an adapter from disk (`Engine.load_adapter`: hash, validate, load;
   what a hot reload does once per new revision), and, for scale, reloading the base model
   and one forward pass of a short prompt. A row times a possible fast path for `Engine`
   (setting the active adapter on a cached list of LoRA layers) and checks it gives the
   same logits as `set_adapter`.
2. Resident memory (RSS) and start-up time of one base model with N adapters against N
   merged models (each base + its adapter merged, as serving one model per task would need).
   Each is measured in a fresh process; weights are copied into private memory so that
   models read from the same file do not share pages (separately saved merged models would not).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil


def make_adapters(model_ref: str, out: Path, count: int, rank: int) -> list[Path]:
    """Save `count` LoRA adapters (all linear layers, random non-zero weights) for `model_ref`."""
    import torch
    from peft import LoraConfig, get_peft_model

    from serving.models import load_model

    base = load_model(model_ref).model
    folders = []
    for index in range(count):
        torch.manual_seed(index)
        config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear", init_lora_weights=False,
                            task_type="CAUSAL_LM")
        peft_model = get_peft_model(base, config)
        folder = out / f"adapter-{index}"
        peft_model.save_pretrained(folder, safe_serialization=True)
        base = peft_model.unload()
        folders.append(folder)
    return folders


def time_switching(model_ref: str, folders: list[Path], switches: int) -> dict[str, float]:
    """Seconds per operation (medians) in one process holding one base model."""
    import torch

    from serving.engine import Engine
    from serving.models import load_model

    start = time.perf_counter()
    engine = Engine(load_model(model_ref))
    base_load = time.perf_counter() - start
    loads, load_cpu = [], []
    for index, folder in enumerate(folders):
        start, cpu = time.perf_counter(), time.thread_time()
        engine.load_adapter(f"task{index}", str(folder))
        loads.append(time.perf_counter() - start)
        load_cpu.append(time.thread_time() - cpu)
    # A hot reload: the same key gets a new revision (the old one is unloaded).
    reloads = []
    for folder in folders[1:4]:
        start = time.perf_counter()
        engine.load_adapter("task0", str(folder))
        reloads.append(time.perf_counter() - start)
    names = [info.peft_name for info in engine.adapters().values()]
    model = engine.model
    switch_times, switch_cpu, frozen_times = [], [], []
    for step in range(switches):
        start, cpu = time.perf_counter(), time.thread_time()
        model.set_adapter(names[step % len(names)])  # exactly what Engine does per request
        switch_times.append(time.perf_counter() - start)
        switch_cpu.append(time.thread_time() - cpu)
        start = time.perf_counter()
        model.set_adapter(names[(step + 1) % len(names)], inference_mode=True)  # no requires_grad flips
        frozen_times.append(time.perf_counter() - start)
    # A possible fast path for Engine: set the active adapter on cached LoRA layers only.
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    fast_times = []
    for step in range(switches):
        start = time.perf_counter()
        for layer in layers:
            layer._active_adapter = [names[step % len(names)]]
        fast_times.append(time.perf_counter() - start)
    ids = engine.tokenizer("Write a tweet with advice for entrepreneurs who are starting out today.",
                           return_tensors="pt")
    forwards = []
    with torch.inference_mode():
        model.set_adapter(names[1])
        reference = model(**ids).logits
        model.set_adapter(names[0])
        other = model(**ids).logits
        for layer in layers:
            layer._active_adapter = [names[1]]
        fast = model(**ids).logits
        fast_same = bool(torch.equal(fast, reference)) and not torch.equal(fast, other)
        for _ in range(5):
            start = time.perf_counter()
            model(**ids)
            forwards.append(time.perf_counter() - start)
    return {"switch": statistics.median(switch_times), "switch_p95": _p95(switch_times),
            "switch_cpu": statistics.median(switch_cpu), "switch_frozen": statistics.median(frozen_times),
            "load": statistics.median(loads[1:] or loads),
            "load_cpu": statistics.median(load_cpu[1:] or load_cpu),
            "reload": statistics.median(reloads), "switch_fast": statistics.median(fast_times),
            "fast_same": float(fast_same),
            "base_load": base_load, "forward": statistics.median(forwards[1:]),
            "prompt_tokens": int(ids["input_ids"].shape[1])}


def measure_memory(scenario: str, model_ref: str, folders: list[str]) -> dict[str, float]:
    """Run in a fresh process: load the scenario's models, return RSS (MiB) and seconds taken."""
    import gc

    import torch

    from serving.engine import Engine
    from serving.models import load_model

    process = psutil.Process()
    torch.set_grad_enabled(False)
    before = process.memory_info().rss
    start = time.perf_counter()
    keep: list[Any] = []
    if scenario == "base":
        keep.append(_private(load_model(model_ref).model))
    elif scenario == "adapters":
        engine = Engine(load_model(model_ref))
        _private(engine.loaded.model)
        for index, folder in enumerate(folders):
            engine.load_adapter(f"task{index}", folder)
        keep.append(engine)
    elif scenario == "merged":
        from peft import PeftModel

        for folder in folders:
            base = _private(load_model(model_ref).model)
            keep.append(PeftModel.from_pretrained(base, folder).merge_and_unload())
    else:
        raise ValueError(scenario)
    seconds = time.perf_counter() - start
    gc.collect()
    rss = process.memory_info().rss
    return {"rss_mib": rss / 2**20, "added_mib": (rss - before) / 2**20, "seconds": seconds}


def _private(model: Any) -> Any:
    """Copy every weight into memory of its own (no pages shared through a memory-mapped file)."""
    for tensor in [*model.parameters(), *model.buffers()]:
        tensor.data = tensor.data.clone()
    return model


def _p95(values: list[float]) -> float:
    return sorted(values)[max(0, int(len(values) * 0.95) - 1)]


def _run_scenario(scenario: str, model_ref: str, folders: list[Path]) -> dict[str, float]:
    command = [sys.executable, __file__, "--scenario", scenario, "--model", model_ref,
               "--folders", json.dumps([str(f) for f in folders])]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"scenario {scenario} failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="bundled", help="Base model (default: the bundled SmolLM2-135M).")
    parser.add_argument("--adapters", type=int, default=7, help="Adapters (default 7, one per task).")
    parser.add_argument("--rank", type=int, default=16, help="LoRA rank (default 16, the trainers' default).")
    parser.add_argument("--switches", type=int, default=500, help="Adapter switches timed.")
    parser.add_argument("--parts", default="timing,memory", help="Which tables: timing, memory or both.")
    parser.add_argument("--scenario", help=argparse.SUPPRESS)
    parser.add_argument("--folders", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.scenario:  # child process of the memory comparison
        print(json.dumps(measure_memory(args.scenario, args.model, json.loads(args.folders))))
        return 0

    import torch

    from serving.models import load_model

    load_model(args.model)  # convert the bundled model once, outside every timing
    with tempfile.TemporaryDirectory(prefix="flywheel-bench-") as tmp:
        folders = make_adapters(args.model, Path(tmp), args.adapters, args.rank)
        size = sum(f.stat().st_size for f in folders[0].glob("*.safetensors")) / 2**20
        print(f"model={args.model} adapters={args.adapters} LoRA r={args.rank} all-linear "
              f"({size:.1f} MiB each) threads={torch.get_num_threads()} "
              f"load average={os.getloadavg()[0]:.1f}\n")
        if "timing" in args.parts:
            print_timing(time_switching(args.model, folders, args.switches))
        if "memory" in args.parts:
            print_memory({name: _run_scenario(name, args.model, folders)
                          for name in ("base", "adapters", "merged")}, args.adapters)
    return 0


def print_timing(timing: dict[str, float]) -> None:
    """The switching table."""
    ms = {key: value * 1e3 for key, value in timing.items()}
    rows = [
        ("switch adapter per request (`set_adapter`, as Engine does), median",
         f"{ms['switch']:.2f} ms", f"{ms['switch_cpu']:.2f} ms"),
        ("same, p95", f"{ms['switch_p95']:.2f} ms", ""),
        ("`set_adapter(..., inference_mode=True)`, median", f"{ms['switch_frozen']:.2f} ms", ""),
        (f"cached-LoRA-layer switch (possible fast path; same logits: {bool(timing['fast_same'])})",
         f"{ms['switch_fast']:.3f} ms", ""),
        ("load adapter from disk (`Engine.load_adapter`: hash, validate, load)", f"{ms['load']:.1f} ms",
         f"{ms['load_cpu']:.1f} ms"),
        ("hot reload of a new revision (load + retire old)", f"{ms['reload']:.1f} ms", ""),
        ("reload the base model from disk (avoided)", f"{ms['base_load']:.0f} ms", ""),
        (f"one forward pass, {timing['prompt_tokens']}-token prompt (for scale)",
         f"{ms['forward']:.1f} ms", ""),
    ]
    print("| operation | wall time | CPU time of the thread |\n|---|---:|---:|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(f"\nloading from disk / switching: {timing['load'] / timing['switch']:.0f}x wall, "
          f"{timing['load_cpu'] / timing['switch_cpu']:.0f}x CPU\n")


def print_memory(results: dict[str, dict[str, float]], n: int) -> None:
    """The memory table (one fresh process per row)."""
    labels = {"base": "base model alone", "adapters": f"1 base + {n} adapters",
              "merged": f"{n} merged models"}
    print("| setup | RSS (MiB) | added by models (MiB) | load time (s) |\n|---|---:|---:|---:|")
    for name, label in labels.items():
        r = results[name]
        print(f"| {label} | {r['rss_mib']:.0f} | {r['added_mib']:.0f} | {r['seconds']:.1f} |")
    ratio = results["merged"]["added_mib"] / results["adapters"]["added_mib"]
    print(f"\n{n} merged models need {ratio:.1f}x the memory of 1 base + {n} adapters.")


if __name__ == "__main__":
    raise SystemExit(main())
