"""TRL 1.12.0's PPOTrainer on the benchmark's model, reward model and prompts (run by benchmarks/ppo.py).

TRL removed PPOTrainer after 1.12.0, so `benchmarks/ppo.py` installs that release into a folder of
its own (`pip install --no-deps --target <dir> trl==1.12.0`) and runs this script in a subprocess
with `--trl-dir <dir>` first on sys.path; the project's own TRL is never touched.

    python benchmarks/ppo_trl_reference.py --trl-dir DIR --model M --reward-model R --prompts P \\
        --episodes 16 --out OUT

TRL's PPO as its examples use it: full fine-tuning, with separate policy, reference, value and
reward models. Prints one JSON line: training seconds, episodes, peak RSS.
"""

import argparse
import sys


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trl-dir", required=True, help="Folder holding TRL 1.12.0 (pip --target).")
    parser.add_argument("--model", required=True, help="Policy/reference/value base model folder.")
    parser.add_argument("--reward-model", required=True, help="Flywheel reward model folder (LoRA SEQ_CLS).")
    parser.add_argument("--prompts", required=True, help="JSONL of policy prompts (`text`: rendered prompt).")
    parser.add_argument("--episodes", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--response-length", type=int, default=30)
    parser.add_argument("--ppo-epochs", type=int, default=4)
    parser.add_argument("--learning-rate", type=float, default=1e-5)
    parser.add_argument("--out", required=True)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    sys.path.insert(0, args.trl_dir)  # TRL 1.12.0 shadows the project's TRL in this process only
    import json
    import resource
    import time

    import torch
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    from serving.reward_models import load_reward_model

    assert trl.__version__ == "1.12.0", f"expected TRL 1.12.0 from {args.trl_dir}, got {trl.__version__}"
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    with open(args.prompts, encoding="utf-8") as handle:
        texts = [json.loads(line)["text"] for line in handle if line.strip()]
    dataset = Dataset.from_dict({"input_ids": [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]})

    policy = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    ref_policy = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    value_model = AutoModelForSequenceClassification.from_pretrained(args.model, num_labels=1, dtype=torch.float32)
    value_model.config.pad_token_id = tokenizer.pad_token_id
    reward_model = load_reward_model(args.reward_model).model  # the same scorer Flywheel's run uses
    reward_model.config.pad_token_id = tokenizer.pad_token_id

    config = PPOConfig(output_dir=args.out, per_device_train_batch_size=args.batch_size, num_mini_batches=1,
                       gradient_accumulation_steps=1, num_ppo_epochs=args.ppo_epochs,
                       total_episodes=args.episodes, response_length=args.response_length, temperature=1.0,
                       learning_rate=args.learning_rate, stop_token="eos", num_sample_generations=0,
                       save_strategy="no", report_to=[], use_cpu=True, bf16=False, seed=0,
                       local_rollout_forward_batch_size=args.batch_size)
    trainer = PPOTrainer(args=config, processing_class=tokenizer, model=policy, ref_model=ref_policy,
                         reward_model=reward_model, train_dataset=dataset, value_model=value_model)
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    episodes = config.num_total_batches * config.batch_size
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"impl": "trl-1.12.0", "train_seconds": seconds, "episodes": episodes,
                      "peak_rss_mb": peak_kb / 1024}), flush=True)


if __name__ == "__main__":
    main()
