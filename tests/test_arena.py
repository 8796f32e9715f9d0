"""hub/arena.py: Bradley-Terry ratings recover known strengths; `python -m hub arena leaderboard` prints them."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest

from hub.arena import ELO_MEAN, ELO_SCALE, Match, fit_bradley_terry, leaderboard, matches_from, player_name
from hub.cli import main as hub_main
from tests.trainer_utils import log_feedback

STRENGTHS = {"weak": -1.0, "fair": -0.2, "good": 0.4, "best": 0.8}
"""True Bradley-Terry strengths of four synthetic players (mean 0)."""


def simulated_matches(n: int, *, seed: int = 7, tie_rate: float = 0.1) -> list[Match]:
    """Votes between random pairs, won as Bradley-Terry says, with some ties."""
    rng = random.Random(seed)
    names = list(STRENGTHS)
    out = []
    for _ in range(n):
        a, b = rng.sample(names, 2)
        p_a = 1 / (1 + math.exp(-(STRENGTHS[a] - STRENGTHS[b])))
        winner = "tie" if rng.random() < tie_rate else "a" if rng.random() < p_a else "b"
        out.append(Match(a, b, winner))
    return out


def test_the_fit_recovers_the_order_and_the_intervals_contain_the_true_ratings() -> None:
    # 99% intervals: four 95% intervals all hold only ~80% of the time (seed 7 puts `fair` 2.3 sd off).
    standings = leaderboard(simulated_matches(3000, tie_rate=0.0), rounds=200, confidence=0.99, seed=1)

    assert [s.player for s in standings] == ["best", "good", "fair", "weak"]
    for standing in standings:
        truth = ELO_MEAN + ELO_SCALE * STRENGTHS[standing.player]
        assert standing.low <= truth <= standing.high, (standing, truth)
        assert standing.low < standing.rating < standing.high
    assert sum(s.games for s in standings) == 2 * 3000


def test_fewer_votes_give_wider_intervals_and_a_clean_sweep_stays_finite() -> None:
    few = {s.player: s.high - s.low for s in leaderboard(simulated_matches(150), rounds=100)}
    many = {s.player: s.high - s.low for s in leaderboard(simulated_matches(3000), rounds=100)}
    assert all(few[name] > many[name] for name in STRENGTHS)
    sweep = fit_bradley_terry([Match("x", "y", "a")] * 20)
    assert math.isfinite(sweep["x"]) and sweep["x"] > ELO_MEAN > sweep["y"]


def test_votes_become_matches_only_when_both_sides_are_known_and_differ() -> None:
    adapter = {"base": "tiny", "adapter": "me/tweet", "revision": "0123456789abcdef"}
    base = {"base": "tiny", "adapter": None, "revision": None}
    records = [{"kind": "preference", "label": "B", "sides": {"A": base, "B": adapter}},
               {"kind": "preference", "label": "both-bad", "sides": {"A": adapter, "B": base}},
               {"kind": "preference", "label": "A", "sides": {"A": base, "B": base}},  # one model at two temperatures
               {"kind": "preference", "label": "A", "sides": None}]  # a vote from before sides were recorded
    assert matches_from(records) == [Match("tiny (base model)", "me/tweet@0123456789ab", "b"),
                                     Match("me/tweet@0123456789ab", "tiny (base model)", "tie")]
    assert player_name(None) is None


def arena_votes(n: int) -> list[dict]:
    champion = {"base": "tiny", "adapter": "me/arena", "revision": "a" * 40}
    challenger = {"base": "tiny", "adapter": "me/arena", "revision": "b" * 40}
    votes = []
    for i in range(n):
        sides = {"A": champion, "B": challenger} if i % 2 else {"A": challenger, "B": champion}
        challenger_won = i % 4 != 0
        label = ("B" if i % 2 else "A") if challenger_won else ("A" if i % 2 else "B")
        votes.append({"kind": "preference", "inputs": {"prompt": f"Question {i}?"}, "chosen": "Yes.",
                      "rejected": "No.", "label": label, "sides": sides, "model": champion})
    return votes


def test_cli_prints_the_leaderboard_of_a_feedback_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log_feedback("arena", arena_votes(24), folder=tmp_path)

    assert hub_main(["arena", "leaderboard", "--repo", str(tmp_path), "--bootstrap", "50"]) == 0

    out = capsys.readouterr().out
    assert "24 votes, 2 models" in out
    header, first, second = out.splitlines()[1:4]
    assert header.split() == ["rank", "model", "rating", "95%", "CI", "votes", "win", "rate"]
    assert first.split()[:2] == ["1", "me/arena@bbbbbbbbbbbb"] and first.split()[-2:] == ["24", "75%"]
    assert second.split()[:2] == ["2", "me/arena@aaaaaaaaaaaa"] and second.split()[-1] == "25%"
    assert hub_main(["arena", "leaderboard", "--repo", str(tmp_path), "--bootstrap", "0"]) == 2
    assert "--bootstrap at least 1" in capsys.readouterr().err


def test_cli_says_when_there_are_no_votes_and_exits_2_on_a_bad_repo(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert hub_main(["arena", "leaderboard", "--repo", str(tmp_path)]) == 0
    assert "No arena votes that record both sides' model" in capsys.readouterr().out

    assert hub_main(["arena", "leaderboard", "--repo", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.strip() == f"error: Feedback folder {tmp_path / 'missing'} does not exist."
