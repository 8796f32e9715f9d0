"""Kahneman-Tversky Optimization of a LoRA adapter on good/bad flags.

    python trainers/kto.py --task conversation_starter --max-steps 20
    python trainers/kto.py --config recipes/conversation_starter-kto.yaml --push

Every flag is one unpaired example: the task's good flags (e.g. `great`, `fine`) are desirable,
every other flag (generic, off-topic, toxic, ...) undesirable. Unlike DPO, KTO needs no pairs,
only some of each kind. When the two kinds are unbalanced the desirable weight is set so that
both count equally, as the KTO paper recommends, unless you set the weights yourself. The
reference is the base model, or with `--init-adapter` a frozen copy of that adapter, as in DPO.
"""

import logging
from dataclasses import dataclass, field

from tasks import InvalidInput, get_task
from trainers.common import PreferenceArgs, require_task, run, trl_args
from trainers.lifecycle import Outcome, evaluate_before, prepare_policy, train_and_finish

logger = logging.getLogger("flywheel.trainers")
CURVES = ("loss", "kl", "rewards/margins")


@dataclass
class KTOArgs(PreferenceArgs):
    """Options of `trainers/kto.py` (the common and preference options plus these)."""

    desirable_weight: float | None = field(default=None, metadata={
        "help": "Loss weight of good examples (default: #bad / #good, so both kinds count equally)."})
    undesirable_weight: float = field(default=1.0, metadata={"help": "Loss weight of bad examples."})


def main(config: KTOArgs) -> Outcome | None:
    from trl import KTOConfig, KTOTrainer

    from trainers.lm_head import compact_lm_head

    task = get_task(require_task(config))
    if config.per_device_train_batch_size < 2:
        raise InvalidInput("KTO needs --per-device-train-batch-size of at least 2: it estimates its KL term "
                           "from the other examples of a batch.")
    policy = prepare_policy(config, method="kto", task=task, curve_keys=CURVES)
    desirable_weight = balanced_weight(config, policy.data.train["label"], task=task.slug)
    evaluate_before(policy.training)
    args = KTOConfig(**trl_args(config, policy.training.out, max_length=config.max_length, beta=config.beta,
                                desirable_weight=desirable_weight,
                                undesirable_weight=config.undesirable_weight))
    trainer = KTOTrainer(args=args, **policy.trainer_inputs())
    compact_lm_head(trainer.model)  # labelled positions only through the vocabulary, on CPU
    return train_and_finish(policy.training, trainer)


def balanced_weight(config: KTOArgs, labels: list[bool], *, task: str) -> float:
    """`--desirable-weight`, or the weight that makes the good rows count as much as the bad ones."""
    good, bad = sum(labels), len(labels) - sum(labels)
    if not good or not bad:  # fit_length may have dropped every row of one kind
        raise InvalidInput(f"KTO needs both good and bad examples; after length filtering there are "
                           f"{good} good and {bad} bad rows for task {task}.")
    weight = config.desirable_weight or round(bad * config.undesirable_weight / good, 4)
    logger.info("KTO on %d good and %d bad rows; desirable_weight=%s", good, bad, weight)
    return weight


if __name__ == "__main__":
    run(main, KTOArgs)
