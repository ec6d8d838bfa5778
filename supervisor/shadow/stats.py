"""What a shadow run counts, in bounded memory: divergences per kind and field (the shadow's
and the noise floor's), the would-be and real PnL of each scored round, latencies, and the
points of the report's plots.

The floor rule (docs/shadow.md). For a kind and a field, ``k_s`` of the ``n_s`` mirrors the
shadow answered differ from the live output, and ``k_f`` of the ``n_f`` the live color
answered for the floor differ from its own output. The field is *reported* when the shadow's
rate passes the floor's by ``z`` standard errors, with the Agresti–Caffo adjustment (one
success and one failure added to each side) so that a handful of samples cannot look certain:

    p_s = (k_s + 1) / (n_s + 2),  p_f = (k_f + 1) / (n_f + 2)
    reported  ⇔  p_s − p_f > z · √(p_s (1 − p_s) / (n_s + 2) + p_f (1 − p_f) / (n_f + 2))

With no floor at all (``n_f = 0``: the live color answers no mirrors, or ``floor_fraction =
0``) the floor is taken as 0 and exact: ``p_f = 0`` and no floor term.

>>> above_floor(50, 50, 0, 5, z=3.0), above_floor(25, 50, 3, 6, z=3.0)
(True, False)
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from supervisor.shadow.compare import Divergence

# Bounds against a child that invents a new kind or field with every decision.
MAX_KINDS: Final = 100
MAX_FIELDS: Final = 200
OTHER: Final = "(other)"  # where kinds and fields past the bounds are counted
TOP: Final = 20  # divergences kept with their inputs, the largest first
LATENCY_SAMPLES: Final = 10_000
SERIES_POINTS: Final = 1000

# Student's t, 97.5 % quantile, for 1..30 degrees of freedom (a two-sided 95 % interval).
_T975: Final = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


def t975(df: int) -> float:
    """The 97.5 % quantile of Student's t with ``df`` degrees of freedom (past 30, the
    normal's 1.96 with the first Cornish–Fisher term, within 0.1 % of the exact value).

    >>> t975(10), round(t975(100), 3)
    (2.228, 1.984)
    """
    if df < 1:
        return math.inf
    return _T975[df - 1] if df <= 30 else 1.959964 + 2.372 / df


def above_floor(k_s: int, n_s: int, k_f: int, n_f: int, *, z: float) -> bool:
    """The floor rule (see the module's docstring)."""
    if n_s == 0 or k_s == 0:
        return False
    p_s = (k_s + 1) / (n_s + 2)
    var = p_s * (1 - p_s) / (n_s + 2)
    p_f = 0.0
    if n_f > 0:
        p_f = (k_f + 1) / (n_f + 2)
        var += p_f * (1 - p_f) / (n_f + 2)
    return p_s - p_f > z * math.sqrt(var)


class Mean:
    """A running mean and variance (Welford), and its 95 % t interval."""

    __slots__ = ("_m2", "mean", "n")

    def __init__(self) -> None:
        self.n = 0
        self.mean = 0.0
        self._m2 = 0.0

    def add(self, x: float) -> None:
        self.n += 1
        delta = x - self.mean
        self.mean += delta / self.n
        self._m2 += delta * (x - self.mean)

    @property
    def std(self) -> float:
        return math.sqrt(self._m2 / (self.n - 1)) if self.n > 1 else 0.0

    def interval(self) -> tuple[float, float] | None:
        """The mean's 95 % interval (None under two samples).

        >>> m = Mean()
        >>> for x in (1.0, 2.0, 3.0): m.add(x)
        >>> [round(v, 3) for v in m.interval()]
        [-0.484, 4.484]
        """
        if self.n < 2:
            return None
        half = t975(self.n - 1) * self.std / math.sqrt(self.n)
        return (self.mean - half, self.mean + half)

    def as_dict(self) -> dict[str, Any]:
        ci = self.interval()
        return {
            "n": self.n,
            "mean": _r(self.mean) if self.n else None,
            "std": _r(self.std) if self.n > 1 else None,
            "ci95": [_r(ci[0]), _r(ci[1])] if ci else None,
        }


class Series:
    """Points of a plot in bounded memory: past ``cap`` points every other one is dropped and
    only every other new one kept from then on; the latest point is always shown."""

    __slots__ = ("_last", "_skip", "_stride", "cap", "points")

    def __init__(self, cap: int = SERIES_POINTS) -> None:
        self.cap = cap
        self.points: list[tuple[float, ...]] = []
        self._stride = 1
        self._skip = 0
        self._last: tuple[float, ...] | None = None

    def add(self, point: tuple[float, ...]) -> None:
        self._last = point
        self._skip += 1
        if self._skip < self._stride:
            return
        self._skip = 0
        self.points.append(point)
        if len(self.points) > self.cap:
            self.points = self.points[::2]
            self._stride *= 2

    def snapshot(self) -> list[list[float]]:
        out = [[_r(v) for v in p] for p in self.points]
        if self._last is not None and (not self.points or self.points[-1] is not self._last):
            out.append([_r(v) for v in self._last])
        return out


@dataclass
class Counts:
    """Per kind: mirrors compared, and per field how many differed."""

    compared: dict[str, int] = field(default_factory=dict)
    diverged: dict[str, dict[str, int]] = field(default_factory=dict)

    def add(self, kind: str, divergences: Iterable[Divergence]) -> str:
        """Count one compared mirror; the kind as counted (past the bound: OTHER)."""
        if kind not in self.compared and len(self.compared) >= MAX_KINDS:
            kind = OTHER
        self.compared[kind] = self.compared.get(kind, 0) + 1
        fields = self.diverged.setdefault(kind, {})
        for d in divergences:
            name = d.field
            if name not in fields and len(fields) >= MAX_FIELDS:
                name = OTHER
            fields[name] = fields.get(name, 0) + 1
        return kind


def quantiles(samples: Iterable[float]) -> dict[str, float | None]:
    """p50, p90, p99 and the largest of ``samples`` in milliseconds (nearest rank)."""
    xs = sorted(samples)
    if not xs:
        return {"n": 0, "p50_ms": None, "p90_ms": None, "p99_ms": None, "max_ms": None}

    def rank(q: float) -> float:
        return _r(xs[min(len(xs) - 1, max(0, math.ceil(q * len(xs)) - 1))] * 1000.0)

    return {
        "n": len(xs),
        "p50_ms": rank(0.5),
        "p90_ms": rank(0.9),
        "p99_ms": rank(0.99),
        "max_ms": _r(xs[-1] * 1000.0),
    }


class Tally:
    """Everything one shadow run counts (kept after it stops, for its report)."""

    def __init__(self) -> None:
        self.shadow = Counts()
        self.floor = Counts()
        self.mirrors: dict[str, int] = {"answered": 0, "dropped": 0, "timeout": 0, "error": 0}
        self.floor_mirrors: dict[str, int] = {
            "answered": 0,
            "dropped": 0,
            "timeout": 0,
            "error": 0,
        }
        self.live_decisions = 0
        self.executions = 0  # executions the shadow reported: each one a critical event
        self.top: list[tuple[float, int, dict[str, Any]]] = []  # a min-heap of TOP
        self._seq = 0
        self.real = Mean()  # PnL per scored round, the live color's
        self.would_be = Mean()  # the shadow's, on the same rounds
        self.gap = Mean()  # would-be minus real, per round (paired)
        self.real_total = 0.0
        self.would_be_total = 0.0
        self.unscored = 0  # live outcomes of mirrored decisions the shadow could not score
        self.pnl_series = Series()  # (t, cumulative real, cumulative would-be)
        self.divergence_series = Series()  # (t, compared so far, diverged so far)
        self.diverged_total = 0
        self.compared_total = 0
        self.shadow_latency: deque[float] = deque(maxlen=LATENCY_SAMPLES)  # round trips, s
        self.floor_latency: deque[float] = deque(maxlen=LATENCY_SAMPLES)
        self.live_latency: deque[float] = deque(maxlen=LATENCY_SAMPLES)  # as reported, s

    def compared(self, now: float, divergences: list[Divergence]) -> None:
        self.compared_total += 1
        self.diverged_total += bool(divergences)
        self.divergence_series.add((now, self.compared_total, self.diverged_total))

    def keep_top(self, item: dict[str, Any], size: float) -> None:
        self._seq += 1
        entry = (size, self._seq, item)
        if len(self.top) < TOP:
            heapq.heappush(self.top, entry)
        elif entry[:2] > self.top[0][:2]:
            heapq.heapreplace(self.top, entry)

    def scored(self, now: float, real: float, would_be: float) -> None:
        self.real.add(real)
        self.would_be.add(would_be)
        self.gap.add(would_be - real)
        self.real_total += real
        self.would_be_total += would_be
        self.pnl_series.add((now, self.real_total, self.would_be_total))


def fields_above(t: Tally, kind: str, *, z: float) -> int:
    """How many of ``kind``'s fields pass the floor now."""
    n_s = t.shadow.compared.get(kind, 0)
    n_f = t.floor.compared.get(kind, 0)
    floor = t.floor.diverged.get(kind, {})
    return sum(
        above_floor(k, n_s, floor.get(name, 0), n_f, z=z)
        for name, k in t.shadow.diverged.get(kind, {}).items()
    )


def _r(x: float) -> float:
    return round(x, 6)
