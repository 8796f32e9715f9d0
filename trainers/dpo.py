"""Direct Preference Optimization of a LoRA adapter on arena votes (and corrections as preferences).

    python trainers/dpo.py --task arena --seed-data ../shared/data/preference/hh_rlhf.jsonl --max-steps 20
    python trainers/dpo.py --config recipes/arena-dpo.yaml --push

Each vote gives a prompt with a chosen and a rejected answer; an edit gives the corrected text
as chosen and the original as rejected. TRL's `DPOTrainer` trains the adapter against the base
model itself (adapter switched off) as the reference, so no second model is loaded.
"""


from dataclasses import dataclass, field

from hub.errors import FlywheelError
from serving.models import load_model
from tasks import get_task
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

CURVES = ("loss", "rewards/accuracies", "rewards/margins")


@dataclass
class DPOArgs(TrainerArgs):
    """Options of `trainers/dpo.py` (the common trainer options plus these)."""

    learning_rate: float = field(default=5e-5, metadata={"help": "Peak learning rate of AdamW."})
    beta: float = field(default=0.1, metadata={
        "help": "Strength of the pull towards the base model (higher: the adapter stays closer to it)."})
    loss_type: str = field(default="sigmoid", metadata={
        "help": "DPO loss: sigmoid (the paper's), ipo, hinge, robust, ... "
                "(any of TRL's DPOConfig.loss_type)."})
    label_smoothing: float = field(default=0.0, metadata={
        "help": "Assumed share of flipped votes (robust/cDPO losses); 0 trusts every vote."})


def main(config: DPOArgs) -> None:
    task = get_task(require_task(config))
    loaded = load_model(config.model)
    if loaded.is_seq2seq:
        raise FlywheelError(f"DPO trains causal LMs only, and {config.model} is a seq2seq (encoder-decoder) "
                            "model; fine-tune it with trainers/sft.py instead.")
    data = build_from_config(config, "dpo", task=task, chat=loaded.has_chat_template)
    data = fit_length(data, loaded.tokenizer, max_length=config.max_length, min_rows=config.min_rows)
    out = output_dir(config, "dpo")
    reward_fn = evaluation_reward(config)
    before = evaluate_before(config, loaded=loaded, task=task, examples=data.eval_examples,
                             reward_fn=reward_fn)

    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(**cpu_safe_training_args(config, out), max_length=config.max_length, beta=config.beta,
                     loss_type=[config.loss_type], label_smoothing=config.label_smoothing,
                     gradient_checkpointing=False, ddp_find_unused_parameters=False)
    trainer = DPOTrainer(model=loaded.model, args=args, train_dataset=data.train,
                         processing_class=loaded.tokenizer,
                         peft_config=lora_config(config, task_type="CAUSAL_LM"))
    trainer.train()
    report_rank(trainer, "dpo")
    finish(config, method="dpo", task=task, loaded=loaded, model=trainer.model,
           log_history=trainer.state.log_history, data=data, before=before, out=out, reward_fn=reward_fn,
           curve_keys=CURVES)


if __name__ == "__main__":
    run(main, DPOArgs)
