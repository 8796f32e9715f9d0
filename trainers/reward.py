"""Train a reward model (LoRA + a scalar `score` head) from votes, ratings and seed preference pairs.

    python trainers/reward.py --task arena --seed-data ../shared/data/preference/hh_rlhf.jsonl --max-steps 60
    python trainers/reward.py --config recipes/arena-reward.yaml --push --hub-repo me/flywheel-arena-reward
    python trainers/reward.py --task tweet          # ratings of the tweet tab, turned into pairs

The base LM becomes a sequence classifier with one output (`AutoModelForSequenceClassification`,
`num_labels=1`); LoRA adapts every linear layer and the new `score` head is trained in full and
saved with the adapter (`modules_to_save=["score"]`, in `adapter_model.safetensors`). TRL's
`RewardTrainer` minimises the Bradley-Terry loss -log sigmoid(r_chosen - r_rejected) (minus a
margin with `--rating-margin`), plus a small pull of rewards towards 0 (`--center-rewards`) so
RL trainers get rewards on a stable scale. Load the result with `serving.reward_models.load_reward_model`.

Data (see `trainers/rows.py`): arena votes, tweet ratings turned into pairs of completions
of the same prompt, and `--seed-data` (HH-RLHF JSONL, the Kaggle arena CSV). Ties: by default
(`--ties drop`) the neural model skips them, since a tie says nothing about which answer is
better; `--ties both` adds a tie as two opposite pairs, whose summed loss -log s(d) - log s(-d)
is smallest at r_a = r_b, so the model learns that the two answers are equally good. The
TF-IDF baseline (`tasks/preference_baseline.py`) treats ties as a third class.

Evaluation on held-out pairs (prompts never seen in training) goes through the same lifecycle
as every trainer (`trainers.lifecycle`): before training, chance (a coin flip: accuracy 0.5,
log loss 0.693) and the TF-IDF baseline fitted on the training pairs; after training, the reward
model, with P(a preferred) = sigmoid(r_a - r_b). Accuracy and log loss count pairs with a
winner; when the held-out pairs contain ties, a 3-way log loss uses the Rao-Kupper tie model
P(a) = s(d - t), P(b) = s(-d - t), P(tie) = 1 - P(a) - P(b), with t fitted on training pairs.
The reference to beat is chance, not the baseline (a small model trained for minutes on a CPU
may still trail TF-IDF, see recipes/arena-reward.yaml): `--push` refuses a model whose held-out
accuracy is not above 0.5, unless `--force`.
"""


import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from serving.reward_models import RewardModel, encode, load_reward_base
from tasks import SLUGS, InvalidInput, get_task
from tasks.preference_baseline import PreferenceBaseline, preference_metrics
from trainers.common import TrainerArgs, lora_config, output_dir, require_task, run, trl_args
from trainers.eval_report import EvalReport, SampleResult
from trainers.lifecycle import Outcome, TrainingRun, evaluate_before, train_and_finish
from trainers.training_data import Pair, PairData, collect_pairs

logger = logging.getLogger("flywheel.trainers")

REWARD_TASKS = tuple(s for s in SLUGS if {"preference", "rating"} & set(get_task(s).feedback_kinds))
"""Tasks whose tabs collect votes or ratings (arena, tweet)."""
TIE_MODES = ("drop", "both")
LOADING = ("Load it with `serving.reward_models.load_reward_model(<repo or folder>)`: a callable "
           "(prompts, completions) -> rewards; P(a preferred) = sigmoid(r_a - r_b).")


@dataclass
class RewardArgs(TrainerArgs):
    """Options of `trainers/reward.py` (the common trainer options plus these)."""

    activation_checkpointing: bool = field(default=False, metadata={
        "help": "Recompute activations in the backward pass (off by default: one pair at a time, backward through "
                "the top blocks only, peaked at 1.5 GB with them recomputed, as plain TRL does; it only cost time)."})
    eval_limit: int = field(default=500, metadata={
        "help": "Most held-out prompts whose preference pairs are scored after training (0: no evaluation)."})
    eval_fraction: float = field(default=0.2, metadata={
        "help": "Share of the prompts whose pairs are held out for evaluation (ignored with --eval-data)."})
    use_feedback: bool = field(default=True, metadata={
        "help": "Read the feedback dataset (votes and ratings); --no-use-feedback: --seed-data only."})
    seed_limit: int = field(default=0, metadata={
        "help": "Read at most this many pairs per --seed-data source (0: all)."})
    ties: str = field(default="drop", metadata={
        "help": "Tie pairs in training: `drop`, or `both` (both orders: pulls r_a and r_b together)."})
    rating_margin: float = field(default=0.0, metadata={
        "help": "If > 0, rating pairs use the margin loss -log s(r_c - r_r - m) with m = this x reward gap."})
    min_rating_gap: float = field(default=0.1, metadata={
        "help": "Two rated completions whose rewards (0..1) differ by less than this form a tie."})
    max_pairs_per_prompt: int = field(default=16, metadata={
        "help": "Most pairs made from the rated completions of one prompt (widest reward gaps first)."})
    center_rewards: float = field(default=0.01, metadata={
        "help": "Weight of the mean-zero reward penalty (TRL center_rewards_coefficient; 0 turns it off)."})
    baseline: bool = field(default=True, metadata={
        "help": "Also fit the TF-IDF + logistic-regression baseline on the same split and report it."})


def check_options(config: RewardArgs) -> None:
    if config.ties not in TIE_MODES:
        raise InvalidInput(f"--ties must be one of {', '.join(TIE_MODES)}, not {config.ties!r}.")
    if not 0 <= config.eval_fraction < 1:
        raise InvalidInput("--eval-fraction must be at least 0 and below 1.")
    if config.min_rows < 1 or config.max_length < 16 or config.max_pairs_per_prompt < 1:
        raise InvalidInput("--min-rows, --max-pairs-per-prompt must be positive; --max-length at least 16.")
    if config.rating_margin < 0 or config.center_rewards < 0:
        raise InvalidInput("--rating-margin and --center-rewards cannot be negative.")


def main(config: RewardArgs) -> Outcome | None:
    task = get_task(require_task(config, allowed=REWARD_TASKS))
    check_options(config)
    model, tokenizer, base_id = load_reward_base(config.model)
    data = collect_pairs(config, task)
    print(data.summary(), flush=True)
    training = TrainingRun(config=config, method="reward", task=task, base_model=base_id,
                           out=output_dir(config, "reward"), sources=data.sources,
                           evaluator=PairEvaluator(config=config, data=data, tokenizer=tokenizer, task=task.slug,
                                                   base_id=base_id),
                           pipeline_tag="text-classification", curve_keys=("loss", "accuracy", "margin"),
                           notes=[LOADING])
    evaluate_before(training)
    rows = training_rows(data.train, tokenizer, config)
    return train_and_finish(training, build_trainer(config, model, tokenizer, rows, training.out))


def training_rows(pairs: list[Pair], tokenizer: Any, config: RewardArgs) -> list[dict[str, Any]]:
    """Tokenised `chosen_ids` / `rejected_ids` (and `margin` with --rating-margin) for RewardTrainer."""
    rows: list[dict[str, Any]] = []
    for pair in pairs:
        if pair["winner"] == "tie" and config.ties == "drop":
            continue
        ids_a = encode(tokenizer, pair["prompt"], pair["response_a"], max_length=config.max_length)
        ids_b = encode(tokenizer, pair["prompt"], pair["response_b"], max_length=config.max_length)
        if pair["winner"] == "tie":
            new = [{"chosen_ids": ids_a, "rejected_ids": ids_b}, {"chosen_ids": ids_b, "rejected_ids": ids_a}]
        elif pair["winner"] == "a":
            new = [{"chosen_ids": ids_a, "rejected_ids": ids_b}]
        else:
            new = [{"chosen_ids": ids_b, "rejected_ids": ids_a}]
        if config.rating_margin > 0:
            margin = config.rating_margin * pair["margin"] if pair["origin"] == "rating" else 0.0
            for row in new:
                row["margin"] = 0.0 if pair["winner"] == "tie" else margin
        rows.extend(new)
    return rows


def build_trainer(config: RewardArgs, model: Any, tokenizer: Any, rows: list[dict[str, Any]],
                  out: Path) -> Any:
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    args = RewardConfig(**trl_args(config, out, max_length=None,
                                   center_rewards_coefficient=config.center_rewards or None))
    peft_config = lora_config(config, task_type="SEQ_CLS", model=model)
    peft_config.modules_to_save = ["score"]
    return RewardTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                         processing_class=tokenizer, peft_config=peft_config)


@dataclass
class PairEvaluator:
    """The lifecycle's evaluator for a reward model: held-out preference pairs, chance to beat."""

    config: RewardArgs
    data: PairData
    tokenizer: Any
    task: str
    base_id: str
    main_metric: str = "accuracy"
    higher_is_better: bool = True
    reference: str = "chance"
    unmeasured_hint: str = " (every held-out pair is a tie: give --eval-data with decided pairs)"

    def before(self) -> EvalReport | None:
        """Chance on the held-out pairs, with the TF-IDF baseline (fitted on the training pairs) beside it."""
        test = self.data.test
        if not test:
            logger.warning("No held-out pairs: the reward model is not evaluated.")
            return None
        winners = [p["winner"] for p in test]
        coin = [1 / 3, 1 / 3, 1 / 3] if "tie" in winners else [0.5, 0.5, 0.0]
        report = self._report(preference_metrics([coin] * len(test), winners), model="chance", samples=[])
        if self.config.baseline:
            try:
                baseline = PreferenceBaseline(seed=self.config.seed).fit(self.data.train)
                report.baselines["TF-IDF + logistic regression"] = _rates(baseline.evaluate(test))
            except ValueError as error:
                logger.warning("TF-IDF baseline skipped: %s", error)
        return report

    def after(self, model: Any, adapter_dir: Path) -> EvalReport:
        """The trained reward model (still in memory) on the held-out pairs."""
        scorer = RewardModel(model, self.tokenizer, max_length=self.config.max_length,
                             batch_size=self.config.eval_batch_size, base_id=self.base_id)
        test, train = self.data.test, self.data.train
        theta = 0.0
        if any(p["winner"] == "tie" for p in test) and any(p["winner"] == "tie" for p in train):
            sample = [train[i] for i in range(0, len(train), max(1, len(train) // 256))]
            theta = fit_tie_theta(score_diffs(scorer, sample), [p["winner"] for p in sample])
        diffs = score_diffs(scorer, test)
        probs = pair_probs(diffs, theta)
        samples = [_pair_sample(i, pair, diff, p_a) for i, (pair, diff, (p_a, _, _))
                   in enumerate(zip(test, diffs, probs, strict=True))]
        report = self._report(preference_metrics(probs, [p["winner"] for p in test]), model=self.base_id,
                              samples=samples, adapter=str(adapter_dir))
        report.info["tie_theta"] = theta
        return report

    def _report(self, metrics: dict[str, float], *, model: str, samples: list[SampleResult],
                adapter: str | None = None) -> EvalReport:
        return EvalReport(task=self.task, model=model, adapter=adapter, main_metric=self.main_metric,
                          higher_is_better=self.higher_is_better, metrics=_rates(metrics), samples=samples,
                          info={"held_out_pairs": len(self.data.test), "train_pairs": len(self.data.train),
                                "decided_pairs": int(metrics["n"]), "ties": int(metrics["n_ties"])})


def _pair_sample(index: int, pair: Pair, diff: float, p_a: float) -> SampleResult:
    """One held-out pair as a report sample: the person's winner is the reference, the model's pick the output."""
    return SampleResult(id=str(index), references=[pair["winner"]],
                        inputs={key: pair[key] for key in ("prompt", "response_a", "response_b")},
                        completion="a" if diff > 0 else "b" if diff < 0 else "tie",
                        scores={"r_a_minus_r_b": round(diff, 6), "p_a": round(p_a, 6)})


def _rates(metrics: dict[str, float]) -> dict[str, float]:
    """`preference_metrics` without its pair counts (those go into the report's info)."""
    return {name: value for name, value in metrics.items() if name not in ("n", "n_ties")}


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x)) if x >= 0 else math.exp(x) / (1 + math.exp(x))


def pair_probs(diffs: list[float], theta: float = 0.0) -> list[list[float]]:
    """P(a), P(b), P(tie) per score difference d = r_a - r_b (Rao-Kupper with tie parameter theta)."""
    rows = []
    for d in diffs:
        p_a, p_b = _sigmoid(d - theta), _sigmoid(-d - theta)
        rows.append([p_a, p_b, max(0.0, 1.0 - p_a - p_b)])
    return rows


def fit_tie_theta(diffs: list[float], winners: list[str]) -> float:
    """The theta >= 0 that minimises the 3-way log loss on training pairs (0 without ties)."""
    if "tie" not in winners:
        return 0.0
    grid = [i * 0.05 for i in range(1, 121)]
    return min(grid, key=lambda t: preference_metrics(pair_probs(diffs, t), winners)["log_loss_3way"])


def score_diffs(scorer: RewardModel, pairs: list[Pair]) -> list[float]:
    prompts = [p["prompt"] for p in pairs]
    rewards_a = scorer(prompts, [p["response_a"] for p in pairs])
    rewards_b = scorer(prompts, [p["response_b"] for p in pairs])
    return [a - b for a, b in zip(rewards_a, rewards_b, strict=True)]


if __name__ == "__main__":
    run(main, RewardArgs)
