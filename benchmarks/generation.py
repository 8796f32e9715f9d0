"""Generation throughput of the running app under concurrent visitors, beside bare `generate`.

    python benchmarks/generation.py                             # bundled model, 1/4/8/16 users
    python benchmarks/generation.py --users 1,2 --tokens 8 --requests 1 --startup   # a quick check

The machine's own speed drifts (bare batch-8 `generate` has moved by 15-30 % between two runs a
minute apart on the 2-core VM), so every measurement is repeated in `--rounds` rounds, and a ratio
is only taken between two measurements of the same round. Each round runs bare `model.generate`
first: batch 1 over every prompt (the first round's greedy answers are the reference), then batch 8
(left-padded, as a batch job would run). Then, in the app (`python -m demos`, quotas off, started
once in its own process), for each number of users U, U gradio_client clients send `--requests`
greedy `generate_tweet` calls each, all at once. Printed per measurement: aggregate tokens/s
(tokens of the answers received / wall time), p50/p95 latency of a call, how many answers differ
from batch-1 `generate` (batched float arithmetic can flip a greedy near-tie), and the CPU the
clients themselves used (they share the machine's cores with the app). Then per round: the most
users not above 8 against bare batch 8 of the same round, and one user's calls against batch-1
`generate` on the same prompts (tokens / seconds in the call); with their medians.
`--startup` adds cold start (GGUF conversion) vs cached start.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import resource
import socket
import statistics
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


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_users(url: str, users: int, requests: int,
              settings: list[Any]) -> tuple[float, float, list[float], list[tuple[int, str]]]:
    """Wall seconds, CPU seconds of this process (the clients), per-call latencies and (prompt index,
    answer) of `users` clients calling at once."""
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
    start, cpu = time.perf_counter(), own_cpu_seconds()
    for thread in threads:
        thread.join()
    return time.perf_counter() - start, own_cpu_seconds() - cpu, latencies, answers


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
    parser.add_argument("--rounds", type=int, default=3,
                        help="times every measurement is repeated; ratios are taken within a round")
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
          f"requests/user={args.requests} rounds={args.rounds}\n")
    print("| round | path | concurrent | calls | tokens/s (aggregate) | p50 latency (s) | p95 latency (s) | "
          "answers unlike batch-1 generate | client CPU (cores) |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    bare_generate(engine, dataclasses.replace(settings, max_new_tokens=2), 1)  # warm-up
    paired = max((count for count in users if count <= 8), default=None)
    reference: list[str] = []
    batched: list[tuple[float, float]] = []  # (app at `paired` users, bare batch 8) per round
    alone: list[tuple[float, float]] = []  # (app at 1 user, bare batch 1 on the same prompts) per round
    with tempfile.TemporaryDirectory() as home:
        app, url = start_app(args, Path(home))
        try:
            for round_ in range(1, args.rounds + 1):
                bare: dict[int, tuple[list[float], list[str]]] = {}
                for batch in (1, 8):
                    seconds, answers = bare[batch] = bare_generate(engine, settings, batch)
                    reference = reference or answers
                    print(f"| {round_} | bare generate, batch {batch} | {batch} | {len(seconds)} | "
                          f"{tokens_in(engine, answers) / sum(seconds):.1f} | {percentile(seconds, 0.5):.2f} | "
                          f"{percentile(seconds, 0.95):.2f} | "
                          f"{sum(a != r for a, r in zip(answers, reference, strict=True))} | |", flush=True)
                for count in users:
                    wall, cpu, latencies, answers = run_users(url, count, args.requests, values)
                    rate = tokens_in(engine, [text for _, text in answers]) / wall
                    flips = sum(text != reference[index] for index, text in answers)
                    print(f"| {round_} | app, gradio_client users | {count} | {len(answers)} | {rate:.1f} | "
                          f"{percentile(latencies, 0.5):.2f} | {percentile(latencies, 0.95):.2f} | {flips} | "
                          f"{cpu / wall:.2f} |", flush=True)
                    if count == paired:
                        bare_seconds, bare_answers = bare[8]
                        batched.append((rate, tokens_in(engine, bare_answers) / sum(bare_seconds)))
                    if count == 1:  # its few prompts answer longer or shorter than the average: compare like with like
                        same = [index for index, _ in answers]
                        bare_seconds, bare_answers = bare[1]
                        alone.append((tokens_in(engine, [text for _, text in answers]) / sum(latencies),
                                      tokens_in(engine, [bare_answers[i] for i in same])
                                      / sum(bare_seconds[i] for i in same)))
        finally:
            app.terminate()
            app.wait(timeout=60)

    print()
    if batched:
        print_ratios(f"{paired} users vs bare batch 8, tokens/s", batched)
    if alone:
        print_ratios("1 user vs bare batch-1 generate on the same prompts, tokens/s per call", alone)
    if args.startup:
        print("\n| start-up | seconds |\n|---|---:|")
        for name, seconds in startup(args.model):
            print(f"| {name} | {seconds:.1f} |")


def print_ratios(title: str, pairs: list[tuple[float, float]]) -> None:
    """One line per round (app / bare of that round) and the median ratio."""
    ratios = [app / bare for app, bare in pairs]
    rounds = ", ".join(f"{app:.1f}/{bare:.1f} = {ratio:.2f}x" for (app, bare), ratio in zip(pairs, ratios, strict=True))
    print(f"{title}, by round: {rounds}; median {statistics.median(ratios):.2f}x "
          f"(range {min(ratios):.2f}-{max(ratios):.2f}x)")

if __name__ == "__main__":
    main()
