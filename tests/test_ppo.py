"""trainers/ppo.py and trainers/grpo.py end to end on tiny models: learning, the KL controller,
--resume, --push, two processes under torchrun, GRPO/RLOO, and bad configurations (exit 2, one line)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import load_file

from tests.trainer_utils import error_lines, train
from trainers import grpo, ppo
from trainers.reward_functions import REWARDS

ROOT = Path(__file__).resolve().parents[1]
TARGET = "conversation"
"""The trivial test reward: how often the policy says this word (one token of the tiny tokenizer)."""


def count_target(argument: str | None) -> Any:
    def reward(prompts: list[str], completions: list[str]) -> list[float]:
        return [completion.count(TARGET) / 4 for completion in completions]

    return reward


@pytest.fixture(autouse=True)
def target_reward(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(REWARDS, "target", count_target)


@pytest.fixture(autouse=True)
def one_thread() -> Any:
    """Tiny models run ~8x faster on one thread than on two contended ones (and the results are the same)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def learnable_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama whose LoRA can move its next-token distribution within a few steps.

    The shared tiny model ties small (std 0.02) embeddings to its output layer, which caps any
    logit change near 0.6 nats; here the output layer is separate and initialised wider.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.tiny_models import build_tokenizer

    out = tmp_path_factory.mktemp("learnable-lm")
    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=tokenizer.bos_token_id, tie_word_embeddings=False, initializer_range=0.5)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def rtp_file(path: Path, rows: int = 24) -> Path:
    """Prompts in the RealToxicityPrompts format of ../shared/data/toxicity."""
    with path.open("w", encoding="utf-8") as handle:
        for i in range(rows):
            handle.write(json.dumps({"id": f"rtp_{i}", "prompt": f"The fans at game {i} were",
                                     "continuation": " loud.", "prompt_toxicity": 0.1}) + "\n")
    return path


TRAINERS = {"ppo": (ppo.main, ppo.PPOArgs), "grpo": (grpo.main, grpo.GRPOArgs)}
KL_COEF = {"ppo": "init-kl-coef", "grpo": "beta"}


def options(model: Path, data: Path, out: Path, *, trainer: str = "ppo", **overrides: Any) -> list[str]:
    """Flags of a short run of `trainer` (ppo or grpo) on the test reward."""
    values = {"task": "detox", "model": str(model), "seed-data": str(data), "reward": "target",
              "output-dir": str(out), "max-steps": 3, "per-device-train-batch-size": 4, "response-length": 4,
              "learning-rate": 3e-3, "eval-limit": 0, "report-to": "none", "lora-r": 8, "lora-alpha": 16,
              KL_COEF[trainer]: 0.01, "min-rows": 4, **overrides}
    return [part for key, value in values.items() for part in (f"--{key}", str(value))]


def log_rows(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "metrics_log.jsonl").read_text().splitlines()]


def lora_tensors(path: Path) -> dict[str, Any]:
    return {k: v for k, v in load_file(str(path)).items() if "lora_" in k}


@pytest.mark.parametrize("top_blocks", [None, 1], ids=["lora-everywhere", "lora-on-the-top-block"])
def test_forward_pass_reproduces_the_logits_and_values_of_generate(learnable_lm: Path, top_blocks: int | None) -> None:
    """Left-padded prompts of different lengths: the training forward must see what generate saw, so the
    rollout may take its old logprobs and values from `generate`'s own outputs. With LoRA on the top block
    only, the forward from the frozen block's output (`boundary`) gives the same logits, values, reference
    logits and gradients as the whole network."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainers.common import top_block_linears

    tokenizer = AutoTokenizer.from_pretrained(learnable_lm)
    tokenizer.padding_side = "left"
    base = AutoModelForCausalLM.from_pretrained(learnable_lm)
    targets = "all-linear" if top_blocks is None else top_block_linears(base, top_blocks, "all-linear")
    config = LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False)
    model = ppo.PolicyWithValue(get_peft_model(base, config)).eval()
    assert model.frozen_blocks == (0 if top_blocks is None else 1)
    torch.nn.init.normal_(model.value_head.weight)  # the head starts at zero: give the values something to show
    encoded = tokenizer(["Hello", "Write a tweet about advice for small business owners"], return_tensors="pt",
                        padding=True)
    torch.manual_seed(0)
    with torch.no_grad():
        generated = model.policy.generate(**encoded, do_sample=True, top_k=0, max_new_tokens=5, min_new_tokens=5,
                                          pad_token_id=tokenizer.pad_token_id, output_logits=True,
                                          output_hidden_states=True, return_dict_in_generate=True)
        attention = torch.cat([encoded["attention_mask"], torch.ones(2, 5, dtype=torch.long)], dim=1)
        logits, values = model(generated.sequences, attention, 5)
        generation_logits, generation_values, boundary = model.generation_outputs(generated)
    assert torch.allclose(logits, generation_logits, atol=1e-4)
    assert values.shape == (2, 5) and values.abs().min() > 1e-3
    assert torch.allclose(values, generation_values, atol=1e-4)
    if top_blocks is None:
        assert boundary is None
        return
    assert boundary.shape == (2, generated.sequences.shape[1] - 1, 32)
    gradients = []
    for cached in (None, boundary):
        model.zero_grad()
        new_logits, new_values = model(generated.sequences, attention, 5, boundary=cached)
        assert torch.allclose(new_logits, logits, atol=1e-4) and torch.allclose(new_values, values, atol=1e-4)
        (new_logits.logsumexp(-1).sum() + new_values.sum()).backward()
        gradients.append([p.grad.clone() for p in model.parameters() if p.requires_grad])
        with torch.no_grad(), model.policy.disable_adapter():
            reference = model(generated.sequences, attention, 5, with_values=False, boundary=cached)[0]
        assert not torch.allclose(reference, logits, atol=1e-3)
        gradients.append([reference])
    full, cached = gradients[0] + gradients[1], gradients[2] + gradients[3]
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-4) for a, b in zip(full, cached, strict=True))


def test_checkpointed_layers_give_the_same_gradients_and_keep_fewer_activations(learnable_lm: Path) -> None:
    """`--activation-checkpointing` (PPO's default) recomputes layers in backward: same loss and gradients."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    def one_backward(checkpointed: bool) -> tuple[float, list[torch.Tensor], int]:
        torch.manual_seed(0)
        config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
        model = ppo.PolicyWithValue(get_peft_model(AutoModelForCausalLM.from_pretrained(learnable_lm), config))
        model.eval()
        if checkpointed:
            assert model.checkpoint_layers()
        ids = torch.randint(3, 60, (2, 12))
        saved = 0

        def count(tensor: torch.Tensor) -> torch.Tensor:
            nonlocal saved
            saved += tensor.numel()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(count, lambda tensor: tensor):
            logits, values = model(ids, torch.ones_like(ids), 5)
            loss = logits.logsumexp(-1).mean() + values.square().mean()
        loss.backward()
        grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
        assert not any(module.training for module in model.modules() if isinstance(module, torch.nn.Dropout))
        return loss.item(), grads, saved

    plain, checkpointed = one_backward(False), one_backward(True)
    assert plain[0] == pytest.approx(checkpointed[0], abs=1e-6)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(plain[1], checkpointed[1], strict=True))
    assert checkpointed[2] < plain[2] / 2


@pytest.mark.parametrize("lora_layers", [0, 1], ids=["lora-everywhere", "lora-on-the-top-block"])
def test_reward_rises_and_the_kl_controller_follows_its_target(learnable_lm: Path, tmp_path: Path, lora_layers: int,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """With `--lora-layers 1` the update runs only the top block, from the bottom block's rollout output."""
    out = tmp_path / "out"
    argv = options(learnable_lm, rtp_file(tmp_path / "rtp.jsonl"), out, **{
        "max-steps": 8, "per-device-train-batch-size": 8, "learning-rate": 1e-2, "kl-target": 0.5,
        "kl-horizon": 200, "save-steps": 5, "lora-layers": lora_layers})

    code, _, err = train(ppo.main, ppo.PPOArgs, argv, capsys)

    assert code == 0, err[-2000:]
    rows = log_rows(out)
    assert [r["step"] for r in rows] == list(range(1, 9))
    for key in ("reward", "kl", "kl_coef", "entropy", "clipfrac", "value_loss", "approx_kl", "policy_loss"):
        assert all(isinstance(r[key], float) for r in rows), key
    first, last = [r["reward"] for r in rows[:2]], [r["reward"] for r in rows[-2:]]
    assert sum(last) / 2 > sum(first) / 2 + 0.05, [r["reward"] for r in rows]
    # The adaptive controller raises the KL coefficient while KL is above target, lowers it below.
    for now, after in zip(rows, rows[1:], strict=False):
        if abs(now["kl"] - 0.5) > 1e-6:
            assert (after["kl_coef"] > now["kl_coef"]) == (now["kl"] > 0.5), (now, after)
    # Checkpoints keep the value head for --resume; the adapter folder holds the LoRA only.
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-5", "checkpoint-8"]
    assert (out / "checkpoint-8" / "value_head.safetensors").exists()
    assert (out / "adapter_model.safetensors").exists() and not (out / "value_head.safetensors").exists()
    targets = json.loads((out / "adapter_config.json").read_text())["target_modules"]
    assert all(".layers.1." in name for name in targets) if lora_layers else targets
    assert (out / "training_curves.png").exists()
    assert "reward=" in err and "kl=" in err  # the progress bar and the per-step log line


def test_resume_continues_exactly_and_push_publishes_lora_and_card(learnable_lm: Path, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    data = rtp_file(tmp_path / "rtp.jsonl", rows=16)
    # Held-out prompts from their own file: the training prompts stay the same in every leg.
    held_out = tmp_path / "held_out.jsonl"
    held_out.write_text(json.dumps({"prompt": "The referee was", "continuation": " late."}) + "\n")
    straight, split = tmp_path / "straight", tmp_path / "split"
    published = tmp_path / "published"
    assert train(ppo.main, ppo.PPOArgs, options(learnable_lm, data, straight), capsys)[0] == 0
    assert train(ppo.main, ppo.PPOArgs, options(learnable_lm, data, split, **{"max-steps": 2}), capsys)[0] == 0

    code, out, err = train(ppo.main, ppo.PPOArgs, options(learnable_lm, data, split, **{
        "resume": "latest", "eval-data": str(held_out), "eval-limit": 2, "eval-max-new-tokens": 4,
        "push": "true", "force": "true", "hub-repo": str(published)}), capsys)

    assert code == 0, err[-2000:]
    assert [r["step"] for r in log_rows(split)] == [1, 2, 3]
    resumed, reference = lora_tensors(split / "adapter_model.safetensors"), \
        lora_tensors(straight / "adapter_model.safetensors")
    assert resumed.keys() == reference.keys() and resumed
    for name, tensor in reference.items():
        assert (resumed[name] == tensor).all(), name
    assert sorted(p.name for p in published.iterdir()) == [
        "README.md", "adapter_config.json", "adapter_model.safetensors", "training_curves.png"]
    card = (published / "README.md").read_text()
    assert "PPO" in card and "| metric | before | after |" in card and "toxicity_mean" in card
    assert "Pushed adapter to" in out


def test_two_processes_end_with_identical_adapters(learnable_lm: Path, tmp_path: Path,
                                                   flywheel_home: Path) -> None:
    driver = tmp_path / "driver.py"
    driver.write_text(textwrap.dedent(f"""
        import os
        from pathlib import Path

        from safetensors.torch import save_file

        from trainers import grpo, ppo
        from trainers.common import run
        from trainers.reward_functions import REWARDS

        REWARDS["target"] = lambda argument: lambda prompts, completions: [
            c.count({TARGET!r}) / 4 for c in completions]
        original = ppo.finish

        def finish(training, *, model, **kwargs):  # every rank dumps its adapter before rank 0 saves it
            weights = {{k: v.detach().clone().contiguous() for k, v in model.state_dict().items()
                       if "lora_" in k}}
            save_file(weights, str(training.out / f"rank{{os.environ['RANK']}}.safetensors"))
            return original(training, model=model, **kwargs)

        ppo.finish = finish
        run(ppo.main, ppo.PPOArgs)
    """))
    out = tmp_path / "out"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(driver), *options(learnable_lm, rtp_file(tmp_path / "rtp.jsonl"), out)]
    env = {**os.environ, "FLYWHEEL_HOME": str(flywheel_home), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(ROOT)}

    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)

    assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1 = lora_tensors(out / "rank0.safetensors"), lora_tensors(out / "rank1.safetensors")
    assert rank0.keys() == rank1.keys() and rank0
    assert all((rank0[k] == rank1[k]).all() for k in rank0)
    assert any(rank0[k].abs().sum() > 0 for k in rank0 if "lora_B" in k)  # it trained (B starts at 0)
    # 3 steps of 2 x 4 prompts: the log counts the episodes of both processes.
    assert [r["episodes"] for r in log_rows(out)] == [8, 16, 24]
    assert (out / "adapter_model.safetensors").exists()


@pytest.mark.parametrize("algo", ["grpo", "rloo"])
def test_grpo_and_rloo_run_with_the_same_rewards(algo: str, learnable_lm: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    argv = options(learnable_lm, rtp_file(tmp_path / "rtp.jsonl"), out, trainer="grpo", algo=algo, **{
        "max-steps": 1, "num-generations": 2})

    code, _, err = train(*TRAINERS["grpo"], argv, capsys)

    assert code == 0, err[-2000:]
    assert (out / "adapter_model.safetensors").exists()
    assert "target" in (out / "metrics.jsonl").read_text()  # TRL logged the reward term by name


@pytest.mark.parametrize("trainer, extra, message", [
    ("ppo", ["--reward", "niceness"], "Unknown reward 'niceness'"),
    ("ppo", ["--reward", ""], "No reward given"),
    ("ppo", ["--reward", "target,toxicity:x"], "Unknown reward 'toxicity:x'"),
    ("ppo", ["--reward", "reward_model=/nonexistent/reward-model"], "does not exist"),
    ("ppo", ["--reward", "ratings"], "No tweet ratings reward model"),
    ("ppo", ["--per-device-train-batch-size", "0"], "batch-size must be at least 1"),
    ("ppo", ["--num-mini-batches", "3"], "multiple of --num-mini-batches"),
    ("ppo", ["--resume", "latest"], "no checkpoint"),
    ("ppo", ["--resume", "/nonexistent/checkpoint-3"], "not a checkpoint folder"),
    ("ppo", ["--algo", "grpo"], "not used by the HfArgumentParser: ['--algo', 'grpo']"),  # grpo.py's option
    ("grpo", ["--reward", "niceness"], "Unknown reward 'niceness'"),
    ("grpo", ["--algo", "a2c"], "Unknown --algo 'a2c': use grpo or rloo"),
    ("grpo", ["--num-generations", "3"], "multiple of --num-generations (3)"),
    ("grpo", ["--num-generations", "1"], "--num-generations must be at least 2"),
    ("grpo", ["--resume", "latest"], "no checkpoint"),
])
def test_bad_configuration_exits_2_with_one_line(trainer: str, extra: list[str], message: str,
                                                 tiny_causal_lm: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    argv = options(tiny_causal_lm, rtp_file(tmp_path / "rtp.jsonl"), tmp_path / "out", trainer=trainer) + extra

    code, _, err = train(*TRAINERS[trainer], argv, capsys)

    assert code == 2
    lines = error_lines(err)
    assert len(lines) == 1 and message in lines[0], err[-2000:]
    assert "Traceback" not in err


def test_reward_model_folder_without_its_files_is_refused(tiny_causal_lm: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "reward-model"
    empty.mkdir()
    argv = options(tiny_causal_lm, rtp_file(tmp_path / "rtp.jsonl"), tmp_path / "out",
                   reward=f"target:1.0,reward_model={empty}:0.5")

    code, _, err = train(ppo.main, ppo.PPOArgs, argv, capsys)

    assert code == 2
    assert error_lines(err) == [f"error: Reward model {empty} lacks adapter_config.json, "
                                "adapter_model.safetensors: not a Flywheel reward model."]


def test_detox_recipe_parses_and_every_option_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    import dataclasses

    from trl import TrlParser

    (config,) = TrlParser((ppo.PPOArgs,)).parse_args_and_config(
        args=["--config", str(ROOT / "recipes" / "detox-ppo.yaml")])
    assert config.task == "detox" and config.reward == "toxicity" and config.kl_target == 6.0
    assert config.seed_data == ["../shared/data/toxicity/rtp_prompts_toxic.jsonl"]
    for main, options_class in TRAINERS.values():
        code, out, _ = train(main, options_class, ["--help"], capsys)
        assert code == 0
        for item in dataclasses.fields(options_class):
            assert f"--{item.name}" in out and item.metadata.get("help"), item.name


def test_init_adapter_is_the_frozen_reference(learnable_lm: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """With --init-adapter the reference log-probs are the starting adapter's, before and after an update."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tests.adapter_factory import make_adapter
    from trainers.lifecycle import REFERENCE_ADAPTER

    champion = make_adapter(learnable_lm, tmp_path / "champion", seed=1)
    rollouts: list[ppo.Rollout] = []
    original = ppo.rollout
    monkeypatch.setattr(ppo, "rollout", lambda *args: rollouts.append(original(*args)) or rollouts[-1])
    out = tmp_path / "out"

    code, _, err = train(ppo.main, ppo.PPOArgs, options(learnable_lm, rtp_file(tmp_path / "rtp.jsonl"), out, **{
        "max-steps": 2, "init-adapter": str(champion), "learning-rate": 1e-2}), capsys)

    assert code == 0, err[-2000:]
    start = ppo.PolicyWithValue(PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(learnable_lm),
                                                          str(champion))).eval()

    def logprobs(model: Any, roll: ppo.Rollout) -> torch.Tensor:
        with torch.no_grad():
            logits, _ = model(roll.sequences, roll.attention, roll.responses.shape[1], with_values=False)
        return ppo.logprobs_of(logits, roll.responses) * roll.mask

    first, second = rollouts
    assert torch.allclose(first.logprobs, first.ref_logprobs, atol=1e-5)  # the policy starts as its reference
    for roll in rollouts:
        assert torch.allclose(roll.ref_logprobs, logprobs(start, roll), atol=1e-5)
        with start.policy.disable_adapter():  # the base model: not the reference
            assert not torch.allclose(roll.ref_logprobs, logprobs(start, roll), atol=1e-2)
    assert not torch.allclose(second.logprobs, second.ref_logprobs, atol=1e-3)  # the policy moved, not the reference
    assert not (out / REFERENCE_ADAPTER).exists() and (out / "adapter_model.safetensors").exists()
