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

Data (see `trainers/reward_data.py`): arena votes, tweet ratings turned into pairs of completions
of the same prompt, and `--seed-data` (HH-RLHF JSONL, the Kaggle arena CSV). Ties: by default
(`--ties drop`) the neural model skips them, since a tie says nothing about which answer is
better; `--ties both` adds a tie as two opposite pairs, whose summed loss -log s(d) - log s(-d)
is smallest at r_a = r_b, so the model learns that the two answers are equally good. The
TF-IDF baseline (`tasks/preference_baseline.py`) treats ties as a third class.

Evaluation on held-out pairs (prompts never seen in training): P(a preferred) =
sigmoid(r_a - r_b); accuracy and log loss over pairs with a winner (chance: 0.5 and 0.693).
When the held-out pairs contain ties, a 3-way log loss uses the Rao-Kupper tie model
P(a) = s(d - t), P(b) = s(-d - t), P(tie) = 1 - P(a) - P(b), with t fitted on training pairs.
`--push` refuses a model whose held-out accuracy is not above 0.5, unless `--force`.
"""


import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hub.errors import FlywheelError
from serving.reward_models import RewardModel, encode, load_reward_base
from tasks import SLUGS, InvalidInput, get_task
from trainers.common import (
    CommonArgs,
    cpu_safe_training_args,
    is_main_process,
    lora_config,
    output_dir,
    report_rank,
    require_task,
    run,
    save_metrics,
)
from trainers.reward_data import Pair, PairData, collect_pairs

logger = logging.getLogger("flywheel.trainers")

REWARD_TASKS = tuple(s for s in SLUGS if {"preference", "rating"} & set(get_task(s).feedback_kinds))
"""Tasks whose tabs collect votes or ratings (arena, tweet)."""
TIE_MODES = ("drop", "both")


@dataclass
class RewardArgs(CommonArgs):
    """Options of `trainers/reward.py` (the common trainer options plus these)."""

    eval_limit: int = field(default=500, metadata={
        "help": "Most held-out preference pairs scored after training (0: no evaluation)."})
    eval_fraction: float = field(default=0.2, metadata={
        "help": "Share of the prompts whose pairs are held out for evaluation (ignored with --eval-data)."})
    min_rows: int = field(default=8, metadata={
        "help": "Refuse to train on fewer preference pairs with a winner than this (after the split)."})
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
    lora_layers: int = field(default=0, metadata={
        "help": "Put LoRA only on the top N transformer blocks (0: all). The backward pass then stops at "
                "the lowest adapted block: about 2x faster training on CPU with N = a quarter of the blocks."})
    center_rewards: float = field(default=0.01, metadata={
        "help": "Weight of the mean-zero reward penalty (TRL center_rewards_coefficient; 0 turns it off)."})
    baseline: bool = field(default=True, metadata={
        "help": "Also fit the TF-IDF + logistic-regression baseline on the same split and report it."})
    score_batch_size: int = field(default=8, metadata={
        "help": "Sequences per forward pass when scoring pairs."})


def check_options(config: RewardArgs) -> None:
    if config.ties not in TIE_MODES:
        raise InvalidInput(f"--ties must be one of {', '.join(TIE_MODES)}, not {config.ties!r}.")
    if not 0 <= config.eval_fraction < 1:
        raise InvalidInput("--eval-fraction must be at least 0 and below 1.")
    if config.min_rows < 1 or config.max_length < 16 or config.max_pairs_per_prompt < 1:
        raise InvalidInput("--min-rows, --max-pairs-per-prompt must be positive; --max-length at least 16.")
    if config.rating_margin < 0 or config.center_rewards < 0 or config.lora_layers < 0:
        raise InvalidInput("--rating-margin, --center-rewards and --lora-layers cannot be negative.")


def main(config: RewardArgs) -> dict[str, Any] | None:
    task = get_task(require_task(config, allowed=REWARD_TASKS))
    check_options(config)
    started = time.monotonic()
    model, tokenizer, base_id = load_reward_base(config.model)
    data = collect_pairs(config, task)
    print(data.summary(), flush=True)
    out = output_dir(config, "reward")
    trainer = build_trainer(config, model, tokenizer, training_rows(data.train, tokenizer, config), out)
    trainer.train()
    report_rank(trainer, "reward")
    if not is_main_process():
        return None
    model = trainer.model
    model.peft_config["default"].base_model_name_or_path = base_id
    model.save_pretrained(str(out), safe_serialization=True)
    plot = save_metrics(trainer.state.log_history, out, keys=("loss", "accuracy", "margin"))
    train_seconds = time.monotonic() - started
    results = evaluate_pairs(config, data, RewardModel(model, tokenizer, max_length=config.max_length,
                                                       batch_size=config.score_batch_size, base_id=base_id))
    results["timing"] = {"load_and_train_seconds": round(train_seconds, 1),
                         "total_seconds": round(time.monotonic() - started, 1)}
    table = metrics_table(results)
    print(table, flush=True)
    (out / "eval_metrics.json").write_text(json.dumps(results, indent=2))
    publish(config, task=task, base_id=base_id, data=data, results=results, table=table, out=out, plot=plot)
    return results


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

    args = RewardConfig(**cpu_safe_training_args(config, out), max_length=None, gradient_checkpointing=False,
                        center_rewards_coefficient=config.center_rewards or None,
                        ddp_find_unused_parameters=False)
    peft_config = lora_config(config, task_type="SEQ_CLS")
    peft_config.modules_to_save = ["score"]
    if config.lora_layers:
        peft_config.target_modules = top_block_linears(model, config.lora_layers, config.lora_target_modules)
    return RewardTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                         processing_class=tokenizer, peft_config=peft_config)


def top_block_linears(model: Any, blocks: int, wanted: str) -> list[str]:
    """Names of the linear layers in the model's last `blocks` transformer blocks (its longest ModuleList)."""
    import torch
    from transformers.pytorch_utils import Conv1D

    lists = [(name, m) for name, m in model.named_modules() if isinstance(m, torch.nn.ModuleList)]
    if not lists:
        raise FlywheelError("--lora-layers: cannot find this model's transformer blocks.")
    prefix, layers = max(lists, key=lambda item: len(item[1]))
    names = None if wanted == "all-linear" else {n.strip() for n in wanted.split(",") if n.strip()}
    targets = []
    for index in range(max(0, len(layers) - blocks), len(layers)):
        for name, module in layers[index].named_modules():
            if isinstance(module, (torch.nn.Linear, Conv1D)) and (names is None or name.split(".")[-1] in names):
                targets.append(f"{prefix}.{index}.{name}")
    if not targets:
        raise FlywheelError(f"--lora-layers {blocks}: no {wanted} layers found in the top blocks.")
    return targets


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
    from tasks.preference_baseline import preference_metrics

    if "tie" not in winners:
        return 0.0
    grid = [i * 0.05 for i in range(1, 121)]
    return min(grid, key=lambda t: preference_metrics(pair_probs(diffs, t), winners)["log_loss_3way"])


def score_diffs(scorer: RewardModel, pairs: list[Pair]) -> list[float]:
    prompts = [p["prompt"] for p in pairs]
    rewards_a = scorer(prompts, [p["response_a"] for p in pairs])
    rewards_b = scorer(prompts, [p["response_b"] for p in pairs])
    return [a - b for a, b in zip(rewards_a, rewards_b, strict=True)]


def evaluate_pairs(config: RewardArgs, data: PairData, scorer: RewardModel) -> dict[str, Any]:
    """Held-out metrics of chance, the TF-IDF baseline and the reward model (see the module docstring)."""
    from tasks.preference_baseline import PreferenceBaseline, preference_metrics

    test = data.test
    results: dict[str, Any] = {"held_out_pairs": len(test), "train_pairs": len(data.train), "models": {}}
    if not test:
        logger.warning("No held-out pairs: the reward model is not evaluated.")
        return results
    winners = [p["winner"] for p in test]
    ties = "tie" in winners
    coin = [1 / 3, 1 / 3, 1 / 3] if ties else [0.5, 0.5, 0.0]
    results["models"]["chance"] = preference_metrics([coin] * len(test), winners)
    if config.baseline:
        try:
            baseline = PreferenceBaseline(seed=config.seed).fit(data.train)
            results["models"]["tfidf_logreg"] = baseline.evaluate(test)
        except ValueError as error:
            logger.warning("TF-IDF baseline skipped: %s", error)
    theta = 0.0
    if ties and any(p["winner"] == "tie" for p in data.train):
        sample = [data.train[i] for i in range(0, len(data.train), max(1, len(data.train) // 256))]
        theta = fit_tie_theta(score_diffs(scorer, sample), [p["winner"] for p in sample])
    diffs = score_diffs(scorer, test)
    results["models"]["reward_model"] = {**preference_metrics(pair_probs(diffs, theta), winners),
                                         "tie_theta": theta}
    return results


_LABELS = {"chance": "chance", "tfidf_logreg": "TF-IDF + logistic regression",
           "reward_model": "LoRA reward model"}


def metrics_table(results: dict[str, Any]) -> str:
    """A Markdown table of the held-out metrics (printed, and put into the model card)."""
    models = results.get("models") or {}
    if not models:
        return "(no held-out pairs: nothing evaluated)"
    three_way = any("log_loss_3way" in m for m in models.values())
    head = "| model | pairs | accuracy | log loss |"
    head += " 3-way accuracy | 3-way log loss |" if three_way else ""
    lines = [head, "|---" * (head.count("|") - 1) + "|"]
    for name, m in models.items():
        cells = [_LABELS.get(name, name), f"{int(m.get('n', 0))}", _fmt(m.get("accuracy")),
                 _fmt(m.get("log_loss"))]
        if three_way:
            cells += [_fmt(m.get("accuracy_3way")), _fmt(m.get("log_loss_3way"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else "-"


def publish(config: RewardArgs, *, task: Any, base_id: str, data: PairData, results: dict[str, Any],
            table: str, out: Path, plot: Path) -> None:
    """Write the model card; with --push publish the reward model unless it is no better than chance."""
    from hub.publish import AdapterCard, default_repo, push_adapter, write_card
    from trainers.lifecycle import recipe_of

    metrics = (results.get("models") or {}).get("reward_model")
    accuracy = metrics.get("accuracy") if metrics else None
    better = isinstance(accuracy, float) and accuracy > 0.5
    verdict = (f"Held-out accuracy {accuracy:.4f} over {int(metrics['n'])} pairs (chance 0.5)."
               if isinstance(accuracy, float) else "The reward model was not evaluated (no held-out pairs).")
    notes = [verdict, "Load it with `serving.reward_models.load_reward_model(<repo or folder>)`: a callable "
             "(prompts, completions) -> rewards; P(a preferred) = sigmoid(r_a - r_b)."]
    if config.push and not better and config.force:
        notes.append("Published with --force although it is not shown to beat chance.")
    card = AdapterCard(base_model=base_id, task=task.slug, method="reward", datasets=data.sources,
                       recipe=recipe_of(config), evaluation_table=table,
                       metrics_before=(results.get("models") or {}).get("chance"), metrics_after=metrics,
                       main_metric="accuracy", plot=plot.name, notes=notes,
                       pipeline_tag="text-classification")
    write_card(out, card)
    if not config.push:
        print(f"Reward model saved in {out} (not pushed; add --push to publish).", flush=True)
        return
    if not better and not config.force:
        raise FlywheelError(f"Not pushing: {verdict} It must beat chance; the model is saved in {out}. "
                            "Pass --force to push it anyway.")
    repo = config.hub_repo or default_repo(task.slug, "reward")
    pushed = push_adapter(out, repo=repo, card=card, private=config.private,
                          commit_message=f"Flywheel reward model for {task.slug}")
    print(f"Pushed reward model to {pushed.repo} (revision {pushed.revision[:12]}): {pushed.url}", flush=True)


if __name__ == "__main__":
    run(main, RewardArgs)
