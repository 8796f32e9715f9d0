"""Generation throughput of the running app under concurrent visitors, beside bare `generate`.

    python benchmarks/generation.py                             # bundled model, 1/4/8/16 users
    python benchmarks/generation.py --users 1,2 --tokens 8 --requests 1 --startup   # a quick check

Bare `model.generate` first: batch 1 over every prompt (its greedy answers are the reference),
then batch 8 (left-padded, as a batch job would run). Then the app (`python -m demos`, quotas
off) is started in its own process and, for each number of users U, U gradio_client clients
send `--requests` greedy `generate_tweet` calls each, all at once. Printed: aggregate tokens/s
(tokens of the answers received / wall time), p50/p95 latency of a call, and how many answers
differ from batch-1 `generate` (batched float arithmetic can flip a greedy near-tie). One user's
calls are also compared with batch-1 `generate` on the same prompts (tokens / seconds in the call).
`--startup` adds cold start (GGUF conversion) vs cached start.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import torch

from hub.paths import flywheel_cache
from serving import models
from serving.batching import STREAM_EVERY
from serving.engine import Engine, GenerationSettings
from serving.models import load_model
from tasks import get_task

PROMPTS = [
    "Advice for entrepreneurs", "Tips for remote teams", "Why sleep matters", "Learning to code at 40",
    "The best time to hire", "Saying no to meetings", "Pricing your first product", "Writing clear emails",
    "How to run a retrospective", "Lessons from a failed startup", "Public speaking for introverts",
    "Choosing a cofounder", "Why documentation wins", "Staying focused while working from home",
    "Negotiating a raise", "Building habits that last",
]
TASK = get_task("tweet")


def percentile(values: list[float], fraction: float) -> float:
    """The nearest-rank percentile (0 < fraction <= 1)."""
    ranked = sorted(values)
    return ranked[max(0, math.ceil(fraction * len(ranked)) - 1)]


def tokens_in(engine: Engine, texts: list[str]) -> int:
    """Answer length in tokens, counted the same way for every path (the text re-encoded)."""
    return sum(len(engine.tokenizer(text, add_special_tokens=False)["input_ids"]) for text in texts)


def bare_generate(engine: Engine, settings: GenerationSettings, batch: int) -> tuple[list[float], list[str]]:
    """Seconds of each `generate` call answering every prompt in left-padded batches of `batch`, and the answers."""
    pad = engine.tokenizer.pad_token_id
    prompts = [engine.encode(TASK, {"prompt": prompt})["input_ids"][0] for prompt in PROMPTS]
    answers: list[str] = []
    seconds: list[float] = []
    for first in range(0, len(prompts), batch):
        start = time.perf_counter()
        group = prompts[first:first + batch]
        width = max(len(ids) for ids in group)
        input_ids = torch.stack([torch.cat([ids.new_full((width - len(ids),), pad), ids]) for ids in group])
        mask = torch.stack([torch.cat([torch.zeros(width - len(ids), dtype=torch.long),
                                       torch.ones(len(ids), dtype=torch.long)]) for ids in group])
        with torch.inference_mode():
            output = engine.model.generate(input_ids=input_ids, attention_mask=mask, pad_token_id=pad,
                                           **settings.generate_kwargs())
        seconds.append(time.perf_counter() - start)
        answers += engine.tokenizer.batch_decode(output[:, width:], skip_special_tokens=True)
    return seconds, answers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_app(args: argparse.Namespace, home: Path) -> tuple[subprocess.Popen, str]:
    """`python -m demos` in its own process (its server threads do not share our GIL); wait until it answers."""
    port = free_port()
    command = [sys.executable, "-m", "demos", "--model", args.model, "--dtype", args.dtype, "--port", str(port),
               "--concurrency", str(args.concurrency), "--queue-size", "1024", "--stream-every", str(args.stream_every)]
    for quota in ("generation", "generation-per-ip", "feedback", "feedback-per-ip"):
        command += ["--limit", f"{quota}=off"]
    # Its own home (feedback, secrets), the converted bundled model shared with this process.
    env = {**os.environ, "FLYWHEEL_HOME": str(home), "FLYWHEEL_CACHE": str(flywheel_cache())}
    with (home / "app.log").open("w") as log:
        app = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 600
    while True:
        try:
            urllib.request.urlopen(url, timeout=5)
            return app, url
        except OSError:
            if app.poll() is not None or time.monotonic() > deadline:
                app.kill()
                raise SystemExit(f"the app did not start; see {home / 'app.log'}") from None
            time.sleep(1)


def run_users(url: str, users: int, requests: int, settings: list[Any]) -> tuple[float, list[float], list[tuple]]:
    """Wall seconds, per-call latencies and (prompt index, answer) of `users` clients calling at once."""
    from gradio_client import Client

    clients = [Client(url, verbose=False) for _ in range(users)]
    for client in clients:  # connection and session set-up, untimed
        client.predict(PROMPTS[0], *settings[:4], 1, None, api_name="/generate_tweet")
    latencies: list[float] = []
    answers: list[tuple[int, str]] = []
    lock = threading.Lock()
    ready = threading.Barrier(users + 1)

    def visitor(number: int, client: Any) -> None:
        ready.wait()
        for request in range(requests):
            index = (number * requests + request) % len(PROMPTS)
            start = time.perf_counter()
            text = client.predict(PROMPTS[index], *settings, api_name="/generate_tweet")[0]
            with lock:
                latencies.append(time.perf_counter() - start)
                answers.append((index, text))

    threads = [threading.Thread(target=visitor, args=(i, client)) for i, client in enumerate(clients)]
    for thread in threads:
        thread.start()
    ready.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    return time.perf_counter() - start, latencies, answers


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
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--tokens", type=int, default=64, help="max_new_tokens of every call (greedy)")
    parser.add_argument("--users", default="1,4,8,16", help="comma-separated numbers of concurrent users")
    parser.add_argument("--requests", type=int, default=2, help="calls each user makes, one after another")
    parser.add_argument("--repetition-penalty", type=float, default=1.0)
    parser.add_argument("--concurrency", type=int, default=16, help="the app's --concurrency")
    parser.add_argument("--stream-every", type=float, default=STREAM_EVERY, help="the app's --stream-every")
    parser.add_argument("--startup", action="store_true", help="also time cold and cached start")
    args = parser.parse_args()
    users = [int(n) for n in args.users.split(",")]
    settings = GenerationSettings(temperature=0, repetition_penalty=args.repetition_penalty,
                                  max_new_tokens=args.tokens)
    values = [0, settings.top_k, settings.top_p, settings.repetition_penalty, settings.max_new_tokens, None]

    engine = Engine(load_model(args.model, dtype=args.dtype))
    print(f"model={args.model} dtype={args.dtype} greedy max_new_tokens={args.tokens} "
          f"repetition_penalty={args.repetition_penalty} threads={torch.get_num_threads()} "
          f"requests/user={args.requests}\n")
    print("| path | concurrent | calls | tokens/s (aggregate) | p50 latency (s) | p95 latency (s) | "
          "answers unlike batch-1 generate |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    bare_generate(engine, dataclasses.replace(settings, max_new_tokens=2), 1)  # warm-up
    reference: list[str] = []
    one_by_one: list[float] = []
    for batch in (1, 8):
        seconds, answers = bare_generate(engine, settings, batch)
        reference, one_by_one = reference or answers, one_by_one or seconds
        print(f"| bare generate, batch {batch} | {batch} | {len(seconds)} | "
              f"{tokens_in(engine, answers) / sum(seconds):.1f} | {percentile(seconds, 0.5):.2f} | "
              f"{percentile(seconds, 0.95):.2f} | {sum(a != r for a, r in zip(answers, reference, strict=True))} |")

    alone: list[tuple[float, float]] = []
    with tempfile.TemporaryDirectory() as home:
        app, url = start_app(args, Path(home))
        try:
            for count in users:
                wall, latencies, answers = run_users(url, count, args.requests, values)
                flips = sum(text != reference[index] for index, text in answers)
                print(f"| app, gradio_client users | {count} | {len(answers)} | "
                      f"{tokens_in(engine, [text for _, text in answers]) / wall:.1f} | "
                      f"{percentile(latencies, 0.5):.2f} | {percentile(latencies, 0.95):.2f} | {flips} |")
                if count == 1:  # its few prompts answer longer or shorter than the average: compare like with like
                    same = [index for index, _ in answers]
                    alone.append((tokens_in(engine, [text for _, text in answers]) / sum(latencies),
                                  tokens_in(engine, [reference[i] for i in same]) / sum(one_by_one[i] for i in same)))
        finally:
            app.terminate()
            app.wait(timeout=60)

    for app_rate, bare_rate in alone:
        print(f"\n1 user on the same prompts, per call: app {app_rate:.1f} tok/s, bare batch-1 generate "
              f"{bare_rate:.1f} tok/s ({app_rate / bare_rate:.2f}x)")
    if args.startup:
        print("\n| start-up | seconds |\n|---|---:|")
        for name, seconds in startup(args.model):
            print(f"| {name} | {seconds:.1f} |")


if __name__ == "__main__":
    main()
