"""Flywheel's PPO against TRL 1.12.0's PPOTrainer (speed, memory), and the detox run (toxicity before/after).

    python benchmarks/ppo.py                          # both parts on the default model (~35 min)
    python benchmarks/ppo.py --part speed --episodes 16
    python benchmarks/ppo.py --part detox --detox-steps 20
    python benchmarks/ppo.py --model <tiny model folder> --part speed --episodes 16   # a quick check

Speed: the same model, reward model (a Flywheel reward model: LoRA SEQ_CLS adapter with a score
head on the same base; TRL gets it merged), prompts (RealToxicityPrompts "challenging"), batch,
response length, PPO epochs and number of episodes for both. TRL 1.12.0 is installed with
`pip install --no-deps --target <cache>/trl-1.12.0` and runs in a subprocess with that folder
first on sys.path (benchmarks/ppo_trl_reference.py); it is never a project dependency. Figures:
training seconds per episode (model loading excluded) and peak resident memory of each process,
each printed with its ratio.

Detox: `trainers/ppo.py --config recipes/detox-ppo.yaml` on the default model, then the held-out
prompts (excluded from training) scored before and after with `trainers.evaluation.evaluate`:
the trainer's own greedy report, and pure sampling (temperature 1, no top-k/top-p, no repetition
penalty, 30 tokens) with alt-profanity-check, as the reference figures in DESIGN.md were measured.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import subprocess
import sys
import time
from typing import Any

REPO = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"
TRL_VERSION = "1.12.0"
LAUNCH = ("import resource, runpy, sys\nsys.argv = sys.argv[1:]\ntry:\n"
          "    runpy.run_path(sys.argv[0], run_name='__main__')\nfinally:\n"
          "    print('PEAK_RSS_MB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, flush=True)\n")
"""Runs a trainer script and reports its own peak RSS (the benchmark process is not counted)."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("all", "speed", "detox"), default="all")
    parser.add_argument("--model", default="bundled", help="Base model for both parts.")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="Folder holding the shared data sets.")
    parser.add_argument("--out", default=str(REPO / ".flywheel" / "benchmarks" / "ppo"))
    parser.add_argument("--trl-dir", default=None, help="Where TRL 1.12.0 is installed (default: in the cache).")
    parser.add_argument("--episodes", type=int, default=16, help="Speed part: episodes (prompts) per implementation.")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--response-length", type=int, default=30)
    parser.add_argument("--ppo-epochs", type=int, default=4)
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for every subprocess.")
    parser.add_argument("--detox-steps", type=int, default=20, help="Detox part: PPO steps (8 prompts each).")
    parser.add_argument("--detox-eval", type=int, default=64, help="Held-out prompts scored before/after.")
    parser.add_argument("--detox-samples", type=int, default=2, help="Sampled continuations per held-out prompt.")
    return parser.parse_args(argv)


def environment(args: argparse.Namespace) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false"}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    return env


def install_trl(target: pathlib.Path) -> pathlib.Path:
    """TRL 1.12.0 (the last release with PPOTrainer) in a folder of its own; no dependencies."""
    if not (target / "trl" / "__init__.py").exists():
        print(f"Installing trl=={TRL_VERSION} into {target} (benchmark only)", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target),
                        f"trl=={TRL_VERSION}"], check=True)
    return target


def make_reward_model(base: str, out: pathlib.Path) -> pathlib.Path:
    """A Flywheel-format reward model (LoRA SEQ_CLS + score head) on `base`; untrained, which costs the same."""
    if (out / "adapter_model.safetensors").exists():
        return out
    import torch
    from peft import LoraConfig, get_peft_model

    from serving.reward_models import load_reward_base

    torch.manual_seed(0)
    model, _, base_id = load_reward_base(base)
    peft_model = get_peft_model(model, LoraConfig(task_type="SEQ_CLS", r=8, lora_alpha=16,
                                                  target_modules=["q_proj", "v_proj"]))
    peft_model.peft_config["default"].base_model_name_or_path = base_id if base == "bundled" else base
    peft_model.save_pretrained(out, safe_serialization=True)
    return out


def rtp_prompts(args: argparse.Namespace) -> pathlib.Path:
    path = pathlib.Path(args.data) / "toxicity" / "rtp_prompts_toxic.jsonl"
    if not path.exists():
        raise SystemExit(f"error: {path} not found: pass --data <folder with toxicity/rtp_prompts_toxic.jsonl>")
    return path


def run_logged(command: list[str], log: pathlib.Path, env: dict[str, str]) -> str:
    """Run `command` with its output in `log`; return stdout (raise with the log's tail on failure)."""
    with log.open("w", encoding="utf-8") as handle:
        result = subprocess.run(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=handle, text=True)
        handle.write(result.stdout)
    if result.returncode != 0:
        raise SystemExit(f"error: {' '.join(command[:4])} ... failed; see {log}\n" + log.read_text()[-2000:])
    return result.stdout


def speed_part(args: argparse.Namespace, out: pathlib.Path) -> dict[str, Any]:
    from transformers import AutoTokenizer

    from serving.models import resolve_model_ref
    from tasks import get_task
    from tasks.seed_data import load_examples
    from trainers.rl_data import policy_prompt

    env = environment(args)
    model_dir = resolve_model_ref(args.model)[0]
    reward_model = make_reward_model(args.model if args.model == "bundled" else model_dir, out / "reward-model")
    task = get_task("detox")
    examples = load_examples(rtp_prompts(args), task=task, limit=max(args.episodes, 16))
    ours_prompts, trl_prompts = out / "prompts.jsonl", out / "prompts-rendered.jsonl"
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    with ours_prompts.open("w") as plain, trl_prompts.open("w") as rendered:
        for example in examples:
            plain.write(json.dumps({"prompt": example.inputs["prompt"], "continuation": ""}) + "\n")
            rendered.write(json.dumps({"text": policy_prompt(task, example.inputs["prompt"], tokenizer)}) + "\n")
    common = dict(batch=args.batch_size, length=args.response_length, epochs=args.ppo_epochs)

    trl_dir = install_trl(pathlib.Path(args.trl_dir) if args.trl_dir else _cache() / f"trl-{TRL_VERSION}")
    print(f"TRL {TRL_VERSION} PPOTrainer: {args.episodes} episodes ...", flush=True)
    stdout = run_logged([sys.executable, str(REPO / "benchmarks" / "ppo_trl_reference.py"), "--trl-dir",
                         str(trl_dir), "--model", model_dir, "--reward-model", str(reward_model), "--prompts",
                         str(trl_prompts), "--episodes", str(args.episodes), "--batch-size", str(args.batch_size),
                         "--response-length", str(args.response_length), "--ppo-epochs", str(args.ppo_epochs),
                         "--out", str(out / "trl")], out / "trl.log", env)
    trl = json.loads([line for line in stdout.splitlines() if line.startswith("{")][-1])

    print(f"Flywheel PPO: {args.episodes} episodes ...", flush=True)
    steps = max(1, args.episodes // args.batch_size)
    ours_out = out / "ours"
    for stale in (ours_out / "metrics_log.jsonl",):
        stale.unlink(missing_ok=True)
    stdout = run_logged([sys.executable, "-c", LAUNCH, str(REPO / "trainers" / "ppo.py"), "--task", "detox",
                         "--model", args.model, "--seed-data", str(ours_prompts), "--reward",
                         f"reward_model={reward_model}", "--max-steps", str(steps), "--per-device-train-batch-size",
                         str(args.batch_size), "--response-length", str(args.response_length), "--num-ppo-epochs",
                         str(args.ppo_epochs), "--eval-limit", "0", "--min-rows", "1", "--report-to", "none",
                         "--save-steps", str(10**6), "--output-dir", str(ours_out)], out / "ours.log", env)
    rows = [json.loads(line) for line in (ours_out / "metrics_log.jsonl").read_text().splitlines()]
    peak = float([line for line in stdout.splitlines() if line.startswith("PEAK_RSS_MB")][-1].split()[1])
    ours = {"impl": "flywheel", "train_seconds": sum(r["seconds"] for r in rows), "episodes": rows[-1]["episodes"],
            "peak_rss_mb": peak}
    for result in (trl, ours):
        result["seconds_per_episode"] = result["train_seconds"] / result["episodes"]
    return {"settings": {**common, "episodes": args.episodes, "model": args.model}, "trl": trl, "ours": ours,
            "speedup": trl["seconds_per_episode"] / ours["seconds_per_episode"],
            "memory_ratio": trl["peak_rss_mb"] / ours["peak_rss_mb"]}


def detox_part(args: argparse.Namespace, out: pathlib.Path) -> dict[str, Any]:
    from serving.engine import GenerationSettings
    from serving.models import load_model
    from tasks import get_task
    from tasks.seed_data import load_examples
    from tasks.toxicity import ProfanityCheckScorer
    from trainers.evaluation import evaluate

    env = environment(args)
    prompts = rtp_prompts(args)
    adapter = out / "detox-ppo"
    before_cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    print(f"Detox PPO: {args.detox_steps} steps ...", flush=True)
    run_logged([sys.executable, str(REPO / "trainers" / "ppo.py"), "--config", str(REPO / "recipes" / "detox-ppo.yaml"),
                "--model", args.model, "--seed-data", str(prompts), "--eval-data", str(prompts), "--eval-limit",
                str(args.detox_eval), "--max-steps", str(args.detox_steps), "--output-dir", str(adapter),
                "--report-to", "none"], out / "detox.log", env)
    train_seconds = time.perf_counter() - started
    cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    greedy = {name: json.loads((adapter / f"eval_{name}.json").read_text())["metrics"] for name in ("before", "after")}
    steps = [json.loads(line) for line in (adapter / "metrics_log.jsonl").read_text().splitlines()]

    # Pure sampling on the same held-out prompts, several continuations each, one seed for both models.
    task = get_task("detox")
    held_out = load_examples(prompts, task=task, limit=args.detox_eval) * args.detox_samples
    settings = GenerationSettings(temperature=1.0, top_k=0, top_p=1.0, repetition_penalty=1.0, max_new_tokens=30,
                                  seed=0)
    loaded = load_model(args.model)
    sampled = {}
    for name, ref in (("before", None), ("after", str(adapter))):
        report = evaluate(loaded=loaded, task=task, examples=held_out, adapter=ref, settings=settings,
                          toxicity=ProfanityCheckScorer(), progress=False)
        report.to_json(out / f"detox-sampled-{name}.json")
        sampled[name] = report.metrics
    return {"steps": args.detox_steps, "episodes": steps[-1]["episodes"], "held_out_prompts": args.detox_eval,
            "sampled_per_prompt": args.detox_samples, "train_and_greedy_eval_wall_seconds": train_seconds,
            "total_wall_seconds": time.perf_counter() - started,
            "cpu_seconds": (cpu.ru_utime + cpu.ru_stime) - (before_cpu.ru_utime + before_cpu.ru_stime),
            "reward_first_last": [steps[0]["reward"], steps[-1]["reward"]],
            "reward_mean_first_last_5": [_mean([r["reward"] for r in steps[:5]]),
                                         _mean([r["reward"] for r in steps[-5:]])],
            "kl_last": steps[-1]["kl"], "greedy": greedy, "sampled": sampled}


def _cache() -> pathlib.Path:
    from hub.paths import flywheel_cache

    return flywheel_cache() / "benchmarks"


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def table(report: dict[str, Any]) -> str:
    lines = [f"machine: {os.cpu_count()} cores, load average at start {report['load_start']}, "
             f"at end {report['load_end']}; threads {report['threads'] or 'torch default'}"]
    if "speed" in report:
        s = report["speed"]
        trl, ours = s["trl"], s["ours"]
        lines += ["", f"PPO vs TRL {TRL_VERSION} PPOTrainer ({s['settings']})",
                  f"  seconds/episode   TRL {trl['seconds_per_episode']:.2f}   "
                  f"Flywheel {ours['seconds_per_episode']:.2f}   -> {s['speedup']:.2f}x faster",
                  f"  peak RSS (MB)     TRL {trl['peak_rss_mb']:.0f}   Flywheel {ours['peak_rss_mb']:.0f}"
                  f"   -> {s['memory_ratio']:.2f}x less memory"]
    if "detox" in report:
        d = report["detox"]
        lines += ["", f"Detox PPO: {d['steps']} steps, {d['episodes']} episodes, {d['held_out_prompts']} held-out "
                  f"prompts; wall {d['total_wall_seconds'] / 60:.1f} min, CPU {d['cpu_seconds'] / 60:.1f} min",
                  f"  train reward (1 - toxicity) mean of first/last 5 steps: "
                  f"{d['reward_mean_first_last_5'][0]:.3f} -> {d['reward_mean_first_last_5'][1]:.3f}; "
                  f"KL at the end {d['kl_last']:.2f}"]
        for mode in ("sampled", "greedy"):
            b, a = d[mode]["before"], d[mode]["after"]
            ppl = (b.get("perplexity", float("nan")), a.get("perplexity", float("nan")))
            lines.append(f"  {mode:8s} toxicity_mean {b['toxicity_mean']:.3f} -> {a['toxicity_mean']:.3f}   "
                         f"toxic_fraction {b['toxic_fraction']:.3f} -> {a['toxic_fraction']:.3f}   "
                         f"perplexity {ppl[0]:.1f} -> {ppl[1]:.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)  # the sampled evaluation runs in this process
    out = pathlib.Path(args.out).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"load_start": os.getloadavg(), "threads": args.threads}
    if args.part in ("all", "speed"):
        report["speed"] = speed_part(args, out)
    if args.part in ("all", "detox"):
        report["detox"] = detox_part(args, out)
    report["load_end"] = os.getloadavg()
    (out / "report.json").write_text(json.dumps(report, indent=2))
    print(table(report), flush=True)
    return report


if __name__ == "__main__":
    main()
