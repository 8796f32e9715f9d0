"""Feedback throughput: records/s and latency of tweet ratings under 1, 8 and 32 concurrent clients.

    python benchmarks/feedback.py                       # the demos suite (tiny model)
    python -m benchmarks.feedback --app minimal --requests 100 --every 0.05

Rows: bare `FeedbackCallback.log()` from threads (the store's own ceiling), then the app's
`feedback_tweet` endpoint driven by concurrent `gradio_client` clients and, for the suite, the
plain HTTP route `POST /feedback/tweet` (`demos.feedback_client.send_feedback`, one keep-alive
connection per client), each checked afterwards (rows on disk == requests, all valid), then the
gradio_client load with Hub sync to the local test Hub, reporting commits per minute and whether
every row reached the Hub.

The suite accepts feedback only with a valid ticket (`hub.feedback.tickets`), so each
request carries one, signed with the benchmark's own `FLYWHEEL_SECRET` exactly as the app
signs an output (generating 1,600 outputs first would measure the model, not feedback);
quotas are off. After the tables: how many forged feedback calls the suite accepted through
either path (must be 0 of N) and what checking a ticket costs per row.
"""

from __future__ import annotations

import argparse
import base64
import functools
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gradio as gr  # module level: Gradio resolves the `gr.Request` annotation in this namespace
import httpx
import pytest

if not __package__:  # run as a script: tests/ (the local Hub, the tiny model) is not an installed package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from demos.feedback_client import send_feedback
from hub.feedback.callback import FeedbackCallback
from hub.feedback.loading import load_feedback
from hub.feedback.tickets import SECRET_ENV, TICKET_TTL, sign_ticket, verify_ticket
from serving import startup_heap
from tests.hub_server import HubServer

RATINGS = {"relevance": 4, "clarity": 5, "originality": 3, "engagement": 4}
REPO = "user/flywheel-feedback-bench"
PROMPT = "Advice for founders"
SECRET = "the feedback benchmark's own key, never a Space's"
CLIENT_PROCESSES = 4
"""Processes the concurrent clients are spread over (see `run_clients`)."""
GENERATION = {"temperature": 0.7, "top_k": 50, "top_p": 0.9, "repetition_penalty": 1.1, "max_new_tokens": 96,
              "seed": None}
ServedFor = Callable[[str], Any]
"""The served-by sent with an output's text: a signed one for the suite, None for the minimal app."""


@functools.cache
def tiny_engine(workdir: Path) -> Any:
    from serving.engine import Engine
    from serving.models import load_model
    from tests.tiny_models import build_causal_lm

    return Engine(load_model(str(build_causal_lm(workdir / "tiny-model"))))


def build_suite(feedback: FeedbackCallback, workdir: Path, concurrency: int) -> Any:
    """The real seven-tab app around a tiny random model (feedback does not depend on the model)."""
    from demos.app import build_app
    from demos.quotas import Access, Limits

    return build_app(tiny_engine(workdir), feedback=feedback, concurrency_limit=concurrency,
                     access=Access(limits=Limits.off(), queue_size=4096))


def signed(base: str, text: str, *, key: str = SECRET, ttl: float = TICKET_TTL, now: float | None = None,
           ) -> dict[str, Any]:
    """The served-by the suite returns with `text` (an output of the base model for `PROMPT`)."""
    model = {"base": base, "adapter": None, "revision": None}
    ticket = sign_ticket(key=key.encode(), task="tweet", inputs={"prompt": PROMPT}, completion=text, model=model,
                         generation=GENERATION, ttl=ttl, now=now)
    return {**model, "generation": GENERATION, "ticket": ticket}


def build_minimal(feedback: FeedbackCallback, workdir: Path, concurrency: int) -> Any:
    """One `feedback_tweet` endpoint with the suite's inputs, calling `log()` and nothing else."""
    with gr.Blocks() as app:
        boxes = [gr.Textbox(), gr.Textbox()] + [gr.Slider(1, 5, step=1) for _ in RATINGS] + [gr.JSON()]
        status = gr.Markdown()

        def feedback_tweet(prompt: str, completion: str, relevance: float, clarity: float, originality: float,
                           engagement: float, served: Any, request: gr.Request) -> str:
            ratings = {"relevance": int(relevance), "clarity": int(clarity), "originality": int(originality),
                       "engagement": int(engagement)}
            record = feedback.log(task="tweet", kind="rating", inputs={"prompt": prompt},
                                  completion=completion, ratings=ratings,
                                  session=feedback.session_id(request.session_hash))
            return f"Saved {record['id'][:8]}"

        gr.Button().click(feedback_tweet, boxes, status, api_name="feedback_tweet")
    app.queue(default_concurrency_limit=concurrency)
    return app


def run_clients(url: str, base: str | None, *, clients: int, requests: int, via: str = "gradio_client",
                processes: int = CLIENT_PROCESSES) -> tuple[list[float], float]:
    """Latencies (s) of `clients` concurrent clients sending `requests` each, and the wall time.

    The clients run in `processes` processes of their own that start together, as visitors do: in the
    server's process their threads would share its GIL (32 client threads beside the server gave p99
    0.14-0.47 s on the HTTP route, with the server's own work unchanged), and 32 in one process queue
    for that process's GIL in the same way. `base` is the base model the suite's tickets name (None:
    the minimal app, no ticket). `via` is "gradio_client" or "http" (the suite's feedback route). Each
    client first sends one untimed request (connection and session set-up), so the folder ends up with
    `clients * (requests + 1)` rows.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    processes = max(1, min(processes, clients))
    shares = [clients // processes + (n < clients % processes) for n in range(processes)]
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager, ProcessPoolExecutor(max_workers=processes, mp_context=context) as pool:
        ready = manager.Barrier(processes)
        jobs = [pool.submit(_clients_in_this_process, url, base, clients=share, requests=requests, via=via,
                            ready=ready) for share in shares]
        results = [job.result() for job in jobs]
    starts, ends = zip(*(span for _, span in results), strict=True)
    return [latency for latencies, _ in results for latency in latencies], max(ends) - min(starts)


def _clients_in_this_process(url: str, base: str | None, *, clients: int, requests: int, via: str,
                             ready: Any) -> tuple[list[float], tuple[float, float]]:
    """Latencies and (start, end) on the machine's monotonic clock, which every process shares."""
    from gradio_client import Client

    served_for: ServedFor = (lambda text: None) if base is None else functools.partial(signed, base)

    pool = [Client(url, verbose=False) if via == "gradio_client" else httpx.Client(base_url=url)
            for _ in range(clients)]
    for client in pool:
        send(client, "warm-up", served_for)
    latencies: list[float] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def client_loop(client: Any, number: int) -> None:
        try:
            for i in range(requests):
                start = time.perf_counter()
                send(client, f"Tweet {i} of client {number}", served_for)
                with lock:
                    latencies.append(time.perf_counter() - start)
        except BaseException as error:  # noqa: BLE001 - reported after the run
            errors.append(error)

    threads = [threading.Thread(target=client_loop, args=(client, n)) for n, client in enumerate(pool)]
    ready.wait()  # every process has its clients connected: the load starts at once
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    end = time.perf_counter()
    for client in pool:
        client.close()
    if errors:
        raise RuntimeError(f"{len(errors)} client(s) failed: {errors[0]!r}")
    return latencies, (start, end)


def send(client: Any, text: str, served_for: ServedFor) -> None:
    """Rate `text` through `client`: a gradio_client `Client`, or an `httpx.Client` for the HTTP route."""
    if isinstance(client, httpx.Client):
        send_feedback(str(client.base_url), "tweet", inputs={"prompt": PROMPT}, output=text, ratings=RATINGS,
                      served_by=served_for(text), http=client)
    else:
        client.predict(PROMPT, text, *RATINGS.values(), served_for(text), api_name="/feedback_tweet")


def run_direct(feedback: FeedbackCallback, *, threads: int, requests: int) -> tuple[list[float], float]:
    latencies: list[float] = []
    lock = threading.Lock()

    def loop(number: int) -> None:
        for i in range(requests):
            start = time.perf_counter()
            feedback.log(task="tweet", kind="rating", inputs={"prompt": "Advice for founders"},
                         completion=f"Tweet {i} of writer {number}", ratings=RATINGS)
            with lock:
                latencies.append(time.perf_counter() - start)

    pool = [threading.Thread(target=loop, args=(n,)) for n in range(threads)]
    start = time.perf_counter()
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return latencies, time.perf_counter() - start


def rows_ok(folder: Path, expected: int) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a malformed row would raise here
        count = len(load_feedback(folder, task="tweet"))
    return "yes" if count == expected else f"NO ({count} != {expected})"


def row(mode: str, clients: int, latencies: list[float], wall: float, check: str, extra: str = "") -> str:
    cuts = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else latencies * 99
    return (f"| {mode} | {clients} | {len(latencies)} | {len(latencies) / wall:.0f} | "
            f"{cuts[49] * 1000:.1f} | {cuts[98] * 1000:.1f} | {check} | {extra} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--app", choices=("suite", "minimal"), default="suite")
    parser.add_argument("--clients", default="1,8,32", help="Comma-separated client counts.")
    parser.add_argument("--requests", type=int, default=50, help="Requests per client.")
    parser.add_argument("--concurrency", type=int, default=32, help="Gradio queue concurrency limit.")
    parser.add_argument("--every", type=float, default=0.05, help="Minutes between Hub commits (Hub row).")
    parser.add_argument("--client-processes", type=int, default=CLIENT_PROCESSES,
                        help="Processes the clients are spread over (visitors do not share one GIL).")
    parser.add_argument("--forgeries", type=int, default=5, help="Attempts per kind of forged feedback.")
    args = parser.parse_args()
    os.environ[SECRET_ENV] = SECRET  # the suite signs with the key the clients sign with
    counts = [int(n) for n in args.clients.split(",")]
    builder: Callable[..., Any] = build_suite if args.app == "suite" else build_minimal
    print(f"app={args.app} requests/client={args.requests} queue concurrency={args.concurrency} "
          f"hub every={args.every} min")
    print("| mode | clients | records | records/s | p50 ms | p99 ms | rows ok | hub |")
    print("|---|---:|---:|---:|---:|---:|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for threads in counts:
            folder = work / f"direct-{threads}"
            with FeedbackCallback(folder=folder) as feedback:
                latencies, wall = run_direct(feedback, threads=threads, requests=args.requests)
            check = rows_ok(folder, len(latencies))
            print(row("log() in threads", threads, latencies, wall, check), flush=True)
        paths = ("gradio_client", "http") if args.app == "suite" else ("gradio_client",)
        for clients in counts:
            for via in paths:
                folder = work / f"app-{via}-{clients}"
                with FeedbackCallback(folder=folder) as feedback:
                    app = builder(feedback, work, args.concurrency)
                    startup_heap.freeze()  # as `python -m demos` does before it serves
                    _, url, _ = app.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True)
                    try:
                        latencies, wall = run_clients(url, ticket_base(app), clients=clients,
                                                      requests=args.requests, via=via,
                                                      processes=args.client_processes)
                    finally:
                        app.close()
                check = rows_ok(folder, len(latencies) + clients)
                mode = "gradio_client" if via == "gradio_client" else "HTTP route POST /feedback/tweet"
                print(row(mode, clients, latencies, wall, check), flush=True)
        print(hub_row(builder, work, clients=max(counts), requests=args.requests,
                      concurrency=args.concurrency, every=args.every), flush=True)
        if args.app == "suite":
            print(forged_row(work, attempts=args.forgeries), flush=True)
    print(ticket_cost(), flush=True)


def hub_row(builder: Callable[..., Any], work: Path, *, clients: int, requests: int, concurrency: int,
            every: float) -> str:
    """The app under load with Hub sync to the local test Hub: commits per minute, all rows arrive."""
    patch = pytest.MonkeyPatch()
    with HubServer() as server:
        server.patch_client(patch, work / "hf-home")
        folder = work / "app-hub"
        feedback = FeedbackCallback(folder=folder, repo_id=REPO, every=every)
        feedback.setup()
        feedback.push(timeout=60)
        before = server.commit_count(REPO, "dataset")
        app = builder(feedback, work, concurrency)
        startup_heap.freeze()
        _, url, _ = app.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True)
        try:
            latencies, wall = run_clients(url, ticket_base(app), clients=clients, requests=requests)
        finally:
            app.close()
        during = server.commit_count(REPO, "dataset") - before
        feedback.close(push=True, timeout=60)
        files = server.files(REPO, "dataset")
        on_hub = sum(data.count(b"\n") for path, data in files.items() if path.endswith(".jsonl"))
    patch.undo()
    written = len(latencies) + clients
    summary = (f"{during / (wall / 60):.1f} commits/min during load ({during} commits, "
               f"{written / max(during, 1):.0f} rows/commit); rows on Hub after close: "
               f"{'all' if on_hub == written else f'{on_hub}/{written}'}")
    return row("gradio_client + Hub sync", clients, latencies, wall, rows_ok(folder, written), summary)


def ticket_base(app: Any) -> str | None:
    """The base model the suite's tickets name (its clients send a signed served-by); None: the minimal app."""
    suite = getattr(app, "flywheel_suite", None)
    return None if suite is None else suite.engine.loaded.base_id


def forgeries(base: str) -> dict[str, ServedFor]:
    """Ways to fake feedback on `text`: each gives the served-by sent with it."""

    def payload_edited(text: str) -> dict[str, Any]:
        served = signed(base, text)
        body, signature = served["ticket"].split(".")
        payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        payload["model"]["adapter"] = "evil"
        edited = base64.urlsafe_b64encode(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode())
        return {**served, "adapter": "evil", "ticket": f"{edited.rstrip(b'=').decode()}.{signature}"}

    return {
        "ticket payload edited": payload_edited,
        "served-by edited beside the ticket": lambda text: {**signed(base, text), "adapter": "evil"},
        "ticket signed with another key": lambda text: signed(base, text, key="a key this server never had"),
        "expired ticket": lambda text: signed(base, text, now=time.time() - 2 * TICKET_TTL),
        "ticket of another output": lambda text: signed(base, text + " (as served)"),
        "no ticket": lambda text: {k: v for k, v in signed(base, text).items() if k != "ticket"},
        "served-by not an object": lambda text: "evil",
    }


def forged_row(work: Path, *, attempts: int) -> str:
    """Forged feedback sent to the suite through gradio_client and the HTTP route: how much became rows."""
    from gradio_client import Client

    folder = work / "forged"
    with FeedbackCallback(folder=folder) as feedback:
        app = build_suite(feedback, work, 4)
        _, url, _ = app.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True)
        clients = [Client(url, verbose=False), httpx.Client(base_url=url)]
        base, accepted, tried = app.flywheel_suite.engine.loaded.base_id, 0, 0
        try:
            replayed = signed(base, "A real output, rated once.")
            send(clients[0], "A real output, rated once.", lambda text: replayed)
            kinds = {**forgeries(base), "replayed ticket": lambda text: replayed}
            for name, forge in kinds.items():
                for i in range(attempts):
                    text = "A real output, rated once." if name == "replayed ticket" else f"{name} {i}"
                    for client in clients:
                        tried += 1
                        try:
                            send(client, text, forge)
                            accepted += 1
                        except Exception:  # noqa: BLE001 - refused, as it should be
                            pass
        finally:
            for client in clients:
                client.close()
            app.close()
        rows = len(load_feedback(folder, task="tweet"))
    return (f"forged feedback accepted: {accepted} of {tried} ({len(kinds)} kinds x {attempts} x 2 paths); "
            f"rows on disk: {rows} (1 honest rating sent)")


def ticket_cost(iterations: int = 2000) -> str:
    """Signing and checking one ticket, in microseconds (a 280-character output)."""
    key, text = SECRET.encode(), "x" * 280
    model = {"base": "HuggingFaceTB/SmolLM2-135M-Instruct", "adapter": "me/tweet-sft", "revision": "0" * 40}
    start = time.perf_counter()
    for _ in range(iterations):
        ticket = sign_ticket(key=key, task="tweet", inputs={"prompt": PROMPT}, completion=text, model=model,
                             generation=GENERATION)
    signing = (time.perf_counter() - start) / iterations
    start = time.perf_counter()
    for _ in range(iterations):
        verify_ticket(ticket, key=key, task="tweet", inputs={"prompt": PROMPT}, completion=text)
    checking = (time.perf_counter() - start) / iterations
    return (f"ticket cost per row: check {checking * 1e6:.0f} us, sign {signing * 1e6:.0f} us "
            f"(compare the p50 of log() above)")


if __name__ == "__main__":
    main()
