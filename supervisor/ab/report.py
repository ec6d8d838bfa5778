"""``ab report``: per arm its rounds, mean return per unit staked and win rate with intervals,
the difference B − A with its always-valid interval and the verdict, the sample-ratio checks.

Every interval is valid at every look (the normal-mixture confidence sequence of
:mod:`supervisor.ab.stats`): the report may be read after every round. No verdict before each
arm has ``min_rounds`` rounds, nor while a sample-ratio check says the split is broken.

>>> from supervisor.ab.arms import Arms
>>> arms = Arms(0.0)
>>> for i in range(300):
...     arms.execution("a", f"a{i}", 1.0); _ = arms.outcome("a", (-1.0, 1.0)[i % 2], f"a{i}")
...     arms.execution("b", f"b{i}", 1.0); _ = arms.outcome("b", (2.0, -1.0, -1.0)[i % 3], f"b{i}")
>>> r = build(arms, flag="crash_target", a="2.0", b="3.0", split=50.0, min_rounds=100,
...           alpha=0.05, n_star=2000)
>>> r["verdict"]["win_rate"], r["verdict"]["return"], r["srm"]["rounds"]["broken"]
('a_better', 'not_yet', False)
"""

from __future__ import annotations

from typing import Any

from supervisor.ab.arms import ARMS, Arms
from supervisor.ab.stats import (
    Mismatch,
    Running,
    mean_sequence,
    rounds_mismatch,
    sequence,
    stake_mismatch,
)

METRICS = ("return", "win_rate")


def band(r: Running, *, alpha: float, n_star: float) -> tuple[float, float] | None:
    """One arm's always-valid interval on its mean (None under two rounds)."""
    return mean_sequence(r.n, r.mean, r.var, alpha=alpha, n_star=n_star)


def bands(arms: Arms, *, alpha: float, n_star: float) -> list[tuple[float, float] | None]:
    """Each arm's interval on its mean return, A then B (what the series plots)."""
    return [band(arms.arms[a].returns, alpha=alpha, n_star=n_star) for a in ARMS]


def _ci(b: tuple[float, float] | None) -> list[float] | None:
    return None if b is None else [round(b[0], 6), round(b[1], 6)]


def _srm(m: Mismatch | None) -> dict[str, Any] | None:
    if m is None:
        return None
    return {
        "p": m.p,
        "observed": round(m.observed, 6),
        "expected": round(m.expected, 6),
        "broken": m.broken,
    }


def build(
    arms: Arms,
    *,
    flag: str,
    a: str,
    b: str,
    split: float,
    min_rounds: int,
    alpha: float,
    n_star: float,
) -> dict[str, Any]:
    """The report's numbers (the caller adds who, when and whether it runs). Updates the
    running minimum of each metric's always-valid p-value."""
    split_b = split / 100.0
    per_arm: dict[str, Any] = {}
    for arm, value, share in zip(ARMS, (a, b), (1 - split_b, split_b), strict=True):
        x = arms.arms[arm]
        per_arm[arm] = {
            "color": "blue" if arm == "a" else "green",
            "value": value,
            "share": round(share, 6),
            "rounds": x.rounds,
            "unmatched": x.unmatched,
            "pnl": round(x.pnl, 6),
            "stake": {"total": round(x.stakes.total, 6), "mean": round(x.stakes.mean, 6)},
            "return": {
                "mean": round(x.returns.mean, 6),
                "ci": _ci(band(x.returns, alpha=alpha, n_star=n_star)),
            },
            "win_rate": {
                "mean": round(x.wins.mean, 6),
                "ci": _ci(band(x.wins, alpha=alpha, n_star=n_star)),
            },
        }
    ra, rb = arms.arms["a"], arms.arms["b"]
    srm_rounds = rounds_mismatch(ra.rounds, rb.rounds, split_b)
    srm_stake = stake_mismatch(ra.stakes, rb.stakes, split_b)
    srm = {"rounds": _srm(srm_rounds), "stake": _srm(srm_stake)}
    broken = any(m is not None and m.broken for m in (srm_rounds, srm_stake))
    enough = min(ra.rounds, rb.rounds) >= min_rounds
    difference: dict[str, Any] = {}
    verdict: dict[str, str] = {}
    for metric, ea, eb in (
        ("return", ra.returns, rb.returns),
        ("win_rate", ra.wins, rb.wins),
    ):
        cs = sequence(ea, eb, alpha=alpha, n_star=n_star)
        if cs is None:
            difference[metric] = None
            verdict[metric] = "not_yet"
            continue
        arms.p_min[metric] = min(arms.p_min.get(metric, 1.0), cs.p)
        difference[metric] = {
            "b_minus_a": round(cs.difference, 6),
            "ci": [round(cs.low, 6), round(cs.high, 6)],
            "p": arms.p_min[metric],
            "called": cs.verdict(),
        }
        verdict[metric] = cs.verdict() if enough and not broken else "not_yet"
    why_not = None
    if not enough:
        why_not = f"fewer than {min_rounds} rounds in an arm"
    elif broken:
        why_not = "sample ratio mismatch: the split is broken, no verdict is to be trusted"
    return {
        "flag": flag,
        "split": split,
        "min_rounds": min_rounds,
        "alpha": alpha,
        "n_star": n_star,
        "arms": per_arm,
        "difference": difference,
        "verdict": verdict,
        "why_not": why_not,
        "srm": srm,
        "series": arms.series,
    }
