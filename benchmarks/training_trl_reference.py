"""Plain TRL on the rows a Flywheel trainer would train on (run by benchmarks/training.py).

    python benchmarks/training_trl_reference.py sft --config recipes/dialogue_summary-sft.yaml --max-steps 10 \\
        --output-dir OUT

The first argument names the method (sft, dpo, kto, reward); every other flag is the Flywheel trainer's
own (`trainers/<method>.py --help`), parsed by that trainer's options class, so the recipe, data sources,
held-out split, batch size, learning rate, sequence length and LoRA settings are the same. What is
left out is everything Flywheel adds around TRL: no evaluation, no card, no memory or speed settings
of its own. The TRL config keeps TRL's defaults (activation checkpointing on, its own data pipeline
and fused LM head, padded batches) except fp32 on the CPU, as the project trains. The run writes
`metrics.jsonl` (the trainer's log history) and `resources.json` (peak memory per phase, measured as
`trainers/resources.py` measures our trainers) into `--output-dir`, like the Flywheel trainers.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Any

from trainers.common import lora_config

METHODS = {"sft": "SFTArgs", "dpo": "DPOArgs", "kto": "KTOArgs", "reward": "RewardArgs"}


def parse(argv: list[str]) -> tuple[str, Any]:
    """(method, the Flywheel trainer's options parsed from the remaining flags)."""
    from trl import TrlParser

    if not argv or argv[0] not in METHODS:
        raise SystemExit(f"usage: training_trl_reference.py {{{','.join(METHODS)}}} [trainer flags]")
    method = argv[0]
    options = getattr(importlib.import_module(f"trainers.{method}"), METHODS[method])
    (config,) = TrlParser((options,)).parse_args_and_config(args=argv[1:])
    return method, config


def common_args(config: Any, out: Path) -> dict[str, Any]:
    """The recipe's training hyperparameters; everything else is left to TRL's defaults (but fp32)."""
    return dict(output_dir=str(out), max_steps=config.max_steps, num_train_epochs=config.num_train_epochs,
                learning_rate=config.learning_rate, per_device_train_batch_size=config.per_device_train_batch_size,
                gradient_accumulation_steps=config.gradient_accumulation_steps, seed=config.seed,
                logging_steps=1, report_to=[], save_strategy="no", use_cpu=True, bf16=False)


def policy_trainer(method: str, config: Any, out: Path) -> Any:
    """SFT, DPO or KTO: TRL's trainer on the base model and the rows Flywheel's data pipeline builds."""
    import trl

    from tasks import get_task
    from trainers.lifecycle import prepare_policy

    policy = prepare_policy(config, method=method, task=get_task(config.task), seq2seq=False)
    extra: dict[str, Any] = {"max_length": config.max_length}
    if method in ("dpo", "kto"):
        extra["beta"] = config.beta
    if method == "dpo":
        extra["loss_type"] = [config.loss_type]
    config_class, trainer_class = {"sft": (trl.SFTConfig, trl.SFTTrainer), "dpo": (trl.DPOConfig, trl.DPOTrainer),
                                   "kto": (trl.KTOConfig, trl.KTOTrainer)}[method]
    return trainer_class(model=policy.loaded.model, args=config_class(**common_args(config, out), **extra),
                         train_dataset=policy.data.train, processing_class=policy.loaded.tokenizer,
                         peft_config=lora_config(config, task_type="CAUSAL_LM", model=policy.loaded.model))


def reward_trainer(config: Any, out: Path) -> Any:
    """TRL's RewardTrainer on a sequence classifier and the pairs Flywheel's reward trainer builds."""
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    from serving.reward_models import load_reward_base
    from tasks import get_task
    from trainers.reward import training_rows
    from trainers.training_data import collect_pairs

    model, tokenizer, _ = load_reward_base(config.model)
    pairs = collect_pairs(config, get_task(config.task))
    rows = training_rows(pairs.train, tokenizer, config)
    peft_config = lora_config(config, task_type="SEQ_CLS", model=model)  # the same LoRA as ours, --lora-layers too
    peft_config.modules_to_save = ["score"]
    args = RewardConfig(**common_args(config, out), max_length=None,
                        center_rewards_coefficient=config.center_rewards or None)
    return RewardTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                         peft_config=peft_config)


def main(argv: list[str] | None = None) -> None:
    from trainers.resources import meter

    meter().start()
    method, config = parse(sys.argv[1:] if argv is None else argv)
    out = Path(config.output_dir or "trl-reference")
    out.mkdir(parents=True, exist_ok=True)
    trainer = reward_trainer(config, out) if method == "reward" else policy_trainer(method, config, out)
    meter().enter("training")
    trainer.train()
    meter().enter("saving")
    with (out / "metrics.jsonl").open("w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in trainer.state.log_history)
    (out / "resources.json").write_text(json.dumps(meter().summary(), indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
