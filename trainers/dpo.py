"""Direct Preference Optimization of a LoRA adapter on arena votes (and corrections as preferences).

    python trainers/dpo.py --task arena --seed-data ../shared/data/preference/hh_rlhf.jsonl --max-steps 20
    python trainers/dpo.py --config recipes/arena-dpo.yaml --push

Each vote gives a prompt with a chosen and a rejected answer; an edit gives the corrected text
as chosen and the original as rejected. TRL's `DPOTrainer` trains the adapter against the base
model itself (adapter switched off) as the reference, or with `--init-adapter` against a frozen
copy of that adapter (`trainers.lifecycle.REFERENCE_ADAPTER`), so no second model is loaded.
"""

from dataclasses import dataclass, field

from tasks import get_task
from trainers.common import PreferenceArgs, require_task, run, trl_args
from trainers.lifecycle import Outcome, evaluate_before, prepare_policy, train_and_finish

CURVES = ("loss", "rewards/accuracies", "rewards/margins")


@dataclass
class DPOArgs(PreferenceArgs):
    """Options of `trainers/dpo.py` (the common and preference options plus these)."""

    loss_type: str = field(default="sigmoid", metadata={
        "help": "DPO loss: sigmoid (the paper's), ipo, hinge, robust, ... "
                "(any of TRL's DPOConfig.loss_type)."})
    label_smoothing: float = field(default=0.0, metadata={
        "help": "Assumed share of flipped votes (robust/cDPO losses); 0 trusts every vote."})


def main(config: DPOArgs) -> Outcome | None:
    from trl import DPOConfig, DPOTrainer

    from trainers.lm_head import compact_lm_head

    task = get_task(require_task(config))
    policy = prepare_policy(config, method="dpo", task=task, curve_keys=CURVES)
    evaluate_before(policy.training)
    args = DPOConfig(**trl_args(config, policy.training.out, max_length=config.max_length, beta=config.beta,
                                loss_type=[config.loss_type], label_smoothing=config.label_smoothing))
    trainer = DPOTrainer(args=args, **policy.trainer_inputs())
    compact_lm_head(trainer.model)  # labelled positions only through the vocabulary, on CPU
    return train_and_finish(policy.training, trainer)


if __name__ == "__main__":
    run(main, DPOArgs)
