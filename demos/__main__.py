"""`python -m demos`: launch the seven-tab suite on one base model.

Examples:
    python -m demos                                   # bundled SmolLM2, no account, no network
    python -m demos --model HuggingFaceTB/SmolLM2-360M-Instruct
    python -m demos --backend openai=http://gpu-box:8000  # generation and LoRAs on a vLLM server
    python -m demos --adapter tweet=me/flywheel-tweet-ppo --feedback-repo me/flywheel-feedback
    python -m demos --require-login --limit generation=30/hour --limit feedback-per-ip=off
    python -m demos --online tweet --guard toxicity=0.5   # learn from ratings as they arrive; guard outputs
    python -m demos --mcp                             # the generate endpoints as MCP tools too
    python -m demos --list-tasks
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import TYPE_CHECKING

from serving.batching import MAX_BATCH, STREAM_EVERY
from tasks import SLUGS

if TYPE_CHECKING:
    from demos.quotas import Access


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m demos", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=os.environ.get("FLYWHEEL_MODEL", "bundled"),
                        help="Base model: `bundled` (default), a Hub id or a local folder. With --backend "
                             "openai=URL: the model the server serves (default: the only one it lists).")
    parser.add_argument("--backend", default=os.environ.get("FLYWHEEL_BACKEND", "local"),
                        metavar="local|openai=URL",
                        help="Where answers are generated: `local` (this process, default) or an OpenAI-compatible "
                             "server such as vLLM, e.g. openai=http://127.0.0.1:8000 (see the README, "
                             "\"Past one machine\").")
    parser.add_argument("--lora-source", default=os.environ.get("FLYWHEEL_LORA_SOURCE") or None,
                        metavar="cache|hub",
                        help="With --backend openai=URL, where the server reads adapters: `cache` (default) sends "
                             "the path of the checked copy under FLYWHEEL_CACHE, which the server must be able to "
                             "read; `hub` sends the Hub repo id and the server downloads its newest commit.")
    parser.add_argument("--adapter", action="append", default=[], metavar="SLUG=REF[@REV]",
                        help="LoRA adapter for a tab (Hub repo id or folder); REPO@REV pins a Hub revision "
                             "(commit, tag or branch). Repeatable.")
    parser.add_argument("--arena-a", default=None, metavar="KEY",
                        help="Adapter key answering on the arena's left (default: base model).")
    parser.add_argument("--arena-b", default="arena", metavar="KEY",
                        help="Adapter key answering on the arena's right (default: the `arena` adapter if "
                             "loaded, else the base model at a higher temperature).")
    parser.add_argument("--host", default="127.0.0.1", help="Interface to listen on.")
    parser.add_argument("--port", type=int, default=7860, help="Port to listen on.")
    parser.add_argument("--feedback-repo", default=os.environ.get("FLYWHEEL_FEEDBACK_REPO"),
                        help="Also send feedback to this Hub dataset repo (private by default).")
    parser.add_argument("--feedback-every", type=float, default=5.0,
                        help="Minutes between feedback commits to the Hub (default 5).")
    parser.add_argument("--public-feedback", action="store_true",
                        help="Create the feedback repo as public instead of private.")
    parser.add_argument("--no-session-id", action="store_true",
                        help="Store no session or user hash with feedback records.")
    parser.add_argument("--require-login", action="store_true",
                        help="Show 'Sign in with Hugging Face' and accept feedback only from signed-in people "
                             "(locally Gradio signs you in as the account of `hf auth login`).")
    parser.add_argument("--limit", action="append", default=[], metavar="NAME=N/WINDOW",
                        help="Override a quota: NAME is generation, generation-per-ip, feedback or "
                             "feedback-per-ip; N/WINDOW like 60/hour, or off. Repeatable. Defaults: "
                             "120/hour per person and 360/hour per IP for generation, twice that for feedback.")
    parser.add_argument("--queue-size", type=int, default=None,
                        help="Requests waiting in the queue at most; more are refused (default 64).")
    parser.add_argument("--proxy-hops", type=int, default=0,
                        help="Proxies in front of the app that append to X-Forwarded-For (default 0).")
    parser.add_argument("--concurrency", type=int, default=MAX_BATCH,
                        help=f"Generations in progress at once, decoded together as one batch (default "
                             f"{MAX_BATCH}); also other requests at once per endpoint.")
    parser.add_argument("--stream-every", type=float, default=STREAM_EVERY, metavar="SECONDS",
                        help=f"Send a streaming answer at most every SECONDS until it is final (default "
                             f"{STREAM_EVERY}; 0: at every token, which costs a visitor tokens/s on a small CPU).")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                        help="Weights dtype (float32 is fastest on CPUs without native bf16).")
    parser.add_argument("--online", action="append", default=[os.environ.get("FLYWHEEL_ONLINE", "")],
                        metavar="SLUG[,SLUG]",
                        help="Tabs whose ratings and flags train their own LoRA adapter while the app runs "
                             "(see serving.online; `python -m hub online push --task SLUG` publishes it).")
    parser.add_argument("--online-judge", action="append", default=[], metavar="SLUG=SPEC",
                        help="What scores an online adapter's probe answers (rollback below the last good "
                             "score): toxicity[=SCORER] or reward_model=REF. Default: detox's toxicity, "
                             "else FLYWHEEL_HOME/adapters/SLUG-reward if present, else drift from the base model.")
    parser.add_argument("--online-every", type=int, default=None, metavar="K",
                        help="Online updates between probes and swaps into the served model (default 10).")
    parser.add_argument("--guard", default=os.environ.get("FLYWHEEL_GUARD", "off"), metavar="toxicity[=T]|off",
                        help="Score every output before it is final; above T (default 0.5) regenerate with another "
                             "seed, then withhold it and keep it as a negative detox example (default off).")
    parser.add_argument("--guard-scorer", default="auto", metavar="SPEC",
                        help="The guard's toxicity scorer: auto, profanity-check, detoxify[=CKPT] or a Hub "
                             "classifier id (the detox reward's scorers).")
    parser.add_argument("--mcp", action="store_true",
                        help="Also serve the generate endpoints as MCP tools at /gradio_api/mcp/ (feedback stays "
                             "API-only).")
    parser.add_argument("--list-tasks", action="store_true", help="Print the task slugs and exit.")
    return parser.parse_args(argv)


def access_from_args(args: argparse.Namespace) -> Access:
    """The app's `demos.quotas.Access` from the flags; `InvalidInput` for a bad one."""
    from demos.app import login_problem
    from demos.quotas import Access, Limits
    from hub.feedback.tickets import secret_key
    from tasks import InvalidInput

    queue_size = Access.queue_size if args.queue_size is None else args.queue_size
    if queue_size < 1 or args.proxy_hops < 0:
        raise InvalidInput("--queue-size must be at least 1 and --proxy-hops at least 0.")
    problem = login_problem() if args.require_login else None
    if problem:
        raise InvalidInput(f"--require-login: {problem}")
    secret_key()  # now, so a bad FLYWHEEL_SECRET is one error line before the model loads
    return Access(limits=Limits.parse(args.limit), require_login=args.require_login,
                  proxy_hops=args.proxy_hops, queue_size=queue_size)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list_tasks:
        print("\n".join(SLUGS))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from demos.app import MAX_FILE_SIZE, build_app, stop_on_sigterm
    from demos.handlers import ArenaSides
    from hub.errors import FlywheelError
    from hub.feedback.callback import FeedbackCallback
    from hub.repos import parse_adapter_specs
    from serving import compute_threads, startup_heap
    from serving.backends import open_backend
    from serving.guard import GuardConfig
    from serving.judges import parse_judge_specs
    from serving.online import parse_online_tasks, start_online
    from tasks import InvalidInput

    online = None
    try:
        access = access_from_args(args)
        guard_config = GuardConfig.parse(args.guard, scorer=args.guard_scorer)
        parse_online_tasks(args.online), parse_judge_specs(args.online_judge)  # bad ones fail before the model loads
        adapters = parse_adapter_specs(args.adapter, arena_sides=(args.arena_a, args.arena_b))
        compute_threads.reserve()  # before the model loads: see serving.compute_threads
        engine = open_backend(args.backend, model=args.model, dtype=args.dtype, lora_source=args.lora_source)
        for key, spec in adapters.items():
            engine.load_adapter(key, spec.ref, revision=spec.revision)
        feedback = FeedbackCallback(repo_id=args.feedback_repo, every=args.feedback_every,
                                    private=not args.public_feedback, session_ids=not args.no_session_id)
        guard = guard_config.build() if guard_config is not None else None
        online = start_online(engine, args.online, judges=args.online_judge, swap_every=args.online_every,
                              toxicity=guard.scorer if guard is not None else None)
        feedback.setup()  # starts the Hub sync now, so rows a previous run left unpushed go up at once
    except (FlywheelError, InvalidInput) as error:
        if online is not None:
            online.stop()
        print(f"error: {error}", file=sys.stderr)
        return 2
    app = build_app(engine, feedback=feedback, concurrency_limit=args.concurrency,
                    arena=ArenaSides(a=args.arena_a, b=args.arena_b), access=access, guard=guard, online=online,
                    stream_every=args.stream_every)
    stop_on_sigterm()
    startup_heap.freeze()  # the model and the app live as long as the process: see serving.startup_heap
    try:
        app.launch(server_name=args.host, server_port=args.port, show_error=True, max_file_size=MAX_FILE_SIZE,
                   mcp_server=args.mcp)
    finally:
        if online is not None:
            online.stop()  # checkpoints the newest weights: a restart resumes them
        feedback.close()  # on Ctrl-C or SIGTERM too: refuses new rows, pushes the rest to the Hub repo
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
