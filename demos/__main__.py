"""`python -m demos`: launch the seven-tab suite on one base model.

Examples:
    python -m demos                                   # bundled SmolLM2, no account, no network
    python -m demos --model HuggingFaceTB/SmolLM2-360M-Instruct
    python -m demos --adapter tweet=me/flywheel-tweet-ppo --feedback-repo me/flywheel-feedback
    python -m demos --list-tasks
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from tasks import SLUGS


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m demos", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=os.environ.get("FLYWHEEL_MODEL", "bundled"),
                        help="Base model: `bundled` (default), a Hub id or a local folder.")
    parser.add_argument("--adapter", action="append", default=[], metavar="SLUG=REF",
                        help="LoRA adapter for a tab (Hub repo id or folder). Repeatable.")
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
                        help="Store no session hash with feedback records.")
    parser.add_argument("--concurrency", type=int, default=4, help="Requests served at once per endpoint.")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                        help="Weights dtype (float32 is fastest on CPUs without native bf16).")
    parser.add_argument("--list-tasks", action="store_true", help="Print the task slugs and exit.")
    return parser.parse_args(argv)


def parse_adapters(pairs: list[str]) -> dict[str, str]:
    from tasks import InvalidInput

    adapters = {}
    for pair in pairs:
        slug, sep, ref = pair.partition("=")
        if not sep or not ref:
            raise InvalidInput(f"--adapter expects SLUG=REF, got {pair!r}.")
        if slug not in SLUGS:
            raise InvalidInput(f"--adapter names unknown task {slug!r}; choose one of: {', '.join(SLUGS)}.")
        adapters[slug] = ref
    return adapters


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list_tasks:
        print("\n".join(SLUGS))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from demos.app import build_app
    from demos.handlers import ArenaSides
    from hub.errors import FlywheelError
    from hub.feedback.callback import FeedbackCallback
    from serving.engine import Engine
    from serving.models import load_model
    from tasks import InvalidInput

    try:
        adapters = parse_adapters(args.adapter)
        engine = Engine(load_model(args.model, dtype=args.dtype))
        for slug, ref in adapters.items():
            engine.load_adapter(slug, ref)
        feedback = FeedbackCallback(repo_id=args.feedback_repo, every=args.feedback_every,
                                    private=not args.public_feedback, session_ids=not args.no_session_id)
    except (FlywheelError, InvalidInput) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    app = build_app(engine, feedback=feedback, concurrency_limit=args.concurrency,
                    arena=ArenaSides(a=args.arena_a, b=args.arena_b))
    try:
        app.launch(server_name=args.host, server_port=args.port, show_error=True)
    finally:
        feedback.close()  # pushes the last rows when a Hub repo is configured
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
