"""Supervised fine-tuning of a LoRA adapter on edits, good flags, high ratings and seed pairs.

    python trainers/sft.py --task dialogue_summary \\
        --seed-data ../shared/data/dialogue_summary/dialogsum_validation.jsonl --max-steps 20
    python trainers/sft.py --config recipes/dialogue_summary-sft.yaml --push --hub-repo me/summary-sft

Causal LMs train with TRL's `SFTTrainer` on prompt/completion rows: the loss is on the completion
only, and only its tokens go through the vocabulary (`trainers/lm_head.py`); a batch's rows lie side
by side without padding. Seq2seq models (Flan-T5) train with transformers' `Seq2SeqTrainer`. The base
model is scored before and after on held-out examples; `--push` publishes the adapter only if it
scores better.
"""

import logging
from dataclasses import dataclass, field
from typing import Any

from tasks import SLUGS, get_task
from trainers.common import PolicyArgs, require_task, run, trl_args
from trainers.lifecycle import Outcome, Policy, evaluate_before, lora_model, prepare_policy, train_and_finish

logger = logging.getLogger("flywheel.trainers")

SFT_TASKS = tuple(slug for slug in SLUGS if slug != "arena")
"""Arena feedback is votes between two answers: train it with DPO (or a reward model) instead."""


@dataclass
class SFTArgs(PolicyArgs):
    """Options of `trainers/sft.py` (the common trainer options plus these)."""

    max_target_length: int = field(default=128, metadata={
        "help": "Seq2seq models only: longest target (summary, reply), in tokens."})
    completion_only_loss: bool = field(default=True, metadata={
        "help": "Causal LMs: compute the loss on the completion only, not on the prompt."})
    padding_free: bool = field(default=True, metadata={
        "help": "Causal LMs: lay a batch's rows side by side in one sequence instead of padding them to the "
                "longest (no compute spent on padding; rows longer than --max-length are left out)."})


def main(config: SFTArgs) -> Outcome | None:
    task = get_task(require_task(config, allowed=SFT_TASKS))
    policy = prepare_policy(config, method="sft", task=task, seq2seq=True)
    evaluate_before(policy.training)
    trainer = seq2seq_trainer(config, policy) if policy.loaded.is_seq2seq else causal_trainer(config, policy)
    return train_and_finish(policy.training, trainer)


def causal_trainer(config: SFTArgs, policy: Policy) -> Any:
    from trl import SFTConfig, SFTTrainer

    from trainers.lm_head import compact_lm_head

    # TRL does not truncate padding-free rows: over-long ones are dropped below instead.
    args = SFTConfig(**trl_args(config, policy.training.out, packing=False, padding_free=config.padding_free,
                                max_length=None if config.padding_free else config.max_length,
                                completion_only_loss=config.completion_only_loss))
    trainer = SFTTrainer(args=args, **policy.trainer_inputs())
    if config.padding_free:
        rows = trainer.train_dataset
        trainer.train_dataset = rows.filter(lambda row: len(row["input_ids"]) <= config.max_length)
        if len(trainer.train_dataset) < len(rows):
            logger.info("Left out %d rows longer than --max-length %d.", len(rows) - len(trainer.train_dataset),
                        config.max_length)
    compact_lm_head(trainer.model)
    return trainer


def seq2seq_trainer(config: SFTArgs, policy: Policy) -> Any:
    from transformers import DataCollatorForSeq2Seq, Seq2SeqTrainer, Seq2SeqTrainingArguments, set_seed

    tokenizer = policy.loaded.tokenizer

    def tokenize(batch: dict[str, list[str]]) -> dict[str, Any]:
        encoded = tokenizer(batch["prompt"], truncation=True, max_length=config.max_length)
        targets = tokenizer(text_target=batch["completion"], truncation=True,
                            max_length=config.max_target_length)
        encoded["labels"] = targets["input_ids"]
        return encoded

    rows = policy.data.train
    train = rows.map(tokenize, batched=True, remove_columns=rows.column_names)
    set_seed(config.seed)  # LoRA weights are initialised randomly: make that reproducible.
    model = lora_model(config, policy.loaded, task_type="SEQ_2_SEQ_LM")
    args = Seq2SeqTrainingArguments(**trl_args(config, policy.training.out))
    collator = DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100)
    return Seq2SeqTrainer(model=model, args=args, train_dataset=train, data_collator=collator,
                          processing_class=tokenizer)


if __name__ == "__main__":
    run(main, SFTArgs)
