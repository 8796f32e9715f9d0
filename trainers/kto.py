"""Kahneman-Tversky Optimization of a LoRA adapter on good/bad flags.

    python trainers/kto.py --task conversation_starter --max-steps 20
    python trainers/kto.py --config recipes/conversation_starter-kto.yaml --push

Every flag is one unpaired example: the task's good flags (e.g. `great`, `fine`) are desirable,
every other flag (generic, off-topic, toxic, ...) undesirable. Unlike DPO, KTO needs no pairs,
only some of each kind. When the two kinds are unbalanced the desirable weight is set so that
both count equally, as the KTO paper recommends, unless you set the weights yourself.
"""


import logging
from dataclasses import dataclass, field

from hub.errors import FlywheelError
from serving.models import load_model
from tasks import InvalidInput, get_task
from trainers.common import (
    cpu_safe_training_args,
    lora_config,
    output_dir,
    report_rank,
    require_task,
    run,
)
from trainers.data import build_from_config, fit_length
from trainers.lifecycle import TrainerArgs, evaluate_before, evaluation_reward, finish

logger = logging.getLogger("flywheel.trainers")
CURVES = ("loss", "kl", "rewards/margins")


@dataclass
class KTOArgs(TrainerArgs):
    """Options of `trainers/kto.py` (the common trainer options plus these)."""

    learning_rate: float = field(default=5e-5, metadata={"help": "Peak learning rate of AdamW."})
    beta: float = field(default=0.1, metadata={
        "help": "Strength of the pull towards the base model (higher: the adapter stays closer to it)."})
    desirable_weight: float | None = field(default=None, metadata={
        "help": "Loss weight of good examples (default: #bad / #good, so both kinds count equally)."})
    undesirable_weight: float = field(default=1.0, metadata={"help": "Loss weight of bad examples."})


def main(config: KTOArgs) -> None:
    task = get_task(require_task(config))
    if config.per_device_train_batch_size < 2:
        raise InvalidInput("KTO needs --per-device-train-batch-size of at least 2: it estimates its KL term "
                           "from the other examples of a batch.")
    loaded = load_model(config.model)
    if loaded.is_seq2seq:
        raise FlywheelError(f"KTO trains causal LMs only, and {config.model} is a seq2seq (encoder-decoder) "
                            "model; fine-tune it with trainers/sft.py instead.")
    data = build_from_config(config, "kto", task=task, chat=loaded.has_chat_template)
    data = fit_length(data, loaded.tokenizer, max_length=config.max_length, min_rows=config.min_rows)
    labels = data.train["label"]
    good, bad = sum(labels), len(labels) - sum(labels)
    if not good or not bad:  # fit_length may have dropped every row of one kind
        raise InvalidInput(f"KTO needs both good and bad examples; after length filtering there are "
                           f"{good} good and {bad} bad rows for task {task.slug}.")
    desirable_weight = config.desirable_weight or round(bad * config.undesirable_weight / good, 4)
    logger.info("KTO on %d good and %d bad rows; desirable_weight=%s", good, bad, desirable_weight)
    out = output_dir(config, "kto")
    reward_fn = evaluation_reward(config)
    before = evaluate_before(config, loaded=loaded, task=task, examples=data.eval_examples,
                             reward_fn=reward_fn)

    from trl import KTOConfig, KTOTrainer

    args = KTOConfig(**cpu_safe_training_args(config, out), max_length=config.max_length, beta=config.beta,
                     desirable_weight=desirable_weight, undesirable_weight=config.undesirable_weight,
                     gradient_checkpointing=False, ddp_find_unused_parameters=False)
    trainer = KTOTrainer(model=loaded.model, args=args, train_dataset=data.train,
                         processing_class=loaded.tokenizer,
                         peft_config=lora_config(config, task_type="CAUSAL_LM"))
    trainer.train()
    report_rank(trainer, "kto")
    finish(config, method="kto", task=task, loaded=loaded, model=trainer.model,
           log_history=trainer.state.log_history, data=data, before=before, out=out, reward_fn=reward_fn,
           curve_keys=CURVES)


if __name__ == "__main__":
    run(main, KTOArgs)
