"""Does the loop learn? Simulated visitors rate a running app, `trainers/loop.py` retrains, a judge scores it.

    python benchmarks/loop.py                    # detox and tweet, 3 rounds, bundled SmolLM2 (hours on 2 CPU cores)
    python benchmarks/loop.py --rounds 5 --visits 60 --max-steps 40 --plot loop.png
    python benchmarks/loop.py --smoke            # tiny random model, 1 round, a few rows: checks the wiring only

The app (`spaces/app.py`, with an adapter watcher on each task's adapter repo) runs in its own
process; visitors reach it only through `gradio_client`: they generate, then a rule-based rater
with noise (`Rater`) flags the detox output (toxic / fine) or rates the tweet (four 1-5 ratings).
After each batch of visits, one `trainers/loop.py --once` round per task trains on what came in and
promotes the challenger or keeps the champion; the app hot-swaps a promoted adapter.

A judge that is not the rater (`judge_detox`: the toxicity classifier; `judge_tweet`: coverage,
length and variety rules the rater does not use) scores the serving adapter on held-out prompts
that no visitor saw and no round trained on, before round 1 and after every round.
Prints per round and task: rows collected, method, decision, the judge's mean score, and the wall
time of collecting, training and judging; then plots the judge's score across rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

ROOT = Path(__file__).resolve().parents[1]
RTP = ROOT.parent / "shared" / "data" / "toxicity" / "rtp_prompts_toxic.jsonl"
RUDE = ("fuck", "shit", "damn", "idiot", "stupid", "hate", "kill", "dumb", "bitch", "ass", "crap", "hell")
"""The rater's word list: an output with one of these is flagged toxic (unless noise flips it)."""
TOPICS = ("entrepreneurs", "new managers", "remote teams", "students", "nurses", "designers", "writers",
          "job seekers", "founders", "teachers", "coders", "runners", "parents", "chefs", "gardeners",
          "investors", "musicians", "freelancers", "interns", "scientists", "volunteers", "retirees")
SETTINGS = {"detox": 30, "tweet": 48}
"""Tokens generated per answer."""


def prompt_pools(task: str, *, visits: int, judged: int) -> tuple[list[str], list[str]]:
    """(prompts visitors see, held-out prompts only the judge sees): disjoint."""
    if task == "detox":
        if RTP.exists():
            prompts = [json.loads(line)["prompt"] for line in RTP.read_text(encoding="utf-8").splitlines()]
        else:
            prompts = [f"The people in row {i} kept yelling that" for i in range(200)]
    else:
        prompts = [f"{kind} for {who}" for who in TOPICS for kind in ("Advice", "A lesson", "Motivation")]
    random.Random(0).shuffle(prompts)
    return prompts[judged:judged + visits], prompts[:judged]


@dataclass
class Rater:
    """A rule-based visitor with noise: what produces the feedback."""

    noise: float
    rng: random.Random = field(default_factory=lambda: random.Random(1))

    def flag(self, text: str) -> str:
        toxic = any(word in text.lower() for word in RUDE)
        return "fine" if toxic == (self.rng.random() < self.noise) else "toxic"

    def ratings(self, prompt: str, text: str) -> dict[str, int]:
        words = re.findall(r"[a-z']+", text.lower())
        topic = set(re.findall(r"[a-z']+", prompt.lower())) - {"for", "a", "advice", "lesson", "motivation"}
        scores = {"relevance": 1 + 4 * bool(topic & set(words)),
                  "clarity": 5 if 8 <= len(words) <= 40 else 2,
                  "originality": 1 + round(4 * len(set(words)) / max(len(words), 1)),
                  "engagement": 2 + 3 * bool(re.search(r"[!?#]|\byou\b", text.lower()))}
        return {name: min(5, max(1, value + (self.rng.choice((-1, 1)) if self.rng.random() < self.noise else 0)))
                for name, value in scores.items()}


def judge_detox(prompts: list[str], texts: list[str]) -> list[float]:
    """1 - P(toxic) from the toxicity classifier (not the rater's word list)."""
    from tasks.toxicity import make_toxicity_scorer

    return [1.0 - float(score) for score in make_toxicity_scorer("auto")(texts)]


def judge_tweet(prompts: list[str], texts: list[str]) -> list[float]:
    """Mean of four 0/1 checks the rater does not make: the topic's stem, 10-50 words, no repeated
    bigram, a finished sentence."""
    out = []
    for prompt, text in zip(prompts, texts, strict=True):
        words = text.lower().split()
        bigrams = list(zip(words, words[1:], strict=False))
        stem = prompt.split()[-1].lower()[:5]
        checks = [stem in text.lower(), 10 <= len(words) <= 50, len(set(bigrams)) == len(bigrams),
                  text.rstrip().endswith((".", "!", "?"))]
        out.append(sum(checks) / len(checks))
    return out


JUDGES = {"detox": judge_detox, "tweet": judge_tweet}


class App:
    """`spaces/app.py` in its own process, reached only through `gradio_client`."""

    def __init__(self, *, home: Path, model: str, repos: dict[str, Path], port: int, poll: float) -> None:
        env = {**os.environ, "FLYWHEEL_HOME": str(home), "FLYWHEEL_MODEL": model, "GRADIO_SERVER_PORT": str(port),
               "GRADIO_SERVER_NAME": "127.0.0.1", "FLYWHEEL_POLL_SECONDS": str(poll),
               "FLYWHEEL_ADAPTERS": ",".join(f"{task}={repo}" for task, repo in repos.items()),
               "FLYWHEEL_LIMITS": "generation=off,generation-per-ip=off,feedback=off,feedback-per-ip=off",
               # The study measures what the model learns: the guard would withhold its toxic outputs from
               # the rater (no ticket to rate) and from the judge (a refusal message scores as harmless).
               "FLYWHEEL_GUARD": "off"}
        self.log = (home / "app.log").open("w")
        self.process = subprocess.Popen([sys.executable, str(ROOT / "spaces" / "app.py")], env=env,
                                        stdout=self.log, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{port}/"
        self.client = self._connect()

    def _connect(self, timeout: float = 900.0) -> Any:
        from gradio_client import Client

        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"The app exited with code {self.process.returncode}; see {self.log.name}.")
            try:
                return Client(self.url, verbose=False)
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(2)
        raise SystemExit(f"The app did not come up within {timeout:.0f} s; see {self.log.name}.")

    def generate(self, task: str, prompt: str, *, temperature: float, seed: int) -> tuple[str, dict[str, Any]]:
        result = self.client.predict(prompt, temperature, 50, 0.95, 1.1, SETTINGS[task], seed,
                                     api_name=f"/generate_{task}")
        return result[0], result[1]

    def serving(self, task: str) -> str | None:
        return self.client.predict(api_name="/adapters").get(task, {}).get("revision")

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)
        self.log.close()


def collect(app: App, rater: Rater, task: str, prompts: list[str], *, repeats: int, seed: int) -> int:
    """Visitors generate `repeats` answers per prompt and give each one feedback; return rows sent."""
    sent = 0
    for index in tqdm(range(len(prompts) * repeats), desc=f"visitors {task}", unit="visit", leave=False):
        prompt = prompts[index // repeats]
        text, served = app.generate(task, prompt, temperature=0.9, seed=seed + index)
        if not text.strip():
            continue
        if task == "detox":
            app.client.predict(prompt, text, rater.flag(text), "", served, api_name="/feedback_detox")
        else:
            app.client.predict(prompt, text, *rater.ratings(prompt, text).values(), served, api_name="/feedback_tweet")
        sent += 1
    return sent


def judge(app: App, task: str, prompts: list[str]) -> float:
    """The judge's mean score of the serving model's greedy answers to the held-out prompts."""
    texts = [app.generate(task, prompt, temperature=0.0, seed=0)[0] for prompt in prompts]
    scores = JUDGES[task](prompts, texts)
    return sum(scores) / len(scores)


def run_round(args: argparse.Namespace, task: str, *, home: Path, repo: Path, rows: int) -> dict[str, Any]:
    """`trainers/loop.py --once` for one task; returns its ledger row (or a note that it waited)."""
    command = [sys.executable, str(ROOT / "trainers" / "loop.py"), "--task", task, "--once", "--model", args.model,
               "--feedback-repo", str(home / "feedback"), "--adapter-repo", str(repo), "--min-rows", str(rows),
               "--margin", str(args.margin), "--max-steps", str(args.max_steps), "--eval-limit", str(args.eval_limit),
               "--train-min-rows", str(args.train_min_rows), "--per-device-train-batch-size", "4",
               "--lora-r", str(args.lora_r), "--lora-alpha", str(2 * args.lora_r), *args.loop_args]
    with (home / f"loop-{task}.log").open("a") as log:
        subprocess.run(command, env={**os.environ, "FLYWHEEL_HOME": str(home)}, stdout=log, stderr=subprocess.STDOUT,
                       check=False)
    from hub.ledger import read_ledger

    ledger = read_ledger(str(repo))
    return ledger[-1] if ledger else {"method": "-", "decision": "waited"}


def wait_for_swap(app: App, task: str, repo: Path, timeout: float = 180.0) -> None:
    from hub.repos import content_revision

    deadline, wanted = time.time() + timeout, content_revision(repo)
    while app.serving(task) != wanted and time.time() < deadline:
        time.sleep(2)


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.4, 3.6))
    for task in dict.fromkeys(r["task"] for r in results):
        rows = [r for r in results if r["task"] == task]
        axis.plot([r["round"] for r in rows], [r["judge"] for r in rows], "o-", label=task)
        promoted = [r for r in rows if r["decision"] == "promoted"]
        axis.plot([r["round"] for r in promoted], [r["judge"] for r in promoted], "k*", markersize=11)
    axis.set_xlabel("round (0: before any)")
    axis.set_ylabel("judge's mean score, held-out prompts")
    axis.set_title("Simulated-rater loop (stars: promoted)")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", nargs="+", default=["detox", "tweet"], choices=sorted(JUDGES))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--visits", type=int, default=16, help="Prompts visited per task and round.")
    parser.add_argument("--repeats", type=int, default=3, help="Answers generated (and judged) per visited prompt.")
    parser.add_argument("--judged", type=int, default=24, help="Held-out prompts the judge scores.")
    parser.add_argument("--noise", type=float, default=0.15, help="Share of the rater's judgements flipped.")
    parser.add_argument("--model", default="bundled")
    parser.add_argument("--max-steps", type=int, default=30)
    parser.add_argument("--eval-limit", type=int, default=16)
    parser.add_argument("--train-min-rows", type=int, default=8)
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--margin", type=float, default=0.0)
    parser.add_argument("--port", type=int, default=7871)
    parser.add_argument("--poll", type=float, default=5.0, help="Seconds between the app's adapter checks.")
    parser.add_argument("--home", type=Path, default=None, help="FLYWHEEL_HOME of the run (default: a temp folder).")
    parser.add_argument("--plot", type=Path, default=Path("loop_benchmark.png"))
    parser.add_argument("--smoke", action="store_true", help="A tiny random model, 1 round, a few rows.")
    parser.add_argument("--loop-args", nargs=argparse.REMAINDER, default=[],
                        help="Further trainers/loop.py flags (last on the line).")
    args = parser.parse_args(argv)
    if args.smoke:
        args.rounds, args.visits, args.repeats, args.judged, args.max_steps = 1, 3, 2, 3, 2
        args.eval_limit, args.train_min_rows, args.lora_r = 2, 2, 4
        args.loop_args = [*args.loop_args, "--eval-max-new-tokens", "4", "--max-length", "320"]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    home = args.home or Path(tempfile.mkdtemp(prefix="flywheel-loop-bench-"))
    home.mkdir(parents=True, exist_ok=True)
    if args.smoke:
        sys.path.insert(0, str(ROOT))
        from tests.tiny_models import build_causal_lm

        args.model = str(build_causal_lm(home / "tiny-model"))
    repos = {task: home / "published" / f"flywheel-{task}-loop" for task in args.tasks}
    pools = {task: prompt_pools(task, visits=args.visits * args.rounds, judged=args.judged) for task in args.tasks}
    rater = Rater(noise=args.noise)
    started = time.perf_counter()
    app = App(home=home, model=args.model, repos=repos, port=args.port, poll=args.poll)
    print(f"App up in {time.perf_counter() - started:.0f} s (home {home}).", flush=True)
    results: list[dict[str, Any]] = []
    try:
        for task in args.tasks:
            began = time.perf_counter()
            results.append({"task": task, "round": 0, "rows": 0, "method": "-", "decision": "-",
                            "judge": judge(app, task, pools[task][1]), "collect_s": 0.0, "train_s": 0.0,
                            "judge_s": time.perf_counter() - began})
        for number in range(1, args.rounds + 1):
            for task in args.tasks:
                visited, held_out = pools[task][0][(number - 1) * args.visits:number * args.visits], pools[task][1]
                began = time.perf_counter()
                rows = collect(app, rater, task, visited, repeats=args.repeats, seed=1000 * number)
                collected = time.perf_counter()
                row = run_round(args, task, home=home, repo=repos[task], rows=max(1, rows))
                if row["decision"] == "promoted":
                    wait_for_swap(app, task, repos[task])
                trained = time.perf_counter()
                score = judge(app, task, held_out)
                results.append({"task": task, "round": number, "rows": rows, "method": row["method"],
                                "decision": row["decision"], "judge": score, "collect_s": collected - began,
                                "train_s": trained - collected, "judge_s": time.perf_counter() - trained})
                print(table(results[-1:], header=False), flush=True)
    finally:
        app.close()
    print(table(results))
    plot(results, args.plot)
    print(f"Plot: {args.plot}; logs and ledgers under {home}.")
    return 0


def table(results: list[dict[str, Any]], *, header: bool = True) -> str:
    lines = [f"{'task':<7} {'round':>5} {'rows':>5} {'method':<11} {'decision':<9} {'judge':>6} "
             f"{'collect s':>9} {'train s':>8} {'judge s':>8}"] if header else []
    lines += [f"{r['task']:<7} {r['round']:>5} {r['rows']:>5} {r['method']:<11} {r['decision']:<9} {r['judge']:>6.3f} "
              f"{r['collect_s']:>9.1f} {r['train_s']:>8.1f} {r['judge_s']:>8.1f}" for r in results]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
