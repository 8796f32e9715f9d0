"""Speed and memory of Flywheel's trainers beside plain TRL with the same data, LoRA settings and steps.

    python benchmarks/training.py                              # sft, dpo, kto, reward, ppo: 10 steps each
    python benchmarks/training.py --trainers sft --steps 20    # one trainer
    python benchmarks/training.py --smoke                      # 2 steps, no evaluation, no PPO reference

Each trainer runs as a subprocess, `trainers/<method>.py --config <its recipe> --max-steps N`, on the
default model; its plain-TRL twin runs `benchmarks/training_trl_reference.py` (SFT, DPO, KTO, reward:
TRL's trainer on the rows Flywheel's data pipeline builds, with TRL's defaults but fp32) or, for PPO,
`benchmarks/ppo_trl_reference.py` (TRL 1.12.0's PPOTrainer, the last TRL with PPO, installed into the
benchmark cache with `pip --no-deps --target`; the project never imports it). Recipes: SFT
dialogue_summary-sft, DPO arena-dpo, KTO conversation_starter-kto's settings on arena rows made from
HH-RLHF pairs (no KTO recipe ships seed data), reward arena-reward, PPO detox-ppo with an untrained
reward model as its reward (the scorer TRL's PPOTrainer needs; both get the same).

Memory: the resident set of the subprocess tree, sampled every `--interval` s, and the kernel's max
RSS of the trainer at exit; the phase of the peak (loading, evaluation, training, saving) comes from
the run's `resources.json` (`trainers/resources.py`, written by our lifecycle and by the TRL reference).
Throughput over training time only: SFT tokens/s (TRL's `num_tokens`, padding not counted), DPO and
reward pairs/s, KTO examples/s, PPO episodes/s. Memory figures hold on a busy machine; times do not,
so the load average at start and end is printed with the table: run the final table on a quiet one.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

REPO = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"
METHODS = ("sft", "dpo", "kto", "reward", "ppo")
UNITS = {"sft": "tok/s", "dpo": "pairs/s", "kto": "ex/s", "reward": "pairs/s", "ppo": "episodes/s"}


@dataclass
class Run:
    """One subprocess: what it is, its memory, its throughput."""

    method: str
    impl: str
    command: list[str]
    log: str
    out: str
    returncode: int | None = None
    wall_seconds: float = 0.0
    peak_mb: float = 0.0
    kernel_max_rss_mb: float = 0.0
    peak_phase: str = "-"
    phase_peaks_mb: dict[str, float] = field(default_factory=dict)
    throughput: float | None = None
    train_seconds: float | None = None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trainers", default=",".join(METHODS),
                        help=f"Comma-separated trainers to run, from {', '.join(METHODS)} (default: all).")
    parser.add_argument("--steps", type=int, default=10, help="Optimizer steps per run (PPO: rollout steps).")
    parser.add_argument("--model", default="bundled", help="Base model for every run (default: bundled).")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="Folder holding the shared data sets.")
    parser.add_argument("--eval-limit", type=int, default=8,
                        help="Held-out examples our trainers evaluate before and after training (one batch "
                             "of 8 reaches the evaluation's memory peak; 0 skips it; -1 keeps the recipe's).")
    parser.add_argument("--no-reference", action="store_true", help="Skip the plain-TRL runs.")
    parser.add_argument("--smoke", action="store_true",
                        help="A quick check that everything runs: 2 steps, no evaluation, no PPO reference.")
    parser.add_argument("--out", default=str(REPO / ".flywheel" / "benchmarks" / "training"),
                        help="Folder for logs, adapters, report.json.")
    parser.add_argument("--interval", type=float, default=0.1, help="Seconds between memory samples.")
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for every subprocess.")
    parser.add_argument("--trl-dir", default=None,
                        help="Where TRL 1.12.0 is installed for the PPO reference (default: in the cache).")
    args = parser.parse_args(argv)
    unknown = set(args.trainers.split(",")) - set(METHODS)
    if unknown or args.steps < 1:
        parser.error(f"unknown trainer(s) {', '.join(sorted(unknown))}" if unknown else "--steps must be >= 1")
    if args.smoke:
        args.steps, args.eval_limit = 2, 0
    if not pathlib.Path(args.data).is_dir():
        parser.error(f"{args.data} is not a folder: pass --data <the shared data folder>")
    return args


def recipe_flags(method: str, args: argparse.Namespace, out: pathlib.Path) -> list[str]:
    """The Flywheel trainer's flags: its recipe, data from --data, the fixed number of steps."""
    data = pathlib.Path(args.data)
    hh, rtp = str(data / "preference" / "hh_rlhf.jsonl"), str(data / "toxicity" / "rtp_prompts_toxic.jsonl")
    flags = {"sft": ["--config", "recipes/dialogue_summary-sft.yaml",
                     "--seed-data", str(data / "dialogue_summary" / "dialogsum_validation.jsonl")],
             "dpo": ["--config", "recipes/arena-dpo.yaml", "--seed-data", hh],
             "kto": ["--config", "recipes/conversation_starter-kto.yaml", "--task", "arena", "--seed-data", hh],
             "reward": ["--config", "recipes/arena-reward.yaml", "--seed-data", hh],
             "ppo": ["--config", "recipes/detox-ppo.yaml", "--seed-data", rtp, "--eval-data", rtp,
                     "--reward", f"reward_model={out / 'reward-model'}", "--save-steps", str(10**6)]}[method]
    flags += ["--model", args.model, "--max-steps", str(args.steps), "--report-to", "none"]
    if args.eval_limit >= 0:
        flags += ["--eval-limit", str(args.eval_limit)]
    return flags


def environment(args: argparse.Namespace) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    return env


def tree_rss(root: Any) -> int:
    """Resident bytes of a process and all its descendants (0 once it is gone)."""
    import psutil

    total = 0
    try:
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    for process in processes:
        with contextlib.suppress(psutil.Error):  # a child may exit between listing and reading
            total += process.memory_info().rss
    return total


def watch(run: Run, *, env: dict[str, str], interval: float) -> Run:
    """Run `run.command` with its output in `run.log`, sampling the tree's RSS until it exits."""
    import psutil

    started = time.monotonic()
    with open(run.log, "w", encoding="utf-8") as log:
        process = subprocess.Popen(run.command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        root = psutil.Process(process.pid)
        while True:
            run.peak_mb = max(run.peak_mb, tree_rss(root) / 2**20)
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)  # reaped here, for the kernel's max RSS
            if pid:
                break
            time.sleep(interval)
    run.returncode = os.waitstatus_to_exitcode(status)
    run.kernel_max_rss_mb = usage.ru_maxrss / 1024
    run.peak_mb = max(run.peak_mb, run.kernel_max_rss_mb)
    run.wall_seconds = time.monotonic() - started
    return run


def read_results(run: Run) -> None:
    """Throughput, training seconds and the phases' peaks from the run's own files."""
    out = pathlib.Path(run.out)
    resources = _json(out / "resources.json")
    if resources:
        run.peak_phase = resources["peak_phase"]
        run.phase_peaks_mb = {name: cost["peak_rss_mb"] for name, cost in resources["phases"].items()}
    if run.method == "ppo":
        rows = _json_lines(out / "metrics_log.jsonl")  # ours: per-step seconds
        if not rows:  # benchmarks/ppo_trl_reference.py's result line
            rows = [json.loads(line) for line in pathlib.Path(run.log).read_text().splitlines()
                    if line.startswith('{"impl"')]
            rows = [{"episodes": r["episodes"], "seconds": r["train_seconds"]} for r in rows[-1:]]
        if rows:
            run.train_seconds = sum(r["seconds"] for r in rows)
            run.throughput = rows[-1]["episodes"] / run.train_seconds
        return
    rows = _json_lines(out / "metrics.jsonl")
    summary = next((r for r in rows if "train_runtime" in r), None)
    if summary is None:
        return
    run.train_seconds = float(summary["train_runtime"])
    if run.method == "sft":
        tokens = [r["num_tokens"] for r in rows if "num_tokens" in r]
        run.throughput = float(tokens[-1]) / run.train_seconds if tokens else None
    else:
        run.throughput = float(summary["train_samples_per_second"])


def _json(path: pathlib.Path) -> dict[str, Any] | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def _json_lines(path: pathlib.Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def ppo_reference_command(args: argparse.Namespace, out: pathlib.Path) -> list[str]:
    """TRL 1.12.0's PPOTrainer with the detox recipe's batch, response length and PPO epochs."""
    import yaml
    from transformers import AutoTokenizer

    from benchmarks.ppo import TRL_VERSION, install_trl
    from serving.models import resolve_model_ref
    from tasks import get_task
    from tasks.seed_data import load_examples
    from trainers.rl_data import policy_prompt

    recipe = yaml.safe_load((REPO / "recipes" / "detox-ppo.yaml").read_text())
    model_dir = resolve_model_ref(args.model)[0]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    task = get_task("detox")
    batch = recipe["per_device_train_batch_size"]
    examples = load_examples(pathlib.Path(args.data) / "toxicity" / "rtp_prompts_toxic.jsonl", task=task,
                             limit=batch * args.steps)
    prompts = out / "ppo-prompts.jsonl"
    prompts.write_text("".join(json.dumps({"text": policy_prompt(task, e.inputs["prompt"], tokenizer)}) + "\n"
                               for e in examples), encoding="utf-8")
    trl_dir = install_trl(pathlib.Path(args.trl_dir) if args.trl_dir else _cache() / f"trl-{TRL_VERSION}")
    return [sys.executable, str(REPO / "benchmarks" / "ppo_trl_reference.py"), "--trl-dir", str(trl_dir),
            "--model", model_dir, "--reward-model", str(out / "reward-model"), "--prompts", str(prompts),
            "--episodes", str(batch * args.steps), "--batch-size", str(batch),
            "--response-length", str(recipe["response_length"]), "--ppo-epochs", str(recipe["num_ppo_epochs"]),
            "--out", str(out / "ppo-trl")]


def _cache() -> pathlib.Path:
    from hub.paths import flywheel_cache

    return flywheel_cache() / "benchmarks"


def planned_runs(args: argparse.Namespace, out: pathlib.Path) -> list[Run]:
    """Every trainer asked for, ours then plain TRL's."""
    runs = []
    for method in args.trainers.split(","):
        flags = recipe_flags(method, args, out)
        ours = out / f"{method}-flywheel"
        runs.append(Run(method, "flywheel", [sys.executable, str(REPO / "trainers" / f"{method}.py"), *flags,
                                             "--output-dir", str(ours)], str(out / f"{method}-flywheel.log"),
                        str(ours)))
        if args.no_reference or (method == "ppo" and args.smoke):
            continue
        reference = out / f"{method}-trl"
        command = (ppo_reference_command(args, out) if method == "ppo" else
                   [sys.executable, str(REPO / "benchmarks" / "training_trl_reference.py"), method, *flags,
                    "--output-dir", str(reference)])
        runs.append(Run(method, "trl", command, str(out / f"{method}-trl.log"), str(reference)))
    return runs


def table(runs: list[Run], report: dict[str, Any]) -> str:
    head = (f"{'trainer':8} {'impl':9} {'throughput':>18} {'peak GB':>8} {'peak in':10} "
            f"{'load':>5} {'eval':>5} {'train':>5} {'save':>5} {'train s':>8} {'wall s':>7}")
    lines = [f"{report['steps']} steps per run, model {report['model']}; {report['hardware']}; load average "
             f"{report['load_start']} at start, {report['load_end']} at end (times are only comparable on a "
             "quiet machine; memory is dependable either way)", "", head, "-" * len(head)]
    for run in runs:
        speed = (f"{run.throughput:.3g} {UNITS[run.method]}" if run.throughput else
                 f"exit {run.returncode}" if run.returncode else "-")
        phases = [run.phase_peaks_mb.get(p) for p in ("loading", "evaluation", "training", "saving")]
        lines.append(f"{run.method:8} {run.impl:9} {speed:>18} {run.peak_mb / 1024:8.2f} {run.peak_phase:10} "
                     + " ".join(f"{p / 1024:5.1f}" if p else f"{'-':>5}" for p in phases)
                     + f" {run.train_seconds or 0:8.0f} {run.wall_seconds:7.0f}")
        twin = next((r for r in runs if r.method == run.method and r.impl == "trl"), None)
        if run.impl == "flywheel" and twin and twin.peak_mb and run.peak_mb:
            speed_ratio = f"{run.throughput / twin.throughput:.2f}x" if run.throughput and twin.throughput else "-"
            lines.append(f"{'':8} {'ours/TRL':9} {speed_ratio:>18} {run.peak_mb / twin.peak_mb:7.2f}x")
    return "\n".join(lines)


def load_average() -> str:
    return " ".join(f"{value:.1f}" for value in os.getloadavg())


def hardware_line() -> str:
    import torch

    return f"{os.cpu_count()} CPU cores, {torch.get_num_threads()} torch threads, float32"


def main(argv: list[str] | None = None) -> list[Run]:
    args = parse_args(argv)
    out = pathlib.Path(args.out).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    if str(REPO) not in sys.path:  # `python benchmarks/training.py` puts benchmarks/, not the repository, first
        sys.path.insert(0, str(REPO))
    if "ppo" in args.trainers.split(","):
        from benchmarks.ppo import make_reward_model

        make_reward_model(args.model, out / "reward-model")
    report: dict[str, Any] = {"steps": args.steps, "model": args.model, "hardware": hardware_line(),
                              "load_start": load_average()}
    env = environment(args)
    runs = planned_runs(args, out)
    for number, run in enumerate(runs, 1):
        for stale in ("metrics.jsonl", "metrics_log.jsonl", "resources.json"):
            (pathlib.Path(run.out) / stale).unlink(missing_ok=True)
        print(f"[{number}/{len(runs)}] {run.method} {run.impl} ...", flush=True)
        watch(run, env=env, interval=args.interval)
        if run.returncode:
            print(f"    exited with {run.returncode}; see {run.log}", flush=True)
        read_results(run)
        print(f"    peak {run.peak_mb / 1024:.2f} GB in {run.peak_phase}, {run.wall_seconds:.0f} s", flush=True)
    report["load_end"] = load_average()
    report["runs"] = [asdict(run) for run in runs]
    (out / "report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    print(table(runs, report), flush=True)
    return runs


if __name__ == "__main__":
    main()
