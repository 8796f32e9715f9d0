"""Training rounds without a person deciding: when enough feedback came in, train, compare, promote.

    python trainers/loop.py --task tweet --once
    python trainers/loop.py --task dialogue_summary --feedback-repo me/flywheel-feedback \\
        --adapter-repo me/flywheel-dialogue-summary --min-rows 50 --every 30 --margin 0.01 \\
        --eval-extra-data ../shared/data/dialogue_summary/dialogsum_validation.jsonl

Each check counts the feedback rows bound to real outputs (`trainers.rounds.is_bound`) that arrived
since the last round. With at least `--min-rows` of them a round runs:

1. the method that fits the new rows is chosen (`trainers.rounds.choose_method`);
2. it trains a challenger starting from the champion, the adapter now in `--adapter-repo` (the
   base model's fresh LoRA when the repo holds none yet);
3. the lifecycle scores champion and challenger on the same examples: a held-out slice of the
   feedback plus `--eval-extra-data` (the task's reference data), never trained on;
4. the challenger is promoted, i.e. pushed to `--adapter-repo` so every Space watching it
   hot-swaps it (`serving.watcher`), only if it beats the champion by more than `--margin` on the
   task's main metric;
5. the round is appended to `ledger.jsonl` in the adapter repo (`hub.ledger`), whatever it decided,
   with `ledger.png` (the main metric across rounds), which the model card shows.

With `--criterion arena` step 4 waits for people: the challenger goes to `--challenger-repo`, which
the arena serves against the champion (blind, sides drawn at random); the round stays `pending`
until `--min-votes` votes between the two revisions came in, then Bradley-Terry on those votes
decides (`hub.arena.head_to_head`) and a second ledger row for the round records the decision.

Rounds train in this process; `--every` keeps checking until Ctrl-C (or `--max-rounds`).
"""

from __future__ import annotations

import gc
import logging
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from hub.arena import head_to_head, load_matches
from hub.errors import FlywheelError, first_line
from hub.ledger import Round, read_ledger, rounds_section, write_ledger
from hub.paths import flywheel_home
from hub.publish import AdapterCard, default_repo, publish_files, push_adapter
from hub.repos import ADAPTER_CONFIG, HUB_ERRORS, content_revision, is_local_ref
from tasks import InvalidInput, Task, get_task
from trainers.common import TrainingOptions, run
from trainers.rounds import Challenger, Intake, choose_method, metrics_of, take_in, train_challenger

logger = logging.getLogger("flywheel.loop")

ROUNDS_TITLE = "Rounds up to this adapter's promotion"
TRAINING_OPTIONS = (*(option.name for option in fields(TrainingOptions)), "eval_extra_data", "eval_max_new_tokens",
                    "learning_rate", "report_to", "margin")
"""LoopArgs fields handed to every round's trainer (each takes those its config has)."""


@dataclass
class LoopArgs(TrainingOptions):
    """Options of `trainers/loop.py`: those of a training run (handed to every round's trainer) and the loop's own."""

    adapter_repo: str | None = field(default=None, metadata={
        "help": "Where the champion lives and the ledger is kept: Hub model repo id or local folder "
                "(default: <your user>/flywheel-<task>-loop on the Hub, else FLYWHEEL_HOME/published/...)."})
    min_rows: int = field(default=32, metadata={
        "help": "New feedback rows (bound to real outputs) needed since the last round to start one."})
    every: float = field(default=0.0, metadata={
        "help": "Check every this many minutes until Ctrl-C (0: check once, as --once)."})
    once: bool = field(default=False, metadata={"help": "Check once, run a round if enough rows came in, exit."})
    max_rounds: int = field(default=0, metadata={"help": "With --every: stop after this many rounds (0: never)."})
    margin: float = field(default=0.0, metadata={
        "help": "Promote only a challenger that beats the champion by more than this: on the task's main metric "
                "(in its units, e.g. 0.01 ROUGE-L) or, with --criterion arena, in win probability above 0.5."})
    criterion: str = field(default="held-out", metadata={
        "help": "What promotes a challenger: `held-out` (the main metric on held-out examples) or `arena` "
                "(publish it to --challenger-repo, then decide on the arena votes between it and the champion)."})
    challenger_repo: str | None = field(default=None, metadata={
        "help": "--criterion arena: where challengers wait for votes (default: the adapter repo + -challenger); "
                "serve it as one arena side and the adapter repo as the other."})
    min_votes: int = field(default=30, metadata={
        "help": "--criterion arena: votes between champion and challenger needed to decide."})
    eval_extra_data: list[str] = field(default_factory=list, metadata={
        "help": "The task's reference data, evaluated beside the held-out feedback and never trained on "
                "(e.g. ../shared/data/dialogue_summary/dialogsum_validation.jsonl). Repeatable."})
    eval_max_new_tokens: int | None = field(default=None, metadata={
        "help": "Tokens generated per evaluation example (default: a per-task length)."})
    learning_rate: float | None = field(default=None, metadata={
        "help": "Peak learning rate (default: each method's own, e.g. 2e-4 SFT, 5e-5 DPO/KTO)."})
    train_min_rows: int = field(default=8, metadata={
        "help": "A round's trainer refuses fewer training rows than this (after the held-out split)."})
    reward: str = field(default="toxicity", metadata={
        "help": "PPO's reward for detox rounds (a trainers/reward_functions.py spec)."})
    report_to: str = field(default="none", metadata={"help": "Metrics logger of the trainers."})
    work_dir: str | None = field(default=None, metadata={
        "help": "Where rounds train (default FLYWHEEL_HOME/loop/<task>); round-<n>/ per round."})
    private: bool = field(default=True, metadata={"help": "Create a Hub adapter repo as private."})


CRITERIA = ("held-out", "arena")


@dataclass
class Loop:
    """The resolved settings of a loop: its task and where its adapters, ledger and rounds live."""

    args: LoopArgs
    task: Task
    repo: str
    work: Path
    challenger_repo: str


def main(args: LoopArgs) -> list[Round]:
    """Check once (`--once`, the default) or every `--every` minutes; return the rounds run."""
    loop = resolve(args)
    print(f"Loop for {loop.task.slug}: adapter repo {loop.repo}, feedback {args.feedback_repo or 'local home'}, "
          f"a round per {args.min_rows} new rows.", flush=True)
    done: list[Round] = []
    while True:
        try:
            row = check(loop)
        except FlywheelError as error:  # once: exit 2 with the line; every: the Hub may be back next time
            if not args.every:
                raise
            print(f"error: {first_line(error)}; checking again in {args.every:g} min.", file=sys.stderr, flush=True)
            row = None
        if row is not None:
            done.append(row)
        if not args.every or (args.max_rounds and len(done) >= args.max_rounds):
            return done
        try:
            time.sleep(args.every * 60)
        except KeyboardInterrupt:
            print("Stopped.", flush=True)
            return done


def resolve(args: LoopArgs) -> Loop:
    """Check the options (exit 2 on the CLI) and settle the task, the adapter repo and the work folder."""
    if not args.task:
        raise InvalidInput("--task is required.")
    task = get_task(args.task)
    if args.once and args.every:
        raise InvalidInput("Give --once or --every MINUTES, not both.")
    if args.every < 0 or args.min_rows < 1 or args.max_rounds < 0 or args.margin < 0 or args.min_votes < 1:
        raise InvalidInput("--every, --max-rounds and --margin cannot be negative; --min-rows and --min-votes "
                           "must be at least 1.")
    if args.criterion not in CRITERIA:
        raise InvalidInput(f"--criterion must be one of {', '.join(CRITERIA)}, not {args.criterion!r}.")
    repo = args.adapter_repo or default_repo(task.slug, "loop")
    work = Path(args.work_dir) if args.work_dir else flywheel_home() / "loop" / task.slug
    challenger_repo = args.challenger_repo or f"{repo}-challenger"
    return Loop(args=args, task=task, repo=repo, work=work, challenger_repo=challenger_repo)


def check(loop: Loop) -> Round | None:
    """Run a round if at least `--min-rows` bound rows came in since the last one; return its ledger row."""
    intake = take_in(loop.args.feedback_repo, loop.task)
    ledger = read_ledger(loop.repo)
    if ledger and ledger[-1]["decision"] == "pending":
        return settle_in_arena(loop, ledger)
    previous = ledger[-1]["rows"]["signals"] if ledger else {}
    new = intake.since(previous)
    if sum(new.values()) < loop.args.min_rows:
        print(f"Waiting: {sum(new.values())} of {loop.args.min_rows} new rows for {loop.task.slug} since "
              f"{'round ' + str(ledger[-1]['round']) if ledger else 'the start'}.", flush=True)
        return None
    return run_round(loop, intake=intake, new=new, ledger=ledger)


def run_round(loop: Loop, *, intake: Intake, new: dict[str, int], ledger: list[Round]) -> Round:
    """Train a challenger from the champion, compare, promote or keep, and append the ledger row."""
    number = max((row["round"] for row in ledger), default=0) + 1
    method = choose_method(loop.task, new)
    champion, champion_revision = champion_of(loop.repo)
    print(f"Round {number}: {sum(new.values())} new rows ({_counts(new)}) -> {method}, starting from "
          f"{champion or 'a fresh LoRA on the base model'}.", flush=True)
    started = time.time()
    options = {name: getattr(loop.args, name) for name in TRAINING_OPTIONS}
    options.update(task=loop.task.slug, min_rows=loop.args.train_min_rows)
    if loop.args.criterion == "arena":  # the margin is then a win probability; held-out scores only inform
        options["margin"] = 0.0
    row: Round = {"round": number, "task": loop.task.slug, "method": method, "margin": loop.args.margin,
                  "started_at": _now(started), "main_metric": loop.task.main_metric,
                  "higher_is_better": loop.task.higher_is_better,
                  "rows": {"new": sum(new.values()), "bound": intake.rows, "new_signals": new,
                           "signals": intake.signals, "feedback_revision": intake.revision},
                  "champion": {"adapter": champion, "revision": champion_revision}}
    challenger = None
    try:
        challenger = train_challenger(method, options=options, folder=loop.work / f"round-{number}",
                                      champion=champion, reward_spec=loop.args.reward)
    except (InvalidInput, FlywheelError) as error:
        row.update(decision="failed", reason=first_line(error))
    if challenger is not None:
        record_outcome(row, challenger)
        if loop.args.criterion == "arena":
            await_votes(loop, row, challenger)
    row["seconds"] = round(time.time() - started, 1)
    promoted = challenger.outcome if challenger is not None and row["decision"] == "promoted" else None
    publish(loop, [*ledger, row], promoted.adapter_dir if promoted else None, card=promoted.card if promoted else None)
    print(summary(row), flush=True)
    del challenger
    gc.collect()  # the round's models: a loop that runs for days must not keep them
    return row


def record_outcome(row: Round, challenger: Challenger) -> None:
    """The ledger fields of a trained challenger: both sides' metrics, the decision and why."""
    outcome = challenger.outcome
    row["champion"]["metrics"] = metrics_of(outcome, "before")
    row["challenger"] = {"revision": content_revision(outcome.adapter_dir), "metrics": metrics_of(outcome, "after"),
                         "evaluated_on": len(outcome.after.samples) if outcome.after else 0}
    if outcome.card is not None:
        row["rows"]["trained_on"] = sum(source.rows for source in outcome.card.datasets)
    if challenger.reward_model is not None:
        row["reward_model"] = metrics_of(challenger.reward_model, "after", keep=("accuracy", "log_loss"))
    if outcome.after is not None:
        row["main_metric"] = outcome.after.main_metric
    row.update(decision="promoted" if outcome.better is True else "kept", reason=outcome.verdict)


def await_votes(loop: Loop, row: Round, challenger: Challenger) -> None:
    """--criterion arena: publish the challenger where the arena serves it; the round waits for votes."""
    outcome = challenger.outcome
    pushed = push_adapter(outcome.adapter_dir, repo=loop.challenger_repo, card=outcome.card, private=loop.args.private,
                          commit_message=f"Flywheel loop: round {row['round']} challenger")
    row["challenger"].update(published=pushed.revision, folder=str(outcome.adapter_dir))
    row.update(decision="pending", reason=f"Waiting for {loop.args.min_votes} arena votes between the champion "
                                          f"and the challenger in {loop.challenger_repo}. Held out: {outcome.verdict}")


def settle_in_arena(loop: Loop, ledger: list[Round]) -> Round | None:
    """Decide a pending round on the arena votes between its champion and challenger revisions."""
    pending = ledger[-1]
    matches, _, _ = load_matches(loop.args.feedback_repo)
    result = head_to_head(matches, champion=pending["champion"]["revision"],
                          challenger=pending["challenger"]["published"], seed=loop.args.seed)
    if result.votes < loop.args.min_votes:
        print(f"Waiting: {result.votes} of {loop.args.min_votes} arena votes between round {pending['round']}'s "
              f"champion and challenger.", flush=True)
        return None
    promoted = result.p_challenger - 0.5 > loop.args.margin
    verdict = (f"The challenger {'wins' if promoted else 'does not win'} the arena by more than the margin "
               f"{loop.args.margin:g}: P(preferred) {result.p_challenger:.3f} "
               f"(95% CI {result.low:.3f} to {result.high:.3f}) over {result.votes} votes.")
    row = {**pending, "stage": "arena", "decided_at": _now(time.time()), "arena": asdict(result),
           "decision": "promoted" if promoted else "kept", "reason": verdict}
    folder = Path(pending["challenger"]["folder"])
    publish(loop, [*ledger, row], folder if promoted else None)
    print(summary(row), flush=True)
    return row


def publish(loop: Loop, rows: list[Round], adapter_dir: Path | None, *, card: AdapterCard | None = None) -> None:
    """Append the round to the repo's ledger; a promoted adapter goes up with it, its card showing the rounds."""
    row = rows[-1]
    if adapter_dir is None:
        paths = write_ledger(rows, loop.work / f"round-{row['round']}" / "ledger")
        publish_files(paths, repo=loop.repo, private=loop.args.private,
                      commit_message=f"Flywheel loop: round {row['round']} ({row['decision']})")
        return
    write_ledger(rows, adapter_dir)
    section = rounds_section(rows)
    if card is not None:
        card.sections[ROUNDS_TITLE] = section
    else:  # an arena promotion: the card written when the challenger was trained gains the section
        readme = adapter_dir / "README.md"
        readme.write_text(readme.read_text(encoding="utf-8") + f"\n## {ROUNDS_TITLE}\n\n{section}\n", encoding="utf-8")
    pushed = push_adapter(adapter_dir, repo=loop.repo, card=card, private=loop.args.private,
                          commit_message=f"Flywheel loop: round {row['round']} promotes its {row['method']} adapter")
    print(f"Promoted: {pushed.repo} is at revision {pushed.revision[:12]}; Spaces watching it swap it in.",
          flush=True)


def champion_of(repo: str) -> tuple[str | None, str | None]:
    """(adapter reference to start from, its revision) for the adapter in `repo`; (None, None) when it holds none.

    A Hub champion is pinned to the commit read now, so the round trains and evaluates one revision.
    """
    if is_local_ref(repo):
        folder = Path(repo).expanduser()
        if not (folder / ADAPTER_CONFIG).is_file():
            return None, None
        return str(folder.resolve()), content_revision(folder)
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError

    try:
        info = HfApi().model_info(repo)
    except RepositoryNotFoundError:
        return None, None
    except HUB_ERRORS as error:
        raise FlywheelError(f"The champion in {repo} could not be read: {first_line(error)}") from None
    if ADAPTER_CONFIG not in {sibling.rfilename for sibling in info.siblings or []}:
        return None, None
    return f"{repo}@{info.sha}", info.sha


def summary(row: Round) -> str:
    """One line per round: rows, method, both sides' main metric, the decision."""
    metric = row["main_metric"]
    sides = [(row.get(side) or {}).get("metrics", {}).get(metric) for side in ("champion", "challenger")]
    scores = " vs ".join("n/a" if value is None else f"{value:.4f}" for value in sides)
    trained = row["rows"].get("trained_on", "?")
    return (f"Round {row['round']}: {row['method']} on {trained} rows ({row['rows']['new']} new); {metric} "
            f"champion vs challenger {scores}; {row['decision'].upper()}: {row.get('reason', '')}")


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {name}{'s' if n != 1 else ''}" for name, n in counts.items()) or "none"


def _now(moment: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(moment))


if __name__ == "__main__":
    run(main, LoopArgs)
