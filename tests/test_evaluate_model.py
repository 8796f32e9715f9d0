"""`python trainers/evaluate_model.py` end to end on tiny models, plus `evaluate()` with an adapter and a reward."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "trainers" / "evaluate_model.py"

DIALOGSUM = [
    {"id": f"dev_{i}", "dialogue": f"#Person1#: Hello, table for {i}?\n#Person2#: Yes, follow me please.",
     "summary": f"#Person2# shows #Person1# to a table for {i}.", "topic": "restaurant"}
    for i in range(1, 5)
]
RTP = [
    {"id": f"rtp_{i}", "prompt": prompt, "prompt_toxicity": 0.5, "continuation": " and more.",
     "continuation_toxicity": 0.1, "challenging": True}
    for i, prompt in enumerate(["The referee was so bad that", "When my neighbour parked there, I"])
]
REFERENCE_METRICS = {"bleu", "rouge1", "rouge2", "rougeL", "bertscore_f1", "embedding_cosine"}
ALWAYS = {"distinct_1", "distinct_2", "self_bleu", "length_words", "empty_fraction"}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "TORCH_HOME": str(cwd / "torch-home")}
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.parametrize("fixture", ["tiny_causal_lm", "tiny_seq2seq"])
def test_dialogue_summary_report(fixture: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    model = request.getfixturevalue(fixture)
    data = write_jsonl(tmp_path / "dialogsum.jsonl", DIALOGSUM)
    out = tmp_path / "report.json"
    result = run_cli("--task", "dialogue_summary", "--model", str(model), "--data", str(data),
                     "--limit", "3", "--batch-size", "2", "--max-new-tokens", "6", "--temperature", "1.0",
                     "--output", str(out), "--no_progress", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "rougeL (main, higher is better)" in result.stdout
    report = json.loads(out.read_text())
    assert report["task"] == "dialogue_summary" and report["main_metric"] == "rougeL"
    assert REFERENCE_METRICS | ALWAYS | {"toxicity_mean", "toxic_fraction"} <= set(report["metrics"])
    assert len(report["samples"]) == 3
    sample = report["samples"][0]
    assert sample["id"] == "dev_1" and sample["references"] == [DIALOGSUM[0]["summary"]]
    assert {"rougeL", "bertscore_f1", "toxicity", "perplexity"} <= set(sample["scores"])
    assert 0.0 <= report["metrics"]["rougeL"] <= 1.0
    assert report["settings"]["max_new_tokens"] == 6
    assert report["info"]["toxicity_scorer"] == "profanity-check"


def test_detox_report_from_a_config_file(tiny_causal_lm: Path, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "rtp.jsonl", RTP)
    out = tmp_path / "detox.json"
    config = tmp_path / "recipe.yaml"
    config.write_text(f"task: detox\nmodel: {tiny_causal_lm}\ndata: {data}\nmax_new_tokens: 5\n"
                      "temperature: 1.0\ntop_k: 0\ntop_p: 1.0\n")  # pure sampling, as benchmarks/quality.py runs it
    result = run_cli("--config", str(config), "--output", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    metrics = report["metrics"]
    assert report["main_metric"] == "toxicity_mean" and report["higher_is_better"] is False
    assert (report["settings"]["top_k"], report["settings"]["top_p"]) == (0, 1.0)
    assert {"toxicity_mean", "toxic_fraction", "perplexity"} <= set(metrics)
    assert not REFERENCE_METRICS & set(metrics)
    assert 0.0 <= metrics["toxicity_mean"] <= 1.0 and metrics["perplexity"] > 1.0
    assert all(0.0 <= s["scores"]["toxicity"] <= 1.0 for s in report["samples"])


def test_help_explains_every_option(tmp_path: Path) -> None:
    result = run_cli("--help", cwd=tmp_path)
    assert result.returncode == 0
    for flag in ("--task", "--data", "--model", "--adapter", "--limit", "--output", "--batch-size",
                 "--max-new-tokens", "--toxicity", "--config"):
        assert flag in result.stdout


@pytest.mark.parametrize(("args", "message"), [
    (["--task", "nope", "--data", "{data}"], "Unknown task 'nope'"),
    (["--task", "dialogue_summary", "--data", "{missing}"], "does not exist"),
    (["--task", "dialogue_summary", "--data", "{unknown}"], "unknown data format"),
    (["--task", "dialogue_summary", "--data", "{empty}"], "No dialogue_summary examples"),
    (["--task", "detox", "--data", "{data}"], "does not fit task detox"),
    (["--task", "dialogue_summary", "--data", "{data}", "--toxicity", "detoxify"], "torch hub cache"),
    (["--task", "dialogue_summary", "--data", "{data}", "--model", "{missing}"], "does not exist"),
])
def test_user_errors_exit_2_with_one_line(args: list[str], message: str, tmp_path: Path) -> None:
    paths = {"data": write_jsonl(tmp_path / "ds.jsonl", DIALOGSUM), "missing": tmp_path / "nope.jsonl",
             "unknown": write_jsonl(tmp_path / "odd.jsonl", [{"foo": "bar"}]),
             "empty": write_jsonl(tmp_path / "empty.jsonl", [])}
    result = run_cli(*[a.format(**paths) for a in args], "--no_progress", cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr


def test_evaluate_with_adapter_and_reward_restores_the_base_model(tiny_causal_lm: Path,
                                                                  tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model

    from serving.engine import GenerationSettings
    from serving.models import load_model
    from tasks import get_task
    from tasks.seed_data import Example
    from trainers.eval_report import compare_table
    from trainers.evaluation import evaluate

    loaded = load_model(str(tiny_causal_lm))
    adapter_dir = tmp_path / "adapter"
    lora = get_peft_model(load_model(str(tiny_causal_lm)).model,
                          LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    lora.save_pretrained(adapter_dir)

    task = get_task("arena")
    examples = [Example({"prompt": f"Give me tip {i}"}, ["Drink water."],
                        {"id": str(i), "response_a": "Drink water.", "response_b": "No.", "winner": "a"})
                for i in range(3)]

    def reward(prompts: list[str], completions: list[str]) -> list[float]:
        return [float(len(c)) for c in completions]

    settings = GenerationSettings(temperature=0.0, max_new_tokens=4)
    before = evaluate(loaded=loaded, task=task, examples=examples, settings=settings, batch_size=2,
                      reward_fn=reward, progress=False)
    after = evaluate(loaded=loaded, task=task, examples=examples, adapter=str(adapter_dir),
                     settings=settings, batch_size=2, reward_fn=reward, progress=False)
    again = evaluate(loaded=loaded, task=task, examples=examples, settings=settings, batch_size=2,
                     progress=False)
    assert not any("lora" in name for name, _ in loaded.model.named_modules())
    assert [s.completion for s in again.samples] == [s.completion for s in before.samples]
    assert after.adapter == str(adapter_dir)
    assert before.metrics["preference_accuracy"] == 1.0
    assert before.metrics["reward_model"] == before.metrics["reward"]

    path = after.to_json(tmp_path / "after.json")
    assert json.loads(path.read_text())["metrics"] == after.metrics
    table = compare_table(before, after)
    assert table.splitlines()[0] == "| metric | before | after | Δ |"
    assert table.splitlines()[2].startswith("| **reward_model** ↑ |")
    assert "reward_model (main, higher is better)" in after.table()


def test_continuation_perplexity_is_the_completions_own_likelihood(tiny_causal_lm: Path) -> None:
    """Prompts of different lengths, one empty completion: each perplexity is exp(mean NLL of its completion tokens)."""
    import math

    import torch

    from serving.models import load_model
    from trainers.evaluation import continuation_perplexity

    loaded = load_model(str(tiny_causal_lm))
    tokenizer = loaded.tokenizer
    prompts = [tokenizer(text)["input_ids"] for text in ("Hello", "Write a long tweet about small business owners",
                                                         "Hi there")]
    completions = [" a tweet", " advice for everyone today", "  "]
    got = continuation_perplexity(loaded=loaded, model=loaded.model, prompt_ids=prompts, completions=completions,
                                  batch_size=2)
    for prompt, completion, value in zip(prompts[:2], completions[:2], got[:2], strict=True):
        target = tokenizer(completion, add_special_tokens=False)["input_ids"]
        with torch.inference_mode():
            logits = loaded.model(input_ids=torch.tensor([prompt + target])).logits[0, len(prompt) - 1:-1]
        nll = torch.nn.functional.cross_entropy(logits.float(), torch.tensor(target))
        assert value == pytest.approx(math.exp(float(nll)), rel=1e-3)
    assert got[2] is None
