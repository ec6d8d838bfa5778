"""What the two arms of an A/B test did: per arm, the running sums of its rounds (return per
unit staked, won or not, the stake), and how they are saved and read back.

A round is an ``outcome`` (its PnL) of the arm's color, tied to its stake by the
``execution`` with the same ``decision_id`` (else the arm's latest stake, as the canary's judge
does). Only the running sums are kept (:class:`~supervisor.ab.stats.Running`: n, mean, total,
M2), so memory stays flat however long a test runs, and what is saved is a few hundred bytes
plus the sampled series the HTML page plots.

>>> arms = Arms(12.5)
>>> arms.execution("a", "d1", 2.0); arms.outcome("a", 1.0, "d1")
True
>>> arms.arms["a"].returns.mean, arms.arms["a"].rounds
(0.5, 1)
>>> Arms.load(arms.dump(), 12.5).arms["a"].returns.mean
0.5
>>> Arms.load(arms.dump(), 13.0) is None  # another test's sums
True
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import orjson

from supervisor.ab.stats import Running

ArmName = Literal["a", "b"]
ARMS: Final[tuple[ArmName, ArmName]] = ("a", "b")

# Stakes remembered per arm, by decision id, until their outcome comes (the oldest forgotten).
MAX_STAKES_BY_DECISION: Final = 10_000
# Points of the series kept (sampled: past it, every other one is dropped).
MAX_POINTS: Final = 600


@dataclass
class Arm:
    """One arm's running sums."""

    returns: Running = field(default_factory=Running)  # PnL / stake, per round
    wins: Running = field(default_factory=Running)  # 1 when the round's PnL > 0, else 0
    stakes: Running = field(default_factory=Running)  # the round's stake
    pnl: float = 0.0  # the PnL in all
    unmatched: int = 0  # outcomes whose stake was not known (not counted as rounds)
    stake_of: OrderedDict[str, float] = field(default_factory=OrderedDict)
    last_stake: float | None = None

    @property
    def rounds(self) -> int:
        return self.returns.n

    def dump(self) -> dict[str, Any]:
        return {
            "returns": self.returns.saved(),
            "wins": self.wins.saved(),
            "stakes": self.stakes.saved(),
            "pnl": self.pnl,
            "unmatched": self.unmatched,
        }

    @classmethod
    def load(cls, d: dict[str, Any]) -> Arm:
        return cls(
            Running.restored(d["returns"]),
            Running.restored(d["wins"]),
            Running.restored(d["stakes"]),
            float(d["pnl"]),
            int(d["unmatched"]),
        )


class Arms:
    """Both arms of the test ``test_id`` (its start, wall clock), their series, and the
    running minimum of each metric's always-valid p-value."""

    def __init__(self, test_id: float) -> None:
        self.test_id = test_id
        self.arms: dict[ArmName, Arm] = {a: Arm() for a in ARMS}
        # [seconds since the start, n_a, mean_a, low_a, high_a, n_b, mean_b, low_b, high_b]
        self.series: list[list[float]] = []
        self.p_min: dict[str, float] = {"return": 1.0, "win_rate": 1.0}
        self.changed = False  # since the last save

    def execution(self, arm: ArmName, decision_id: str, amount: float) -> None:
        a = self.arms[arm]
        stake = abs(amount)
        a.last_stake = stake
        a.stake_of[decision_id] = stake
        if len(a.stake_of) > MAX_STAKES_BY_DECISION:
            a.stake_of.popitem(last=False)

    def outcome(self, arm: ArmName, pnl: float, decision_id: str | None) -> bool:
        """Count a round; False when its stake is not known (counted apart)."""
        a = self.arms[arm]
        stake = a.stake_of.pop(decision_id, None) if decision_id is not None else None
        if stake is None:
            stake = a.last_stake
        self.changed = True
        if stake is None or stake <= 0:
            a.unmatched += 1
            return False
        a.returns.add(pnl / stake)
        a.wins.add(1.0 if pnl > 0 else 0.0)
        a.stakes.add(stake)
        a.pnl += pnl
        return True

    def point(self, seconds: float, bands: list[tuple[float, float] | None]) -> None:
        """Sample the series now; ``bands``: each arm's interval on its mean return."""
        row = [round(seconds, 3)]
        for arm, band in zip(ARMS, bands, strict=True):
            r = self.arms[arm].returns
            lo, hi = band if band is not None else (r.mean, r.mean)
            row += [float(r.n), r.mean, lo, hi]
        self.series.append(row)
        if len(self.series) > MAX_POINTS:
            self.series = self.series[::2]

    def dump(self) -> bytes:
        """The sums as saved (JSON)."""
        return orjson.dumps(
            {
                "id": f"{self.test_id:.3f}",
                "arms": {a: self.arms[a].dump() for a in ARMS},
                "series": self.series,
                "p_min": self.p_min,
            }
        )

    @classmethod
    def load(cls, raw: bytes | str | None, test_id: float) -> Arms | None:
        """The sums saved for test ``test_id``; None when absent, another test's, or not
        readable."""
        if not raw:
            return None
        try:
            d = orjson.loads(raw)
            if d["id"] != f"{test_id:.3f}":
                return None
            arms = cls(test_id)
            arms.arms = {a: Arm.load(d["arms"][a]) for a in ARMS}
            arms.series = [[float(x) for x in p] for p in d.get("series", [])][-MAX_POINTS:]
            arms.p_min.update({k: float(v) for k, v in d.get("p_min", {}).items()})
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return None
        return arms

    @property
    def rounds(self) -> int:
        return sum(a.rounds for a in self.arms.values())
