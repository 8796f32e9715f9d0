"""Supervised fine-tuning of a LoRA adapter on edits, good flags, high ratings and seed pairs.

    python trainers/sft.py --task dialogue_summary \\
        --seed-data ../shared/data/dialogue_summary/dialogsum_validation.jsonl --max-steps 20
    python trainers/sft.py --config recipes/dialogue_summary-sft.yaml --push --hub-repo me/summary-sft

Causal LMs train with TRL's `SFTTrainer` on prompt/completion rows (loss on the completion only);
seq2seq models (Flan-T5) train with transformers' `Seq2SeqTrainer`. The base model is scored
before and after on held-out examples; `--push` publishes the adapter only if it scores better.
"""


from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from serving.models import LoadedModel, load_model
from tasks import SLUGS, get_task
from trainers.common import (
    cpu_safe_training_args,
    lora_config,
    output_dir,
    report_rank,
    require_task,
    run,
)
from trainers.data import TrainingData, build_from_config, fit_length
from trainers.lifecycle import TrainerArgs, evaluate_before, evaluation_reward, finish

SFT_TASKS = tuple(slug for slug in SLUGS if slug != "arena")
"""Arena feedback is votes between two answers: train it with DPO (or a reward model) instead."""


@dataclass
class SFTArgs(TrainerArgs):
    """Options of `trainers/sft.py` (the common trainer options plus these)."""

    max_target_length: int = field(default=128, metadata={
        "help": "Seq2seq models only: longest target (summary, reply), in tokens."})
    completion_only_loss: bool = field(default=True, metadata={
        "help": "Causal LMs: compute the loss on the completion only, not on the prompt."})


def main(config: SFTArgs) -> None:
    task = get_task(require_task(config, allowed=SFT_TASKS))
    loaded = load_model(config.model)
    chat = loaded.has_chat_template and not loaded.is_seq2seq
    data = build_from_config(config, "sft", task=task, chat=chat)
    if not loaded.is_seq2seq:  # long prompts would leave no room for the completion the loss is on
        data = fit_length(data, loaded.tokenizer, max_length=config.max_length, min_rows=config.min_rows)
    out = output_dir(config, "sft")
    reward_fn = evaluation_reward(config)
    before = evaluate_before(config, loaded=loaded, task=task, examples=data.eval_examples,
                             reward_fn=reward_fn)
    trainer = _seq2seq_trainer(config, loaded, data, out) if loaded.is_seq2seq else \
        _causal_trainer(config, loaded, data, out)
    trainer.train()
    report_rank(trainer, "sft")
    finish(config, method="sft", task=task, loaded=loaded, model=trainer.model,
           log_history=trainer.state.log_history, data=data, before=before, out=out, reward_fn=reward_fn,
           pipeline_tag="text2text-generation" if loaded.is_seq2seq else "text-generation")


def _causal_trainer(config: SFTArgs, loaded: LoadedModel, data: TrainingData, out: Path) -> Any:
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(**cpu_safe_training_args(config, out), max_length=config.max_length,
                     completion_only_loss=config.completion_only_loss, packing=False,
                     gradient_checkpointing=False, ddp_find_unused_parameters=False)
    return SFTTrainer(model=loaded.model, args=args, train_dataset=data.train,
                      processing_class=loaded.tokenizer,
                      peft_config=lora_config(config, task_type="CAUSAL_LM"))


def _seq2seq_trainer(config: SFTArgs, loaded: LoadedModel, data: TrainingData, out: Path) -> Any:
    from peft import get_peft_model
    from transformers import DataCollatorForSeq2Seq, Seq2SeqTrainer, Seq2SeqTrainingArguments, set_seed

    tokenizer = loaded.tokenizer

    def tokenize(batch: dict[str, list[str]]) -> dict[str, Any]:
        encoded = tokenizer(batch["prompt"], truncation=True, max_length=config.max_length)
        targets = tokenizer(text_target=batch["completion"], truncation=True,
                            max_length=config.max_target_length)
        encoded["labels"] = targets["input_ids"]
        return encoded

    train = data.train.map(tokenize, batched=True, remove_columns=data.train.column_names)
    set_seed(config.seed)  # LoRA weights are initialised randomly: make that reproducible.
    model = get_peft_model(loaded.model, lora_config(config, task_type="SEQ_2_SEQ_LM"))
    args = Seq2SeqTrainingArguments(**cpu_safe_training_args(config, out), ddp_find_unused_parameters=False)
    collator = DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100)
    return Seq2SeqTrainer(model=model, args=args, train_dataset=train, data_collator=collator,
                          processing_class=tokenizer)


if __name__ == "__main__":
    run(main, SFTArgs)
