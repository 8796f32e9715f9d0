"""Arena votes as matches between models, and their Bradley-Terry ratings with bootstrap confidence intervals.

    python -m hub arena leaderboard                       # the local feedback home
    python -m hub arena leaderboard --repo me/flywheel-feedback --bootstrap 500

Every arena vote stored with both sides' provenance (a `preference` record whose `sides` give the
model, adapter and revision that answered A and B) is one match. A player is a model as served:
`<adapter>@<revision, 12 characters>`, or `<base model> (base model)` when no adapter answered, so
two revisions of one adapter repo are two players.

Bradley-Terry: P(i beats j) = 1 / (1 + exp(-(b_i - b_j))). It is fitted as a logistic regression
without intercept, one row per vote with +1 for side A's player and -1 for side B's, the way the
Chatbot Arena leaderboard fits it; a tie or a both-bad vote counts as half a win for each side.
scikit-learn (already a dependency, for the preference baseline) does the fit; its L2 penalty is a
weak prior (`PRIOR_C`) that keeps a player who won every match finite. Ratings are shown on the
Elo scale, 1000 + 400 / ln 10 * b (centred on a mean of 1000), with the percentile interval of the
ratings refitted on `rounds` bootstrap resamples of the votes.

Example:
    >>> games = [Match("x", "y", "a")] * 8 + [Match("x", "y", "b")] * 2
    >>> [s.player for s in leaderboard(games, rounds=20)]
    ['x', 'y']
"""

from __future__ import annotations

import argparse
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from hub.commands import add_feedback_source, command_group
from hub.errors import FlywheelError

ELO_SCALE = 400 / math.log(10)
"""Elo points per unit of Bradley-Terry strength (a 400-point gap: 10-to-1 odds)."""
ELO_MEAN = 1000.0
PRIOR_C = 10.0
"""Inverse strength of the L2 prior on the strengths (a N(0, 10) prior per player): weak, but finite."""
WINNERS = {"A": "a", "B": "b", "tie": "tie", "both-bad": "tie"}
"""Vote labels (`hub.feedback.records.PREFERENCE_LABELS`) -> match result."""


@dataclass(frozen=True)
class Match:
    """One vote: the players on sides A and B and who won (`a`, `b` or `tie`)."""

    a: str
    b: str
    winner: str


@dataclass(frozen=True)
class Standing:
    """One player's line of the leaderboard."""

    player: str
    rating: float
    low: float
    high: float
    """The bootstrap confidence interval of `rating`."""
    games: int
    score: float
    """Wins plus half the ties."""

    @property
    def win_rate(self) -> float:
        return self.score / self.games if self.games else 0.0


def player_name(side: dict[str, Any] | None) -> str | None:
    """The player who answered one side: `adapter@revision[:12]`, `<base> (base model)`, or None if unknown."""
    if not side:
        return None
    if side.get("adapter"):
        revision = side.get("revision") or "unknown"
        return f"{side['adapter']}@{revision[:12]}"
    return f"{side['base']} (base model)" if side.get("base") else None


def matches_from(records: Iterable[dict[str, Any]]) -> list[Match]:
    """The matches among arena votes: records with both sides known and two different players."""
    found = []
    for record in records:
        sides = record.get("sides") or {}
        a, b = player_name(sides.get("A")), player_name(sides.get("B"))
        winner = WINNERS.get(record.get("label") or "")
        if record.get("kind") == "preference" and a and b and a != b and winner:
            found.append(Match(a, b, winner))
    return found


def load_matches(repo: str | None = None, *, revision: str | None = None) -> tuple[list[Match], str, str]:
    """(matches, source, revision) of the arena votes in a feedback folder or Hub dataset repo.

    Raises:
        FlywheelError: the repo or folder cannot be read.
    """
    from hub.feedback.loading import load_feedback_snapshot

    snapshot = load_feedback_snapshot(repo, task="arena", kind="preference", revision=revision)
    return matches_from(snapshot.dataset), snapshot.source, snapshot.revision


def fit_bradley_terry(matches: Sequence[Match], *, players: Sequence[str] | None = None,
                      prior_c: float = PRIOR_C) -> dict[str, float]:
    """Elo-scale Bradley-Terry ratings of `players` (default: everyone in `matches`), mean 1000."""
    names = list(players) if players is not None else sorted({p for m in matches for p in (m.a, m.b)})
    kinds = Counter(matches)
    return _fit(list(kinds), list(kinds.values()), names, prior_c=prior_c)


def _fit(kinds: Sequence[Match], counts: Sequence[float], names: Sequence[str], *,
         prior_c: float = PRIOR_C) -> dict[str, float]:
    """The fit on distinct matches `kinds`, each seen `counts` times (identical votes are one weighted row).

    Each vote is also added mirrored (B against A, the result flipped): the likelihood is the same,
    and the regression always sees both classes, even when side A won every vote of a resample.
    """
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    if len(names) < 2 or not any(counts):
        return dict.fromkeys(names, ELO_MEAN)
    index = {name: i for i, name in enumerate(names)}
    rows, outcomes, weights = [], [], []
    for match, count in zip(kinds, counts, strict=True):
        features = np.zeros(len(names))
        features[index[match.a]], features[index[match.b]] = 1.0, -1.0
        results = [(1.0, 0.5), (0.0, 0.5)] if match.winner == "tie" else [(float(match.winner == "a"), 1.0)]
        for won, share in results:
            rows += [features, -features]
            outcomes += [won, 1.0 - won]
            weights += [share * count] * 2
    model = LogisticRegression(fit_intercept=False, C=prior_c, max_iter=1000)
    model.fit(np.array(rows), np.array(outcomes), sample_weight=np.array(weights))
    strengths = model.coef_[0] - model.coef_[0].mean()
    return {name: float(ELO_MEAN + ELO_SCALE * strengths[i]) for name, i in index.items()}


def leaderboard(matches: Sequence[Match], *, rounds: int = 200, confidence: float = 0.95,
                seed: int = 0) -> list[Standing]:
    """Every player's rating with its bootstrap interval, best first.

    A bootstrap resample of the votes is a multinomial draw of how often each distinct match occurs.
    """
    import numpy as np

    if not 0 < confidence < 1 or rounds < 1:
        raise FlywheelError("The confidence must be between 0 and 1 and --bootstrap at least 1.")
    names = sorted({p for m in matches for p in (m.a, m.b)})
    seen = Counter(matches)
    kinds, counts = list(seen), np.array(list(seen.values()), dtype=float)
    ratings = _fit(kinds, counts, names)
    rng = np.random.default_rng(seed)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(rounds):
        resampled = rng.multinomial(len(matches), counts / counts.sum())
        for name, value in _fit(kinds, resampled, names).items():
            samples[name].append(value)
    tail = (1 - confidence) / 2 * 100
    standings = []
    for name in names:
        played = [m for m in matches if name in (m.a, m.b)]
        score = sum(1.0 if m.winner == ("a" if m.a == name else "b") else 0.5 if m.winner == "tie" else 0.0
                    for m in played)
        low, high = np.percentile(samples[name], [tail, 100 - tail])
        standings.append(Standing(name, ratings[name], float(low), float(high), len(played), score))
    return sorted(standings, key=lambda s: -s.rating)


def is_revision(player: str, revision: str | None) -> bool:
    """Whether `player` is one adapter revision (None: the bare base model), whatever its repo was called."""
    return player.endswith(" (base model)") if revision is None else player.endswith(f"@{revision[:12]}")


@dataclass(frozen=True)
class HeadToHead:
    """Two revisions compared on the votes between them alone."""

    votes: int
    challenger_score: float
    """The challenger's wins plus half the ties."""
    p_challenger: float
    """Bradley-Terry probability that the challenger's answer is preferred."""
    low: float
    high: float
    """The bootstrap interval of `p_challenger`."""


def head_to_head(matches: Sequence[Match], *, champion: str | None, challenger: str, rounds: int = 200,
                 seed: int = 0) -> HeadToHead:
    """How the `challenger` revision fares against the `champion` revision (None: the base model)."""
    sides = {}
    for match in matches:
        for player, revision, name in ((match.a, champion, "champion"), (match.a, challenger, "challenger"),
                                       (match.b, champion, "champion"), (match.b, challenger, "challenger")):
            if is_revision(player, revision):
                sides[player] = name
    games = [Match(sides[m.a], sides[m.b], m.winner) for m in matches
             if m.a in sides and m.b in sides and sides[m.a] != sides[m.b]]
    if not games:
        return HeadToHead(0, 0.0, 0.5, 0.0, 1.0)
    standings = {s.player: s for s in leaderboard(games, rounds=rounds, seed=seed)}
    best = standings["challenger"]

    def chance(rating: float) -> float:  # two players' ratings are centred on ELO_MEAN: the gap is twice
        return 1 / (1 + math.exp(-2 * (rating - ELO_MEAN) / ELO_SCALE))

    return HeadToHead(len(games), best.score, chance(best.rating), chance(best.low), chance(best.high))


HEADER = ("rank", "model", "rating", "95% CI", "votes", "win rate")


def table_rows(standings: Sequence[Standing]) -> list[list[str]]:
    """The leaderboard as rows of text under `HEADER` (the CLI prints them, the arena tab shows them)."""
    return [[str(rank), s.player, f"{s.rating:.0f}", f"{s.low:.0f} to {s.high:.0f}", str(s.games),
             f"{s.win_rate:.0%}"] for rank, s in enumerate(standings, start=1)]


def render(standings: Sequence[Standing]) -> str:
    """A plain-text table with aligned columns."""
    rows = [list(HEADER), *table_rows(standings)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADER))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
                     for row in rows)


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `arena leaderboard` to the `python -m hub` dispatcher."""
    actions = command_group(subparsers, "arena", actions=("leaderboard",),
                            help="Rank the models compared in the arena.",
                            description="Rank the models compared in the arena tab from its votes.")
    board = actions.add_parser("leaderboard", help="Bradley-Terry ratings with bootstrap confidence intervals.",
                               description="Fit Bradley-Terry ratings to the arena votes that record both sides' "
                                           "model and print them with bootstrap confidence intervals.")
    add_feedback_source(board)
    board.add_argument("--bootstrap", type=int, default=200, help="Bootstrap resamples for the intervals.")
    board.add_argument("--seed", type=int, default=0, help="Seed of the bootstrap resamples.")
    board.set_defaults(func=run_leaderboard)
    return board


def run_leaderboard(args: argparse.Namespace) -> int:
    """Print the leaderboard; errors go to `hub.cli.main` (one line, exit 2)."""
    matches, source, revision = load_matches(args.repo, revision=args.revision)
    if not matches:
        print(f"No arena votes that record both sides' model in {source} (revision {revision}).")
        return 0
    standings = leaderboard(matches, rounds=args.bootstrap, seed=args.seed)
    print(f"Arena leaderboard of {source} (revision {revision}): {len(matches)} votes, {len(standings)} models; "
          f"Bradley-Terry, Elo scale, 95% intervals from {args.bootstrap} bootstrap resamples.")
    print(render(standings))
    return 0
