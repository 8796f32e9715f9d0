"""Quality benchmark: do Flywheel's trainers improve the bundled model within a CPU budget?

    python benchmarks/quality.py                      # both parts: ~45 min on 2 idle cores
    python benchmarks/quality.py --part preference --rm-steps 30 --eval-pairs 100   # quicker

(a) dialogue_summary on DialogSum: `trainers/sft.py` runs as a subprocess with the recipe
    `recipes/dialogue_summary-sft.yaml` and a held-out split (`--summary-eval` dialogues never
    trained on); it scores the bundled model before and after training (ROUGE-L, greedy decoding)
    and this script reads its `eval_before.json` / `eval_after.json`. Budget: `--sft-steps`
    optimizer steps of batch 4 (30 steps = 120 dialogues, about 14 min of training on 2 idle cores
    at the recipe's ~28 s per step; the whole epoch over the 500 - 64 dialogues left by
    `--summary-eval 64` is `--sft-steps 109`).
(b) preference on HH-RLHF: `trainers/reward.py` runs as a subprocess on a prompt-level split
    (20 % of the prompts, at most `--eval-pairs` pairs held out). On the same split it fits the
    TF-IDF + logistic-regression baseline on all training pairs and trains the LoRA reward model
    for `--rm-steps` steps of `--rm-batch` pairs (LoRA on the top `--rm-lora-layers` blocks,
    sequences cut to `--rm-max-length` tokens), then scores both on the held-out pairs.
    Budget: 250 steps x 4 pairs = 1000 pairs, about 18 min of training on 2 idle cores
    (4.2-8.9 s per step measured), plus ~3 min to load, fit the baseline and score 200 pairs.
    With 75 steps (300 pairs) the reward model stayed at chance (0.50); 250 steps reached 0.55.

Prints a table (and writes `quality.json` in `--out`) with the wall time of every part; the
machine may be shared, so times are wall-clock, not CPU time. Reference on this hardware
(DESIGN.md): TF-IDF + LR on HH-RLHF accuracy 0.53 / log loss 0.688; plain TRL SFT over 500
dialogues (36 min) took ROUGE-L 0.167 -> 0.284.
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time
from typing import Any

REPO = pathlib.Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO.parent / "shared" / "data"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="Folder holding the shared data sets.")
    parser.add_argument("--part", choices=("all", "summary", "preference"), default="all")
    parser.add_argument("--model", default="bundled", help="Base model for both parts.")
    parser.add_argument("--out", default=str(REPO / ".flywheel" / "benchmarks" / "quality"),
                        help="Where adapters, logs and quality.json go.")
    parser.add_argument("--sft-steps", type=int, default=30, help="SFT optimizer steps (batch 4).")
    parser.add_argument("--summary-eval", type=int, default=24, help="Held-out dialogues scored before/after.")
    parser.add_argument("--rm-steps", type=int, default=250, help="Reward-model optimizer steps.")
    parser.add_argument("--rm-batch", type=int, default=4, help="Preference pairs per reward-model step.")
    parser.add_argument("--rm-lora-layers", type=int, default=8, help="LoRA on the top N blocks (0: all).")
    parser.add_argument("--rm-max-length", type=int, default=256, help="Tokens per scored sequence.")
    parser.add_argument("--rm-lr", type=float, default=5e-4, help="Reward-model learning rate.")
    parser.add_argument("--eval-pairs", type=int, default=200, help="Most held-out HH-RLHF pairs scored.")
    return parser.parse_args(argv)


def run_trainer(script: str, argv: list[str], log: pathlib.Path) -> float:
    """Run `python trainers/<script>` with output in `log`; return its wall time in seconds.

    The trainer gets its own FLYWHEEL_HOME (no demo feedback mixed in) and the shared model cache.
    """
    from hub.paths import flywheel_cache

    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "FLYWHEEL_HOME": str(log.parent / "home"),
           "FLYWHEEL_CACHE": str(flywheel_cache())}
    command = [sys.executable, str(REPO / "trainers" / script), *argv]
    print(f"$ {' '.join(command[1:])}\n  (log: {log})", flush=True)
    started = time.monotonic()
    with log.open("w") as handle:
        code = subprocess.run(command, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT, env=env).returncode
    seconds = time.monotonic() - started
    if code != 0:
        tail = log.read_text(errors="replace").replace("\r", "\n").strip().splitlines()[-5:]
        raise SystemExit(f"{script} failed (exit {code}) after {seconds:.0f} s:\n" + "\n".join(tail))
    return seconds


def train_runtime(out: pathlib.Path) -> float | None:
    """Seconds the trainer's own loop took (from its metrics.jsonl), without loading and evaluation."""
    path = out / "metrics.jsonl"
    if not path.exists():
        return None
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return next((float(r["train_runtime"]) for r in rows if "train_runtime" in r), None)


def shared_file(args: argparse.Namespace, folder: str, name: str, what: str) -> pathlib.Path:
    """A file of ../shared/data (or --data), or exit with one line saying where it was looked for."""
    data = pathlib.Path(args.data) / folder / name
    if not data.exists():
        raise SystemExit(f"{what} not found at {data}: pass --data <folder with {folder}/>.")
    return data


def summary_part(args: argparse.Namespace, out: pathlib.Path) -> dict[str, Any]:
    data = shared_file(args, "dialogue_summary", "dialogsum_validation.jsonl", "DialogSum")
    target = out / "dialogue_summary-sft"
    wall = run_trainer("sft.py", [  # the recipe's settings, on --data, held out and cut to the budget
        "--config", str(REPO / "recipes" / "dialogue_summary-sft.yaml"), "--model", args.model,
        "--seed-data", str(data), "--eval-limit", str(args.summary_eval), "--max-steps", str(args.sft_steps),
        "--output-dir", str(target), "--report-to", "none", "--logging-steps", "5",
    ], out / "sft.log")
    before = json.loads((target / "eval_before.json").read_text())
    after = json.loads((target / "eval_after.json").read_text())
    return {"wall_seconds": wall, "train_seconds": train_runtime(target), "steps": args.sft_steps,
            "examples_seen": 4 * args.sft_steps, "held_out": len(after["samples"]),
            "before": before["metrics"], "after": after["metrics"]}


def preference_part(args: argparse.Namespace, out: pathlib.Path) -> dict[str, Any]:
    data = shared_file(args, "preference", "hh_rlhf.jsonl", "HH-RLHF")
    target = out / "arena-reward"
    wall = run_trainer("reward.py", [
        "--task", "arena", "--model", args.model, "--seed-data", str(data), "--no-use-feedback",
        "--eval-limit", str(args.eval_pairs), "--max-steps", str(args.rm_steps),
        "--per-device-train-batch-size", "1", "--gradient-accumulation-steps", str(args.rm_batch),
        "--lora-layers", str(args.rm_lora_layers), "--max-length", str(args.rm_max_length),
        "--learning-rate", str(args.rm_lr), "--output-dir", str(target), "--report-to", "none",
        "--logging-steps", "5",
    ], out / "reward.log")
    before = json.loads((target / "eval_before.json").read_text())  # chance, and the TF-IDF baseline
    after = json.loads((target / "eval_after.json").read_text())  # the reward model
    models = {"chance": before["metrics"], **before["baselines"], "reward_model": after["metrics"]}
    return {"wall_seconds": wall, "train_seconds": train_runtime(target), "steps": args.rm_steps,
            "pairs_seen": args.rm_steps * args.rm_batch, "models": models, **after["info"]}


def table(report: dict[str, Any]) -> str:
    lines = ["| part | model | data | metric | value | wall time |", "|---|---|---|---|---|---|"]
    summary = report.get("summary")
    if summary:
        minutes = f"{summary['wall_seconds'] / 60:.1f} min (training {(summary['train_seconds'] or 0) / 60:.1f})"
        held = f"{summary['held_out']} held-out dialogues"
        lines.append(f"| dialogue_summary | base model | {held} | ROUGE-L | {summary['before']['rougeL']:.4f} | |")
        lines.append(f"| dialogue_summary | + SFT LoRA, {summary['steps']} steps x 4 | {held} | ROUGE-L | "
                     f"{summary['after']['rougeL']:.4f} | {minutes} |")
    preference = report.get("preference")
    if preference:
        minutes = (f"{preference['wall_seconds'] / 60:.1f} min "
                   f"(training {(preference['train_seconds'] or 0) / 60:.1f})")
        models = preference["models"]
        held = f"{preference['held_out_pairs']} held-out HH-RLHF pairs"
        names = {"chance": "chance",
                 "TF-IDF + logistic regression": f"TF-IDF + LR ({preference['train_pairs']} train pairs)",
                 "reward_model": f"LoRA reward model ({preference['pairs_seen']} pairs seen)"}
        for key, label in names.items():
            if key in models:
                m = models[key]
                wall = minutes if key == "reward_model" else ""
                lines.append(f"| preference | {label} | {held} | accuracy / log loss | "
                             f"{m['accuracy']:.4f} / {m['log_loss']:.4f} | {wall} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    out = pathlib.Path(args.out).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"config": vars(args)}
    if args.part in ("all", "summary"):
        report["summary"] = summary_part(args, out)
    if args.part in ("all", "preference"):
        report["preference"] = preference_part(args, out)
    (out / "quality.json").write_text(json.dumps(report, indent=2))
    print(table(report), flush=True)
    print(f"(details: {out / 'quality.json'})", flush=True)
    return report


if __name__ == "__main__":
    main()
