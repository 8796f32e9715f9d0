"""trainers/loop.py on a tiny model with a local adapter repo: when a round runs, what it trains, what it promotes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hub.ledger import read_ledger
from hub.repos import content_revision
from tasks import get_task
from tests.adapter_factory import make_adapter
from tests.trainer_utils import error_lines, log_feedback, summary_feedback, train
from trainers import loop
from trainers.eval_report import EvalReport
from trainers.evaluation import GenerationEvaluator
from trainers.rounds import choose_method, take_in

SERVED = {"base": "tiny", "adapter": None, "revision": None}
"""The provenance a ticket gives a record: what makes a row bound to a real output."""
FAST = ["--max-steps", "2", "--eval-limit", "2", "--eval-max-new-tokens", "4", "--eval-batch-size", "2",
        "--per-device-train-batch-size", "2", "--max-length", "320", "--lora-r", "4", "--lora-alpha", "8",
        "--train-min-rows", "4"]


def bound(records: list[dict], **extra: object) -> list[dict]:
    return [{**record, "model": SERVED, **extra} for record in records]


@pytest.fixture
def scores(monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    """Held-out ROUGE-L by who is scored: the base model, the adapter in the repo, each round's challenger."""
    table: dict[str, object] = {"base": 0.20, "champion": 0.30, "challenger": [], "scored": []}

    def score(self: GenerationEvaluator, *, adapter: str | None) -> EvalReport:
        who = "base" if adapter is None else "challenger" if "round-" in adapter else "champion"
        table["scored"].append((who, adapter))
        value = table["challenger"].pop(0) if who == "challenger" else table[who]
        return EvalReport(task=self.task.slug, model="tiny", adapter=adapter, main_metric="rougeL",
                          higher_is_better=True, metrics={"rougeL": value}, samples=[])

    monkeypatch.setattr(GenerationEvaluator, "score", score)
    return table


def run_loop(tiny: Path, feedback: Path, repo: Path, capsys: pytest.CaptureFixture[str], *extra: str
             ) -> tuple[int, str, str]:
    argv = ["--task", "dialogue_summary", "--model", str(tiny), "--feedback-repo", str(feedback),
            "--adapter-repo", str(repo), "--once", *FAST, *extra]
    return train(loop.main, loop.LoopArgs, argv, capsys)


def test_rounds_promote_a_challenger_that_wins_by_the_margin_and_keep_the_champion_otherwise(
        tiny_causal_lm: Path, tmp_path: Path, scores: dict[str, object],
        capsys: pytest.CaptureFixture[str]) -> None:
    feedback, repo = tmp_path / "feedback", tmp_path / "adapter-repo"
    log_feedback("dialogue_summary", bound(summary_feedback(10)), folder=feedback)
    scores["challenger"] = [0.36]  # beats the base model's 0.20 by more than the margin

    code, out, err = run_loop(tiny_causal_lm, feedback, repo, capsys, "--min-rows", "10", "--margin", "0.05")

    assert code == 0, err
    assert "Round 1:" in out and "PROMOTED" in out
    assert {"adapter_model.safetensors", "adapter_config.json", "README.md", "ledger.jsonl", "ledger.png"} <= {
        p.name for p in repo.iterdir()}
    (first,) = read_ledger(str(repo))
    assert first["method"] == "sft" and first["decision"] == "promoted" and first["rows"]["new"] == 10
    assert first["champion"]["metrics"]["rougeL"] == 0.20 and first["challenger"]["metrics"]["rougeL"] == 0.36
    assert first["challenger"]["revision"] == content_revision(repo) and first["rows"]["trained_on"] > 0
    card = (repo / "README.md").read_text()
    assert "![main metric across rounds](ledger.png)" in card and "| 1 | sft |" in card
    champion_weights = (repo / "adapter_model.safetensors").read_bytes()

    # Round 2 starts from the champion, scores it on the same examples, and does not clear the margin.
    log_feedback("dialogue_summary", bound(summary_feedback(12)[10:] + summary_feedback(30)[20:30]), folder=feedback)
    scores["challenger"] = [0.33]
    code, out, err = run_loop(tiny_causal_lm, feedback, repo, capsys, "--min-rows", "10", "--margin", "0.05")

    assert code == 0, err
    assert "KEPT" in out and "by no more than the margin" in out
    assert (repo / "adapter_model.safetensors").read_bytes() == champion_weights  # still serving round 1's
    first_again, second = read_ledger(str(repo))
    assert first_again == first and second["round"] == 2 and second["decision"] == "kept"
    assert second["champion"] == {"adapter": str(repo.resolve()), "revision": first["challenger"]["revision"],
                                  "metrics": {"rougeL": 0.30}}
    assert ("champion", str(repo.resolve())) in scores["scored"]  # the champion, not the base model, was scored


def test_with_the_arena_criterion_a_challenger_waits_for_votes_then_the_votes_decide(
        tiny_causal_lm: Path, tmp_path: Path, scores: dict[str, object],
        capsys: pytest.CaptureFixture[str]) -> None:
    feedback, repo, waiting = tmp_path / "feedback", tmp_path / "adapter-repo", tmp_path / "challengers"
    log_feedback("dialogue_summary", bound(summary_feedback(10)), folder=feedback)
    scores["challenger"] = [0.10]  # worse on held-out examples: here only the votes count
    arena = ["--criterion", "arena", "--challenger-repo", str(waiting), "--min-votes", "6", "--margin", "0.1"]

    code, out, err = run_loop(tiny_causal_lm, feedback, repo, capsys, "--min-rows", "10", *arena)

    assert code == 0, err
    (pending,) = read_ledger(str(repo))
    assert pending["decision"] == "pending" and "Waiting for 6 arena votes" in pending["reason"]
    assert not (repo / "adapter_model.safetensors").exists() and (waiting / "adapter_model.safetensors").exists()
    challenger = {"base": "tiny", "adapter": str(waiting), "revision": pending["challenger"]["published"]}
    votes = [{"kind": "preference", "inputs": {"prompt": f"Say hi {i}"}, "chosen": "Hi.", "rejected": "Go.",
              "label": "A" if i % 5 else "B", "sides": {"A": challenger, "B": SERVED}} for i in range(5)]
    log_feedback("arena", bound(votes), folder=feedback)
    code, out, _ = run_loop(tiny_causal_lm, feedback, repo, capsys, *arena)
    assert "Waiting: 5 of 6 arena votes between round 1's champion and challenger." in out

    log_feedback("arena", bound(votes[1:2]), folder=feedback)  # 5 of 6 votes for the challenger
    code, out, err = run_loop(tiny_causal_lm, feedback, repo, capsys, *arena)

    assert code == 0, err
    first, decided = read_ledger(str(repo))
    assert first == pending and decided["round"] == 1 and decided["stage"] == "arena"
    assert decided["decision"] == "promoted" and decided["arena"]["votes"] == 6
    assert decided["arena"]["p_challenger"] > 0.6 and "wins the arena" in decided["reason"]
    assert content_revision(repo) == pending["challenger"]["published"]  # the challenger now serves
    assert "## Rounds up to this adapter's promotion" in (repo / "README.md").read_text()


def test_a_round_waits_for_min_rows_new_rows_bound_to_real_outputs(
        tiny_causal_lm: Path, tmp_path: Path, scores: dict[str, object],
        capsys: pytest.CaptureFixture[str]) -> None:
    feedback, repo = tmp_path / "feedback", tmp_path / "adapter-repo"
    log_feedback("dialogue_summary", bound(summary_feedback(6)) + summary_feedback(20)[6:], folder=feedback)

    code, out, err = run_loop(tiny_causal_lm, feedback, repo, capsys, "--min-rows", "8")

    assert code == 0, err
    assert "Waiting: 6 of 8 new rows for dialogue_summary since the start." in out  # unbound rows do not count
    assert not repo.exists() and read_ledger(str(repo)) == []


def test_a_round_that_cannot_train_is_recorded_as_failed_and_counts_its_rows(
        tiny_causal_lm: Path, tmp_path: Path, scores: dict[str, object],
        capsys: pytest.CaptureFixture[str]) -> None:
    feedback, repo = tmp_path / "feedback", tmp_path / "adapter-repo"
    bad_flags = [{**record, "label": "inaccurate"} for record in summary_feedback(8) if record["kind"] == "flag"]
    log_feedback("dialogue_summary", bound(bad_flags), folder=feedback)

    code, out, err = run_loop(tiny_causal_lm, feedback, repo, capsys, "--min-rows", "4")

    assert code == 0, err
    (row,) = read_ledger(str(repo))
    assert row["method"] == "kto" and row["decision"] == "failed" and "KTO needs both good and bad" in row["reason"]
    assert json.loads((repo / "ledger.jsonl").read_text())["rows"]["signals"] == {"bad flag": 4}
    code, out, _ = run_loop(tiny_causal_lm, feedback, repo, capsys, "--min-rows", "4")
    assert "Waiting: 0 of 4 new rows for dialogue_summary since round 1." in out  # no retry on the same rows


def test_a_detox_round_trains_ppo_from_the_champion_adapter_and_scores_both_for_toxicity(
        tiny_causal_lm: Path, tmp_path: Path, flywheel_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    feedback, repo = tmp_path / "feedback", tmp_path / "adapter-repo"
    make_adapter(tiny_causal_lm, repo, seed=3)  # the champion: LoRA on q_proj and v_proj only
    flags = [{"kind": "flag", "inputs": {"prompt": f"The fans in row {i} shouted"}, "completion": "loudly.",
              "label": "toxic" if i % 2 else "fine"} for i in range(10)]
    log_feedback("detox", bound(flags), folder=feedback)
    argv = ["--task", "detox", "--model", str(tiny_causal_lm), "--feedback-repo", str(feedback),
            "--adapter-repo", str(repo), "--min-rows", "10", "--reward", "toxicity=profanity-check", *FAST]

    code, out, err = train(loop.main, loop.LoopArgs, argv, capsys)

    assert code == 0, err
    (row,) = read_ledger(str(repo))
    assert row["method"] == "ppo" and row["decision"] in ("promoted", "kept"), row
    assert row["champion"]["adapter"] == str(repo.resolve()) and row["main_metric"] == "toxicity_mean"
    assert {"toxicity_mean", "perplexity"} <= set(row["champion"]["metrics"]) & set(row["challenger"]["metrics"])
    trained = json.loads((flywheel_home / "loop" / "detox" / "round-1" / "ppo" / "adapter_config.json").read_text())
    assert set(trained["target_modules"]) == {"q_proj", "v_proj"}  # from the champion, not a fresh all-linear LoRA


@pytest.mark.parametrize(("task", "new", "method"), [
    ("dialogue_summary", {"edit": 5, "good flag": 3}, "sft"),
    ("dialogue_summary", {"edit": 5, "bad flag": 1}, "kto"),
    ("conversation_starter", {"good flag": 2, "bad flag": 6}, "kto"),
    ("arena", {"vote": 9}, "dpo"),
    ("dialogue_response", {"vote": 1, "edit": 4}, "dpo"),
    ("tweet", {"rating": 12}, "reward+ppo"),
    ("detox", {"good flag": 3, "bad flag": 3}, "ppo"),
])
def test_the_method_follows_the_kinds_that_came_in(task: str, new: dict[str, int], method: str) -> None:
    assert choose_method(get_task(task), new) == method


def test_signals_are_counted_over_bound_rows_and_guard_outputs_are_bad_flags(tmp_path: Path) -> None:
    rows = [{"kind": "flag", "inputs": {"prompt": f"The fans {i}"}, "completion": "cheered.", "label": "fine"}
            for i in range(5)]
    log_feedback("detox", bound(rows[:2]) + bound(rows[2:3], source="guard") + rows[3:], folder=tmp_path)

    intake = take_in(str(tmp_path), get_task("detox"))

    assert intake.signals == {"good flag": 2, "bad flag": 1} and intake.rows == 3
    assert intake.since({"good flag": 1}) == {"good flag": 1, "bad flag": 1}


def test_bad_options_exit_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = train(loop.main, loop.LoopArgs, ["--task", "tweet", "--once", "--every", "5"], capsys)
    assert code == 2 and error_lines(err) == ["error: Give --once or --every MINUTES, not both."]
    code, _, err = train(loop.main, loop.LoopArgs, ["--task", "tweet", "--feedback-repo", str(tmp_path / "none")],
                         capsys)
    assert code == 2 and error_lines(err) == [f"error: Feedback folder {tmp_path / 'none'} does not exist."]
