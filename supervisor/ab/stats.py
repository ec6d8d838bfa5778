"""The A/B test's statistics: an always-valid confidence sequence on the difference of two arms'
means, and the sample-ratio-mismatch checks. Read after every round, they keep their error
rate (``bench/ab_sim.py`` measures it against a t-test read every 10 rounds).

**The confidence sequence** (the normal mixture of Robbins, as in Howard et al. 2021, eq. 14;
the one GrowthBook's sequential testing and Optimizely's mSPRT use). With ``d`` the difference
of the arms' means (B − A), ``V = s_a²/n_a + s_b²/n_b`` its variance, ``N = n_a + n_b`` and the
tuning ``ρ² = (2 log(1/α) + log(2 log(1/α) + 1)) / N*`` (the interval is narrowest near
``N*`` rounds in all), the half-width at level ``1 − α`` is

    h = √V · √( (1 + Nρ²)/(Nρ²) · (2 log(1/α) + log(1 + Nρ²)) )

and ``[d − h, d + h]`` holds the true difference at every N at once with probability ``1 − α``:
an operator may look after every round. Its always-valid p-value is the running minimum of
``1/Λ``, ``Λ = (1 + Nρ²)^(−½) · exp(d² Nρ² / (2V (1 + Nρ²)))``, the mixture likelihood ratio.

**Sample ratio mismatch**: rounds per arm against the split (a χ² test, one degree of freedom:
``p = erfc(√(χ²/2))``), and the mean stake per round of the two arms (Welch's z). A p-value
under 0.001 (GrowthBook's threshold) says the split itself is broken (an arm that plays less,
or stakes differently, for a reason that is not its strategy): no verdict is to be trusted.

>>> a, b = Running(), Running()
>>> for i in range(200):
...     a.add(0.0 + (i % 2)); b.add(0.5 + (i % 2))
>>> cs = sequence(a, b, alpha=0.05, n_star=400)
>>> cs.low > 0, round(cs.difference, 3)
(True, 0.5)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final, Literal

SRM_P: Final = 0.001

Verdict = Literal["a_better", "b_better", "not_yet"]


class Running:
    """A running mean and variance (Welford) and a running sum."""

    __slots__ = ("_m2", "mean", "n", "total")

    def __init__(self) -> None:
        self.n = 0
        self.mean = 0.0
        self.total = 0.0
        self._m2 = 0.0

    def add(self, x: float) -> None:
        self.n += 1
        self.total += x
        delta = x - self.mean
        self.mean += delta / self.n
        self._m2 += delta * (x - self.mean)

    @property
    def var(self) -> float:
        """The sample variance (0 under two samples)."""
        return self._m2 / (self.n - 1) if self.n > 1 else 0.0

    def saved(self) -> list[float]:
        """What :meth:`restored` takes back: ``[n, mean, total, M2]``."""
        return [float(self.n), self.mean, self.total, self._m2]

    @classmethod
    def restored(cls, saved: list[float]) -> Running:
        """The accumulator :meth:`saved` described.

        >>> r = Running(); r.add(1.0); r.add(3.0)
        >>> s = Running.restored(r.saved()); s.n, s.mean, s.var
        (2, 2.0, 2.0)
        """
        r = cls()
        n, mean, total, m2 = saved
        r.n, r.mean, r.total, r._m2 = int(n), float(mean), float(total), float(m2)
        return r


@dataclass(frozen=True, slots=True)
class Sequence:
    """The difference B − A with its always-valid interval and p-value at one look."""

    difference: float
    low: float
    high: float
    p: float  # this look's 1/Λ (the always-valid p-value is the running minimum of these)

    def verdict(self) -> Verdict:
        if self.low > 0:
            return "b_better"
        if self.high < 0:
            return "a_better"
        return "not_yet"


def rho2(alpha: float, n_star: float) -> float:
    """The mixture's tuning: the interval is narrowest near ``n_star`` rounds in all."""
    two_log = 2 * math.log(1 / alpha)
    return (two_log + math.log(two_log + 1)) / n_star


def _half(v: float, n_rho2: float, alpha: float) -> float:
    return math.sqrt(v) * math.sqrt(
        (1 + n_rho2) / n_rho2 * (2 * math.log(1 / alpha) + math.log(1 + n_rho2))
    )


def sequence(a: Running, b: Running, *, alpha: float, n_star: float) -> Sequence | None:
    """The confidence sequence at this look (None under two rounds an arm)."""
    if a.n < 2 or b.n < 2:
        return None
    d = b.mean - a.mean
    v = a.var / a.n + b.var / b.n
    n_rho2 = (a.n + b.n) * rho2(alpha, n_star)
    if v <= 0:
        # Two constant arms: the difference is known exactly.
        p = 1.0 if d == 0 else 0.0
        return Sequence(d, d, d, p)
    half = _half(v, n_rho2, alpha)
    exponent = d * d * n_rho2 / (2 * v * (1 + n_rho2))
    log_lambda = exponent - 0.5 * math.log(1 + n_rho2)
    p = 1.0 if log_lambda <= 0 else math.exp(-min(log_lambda, 700.0))
    return Sequence(d, d - half, d + half, p)


def mean_sequence(
    n: int, mean: float, var: float, *, alpha: float, n_star: float
) -> tuple[float, float] | None:
    """The same boundary for one sample's mean (paired differences: a shadow's would-be PnL
    minus the real one, round by round): valid at every n at once (None under two).

    >>> lo, hi = mean_sequence(400, 0.3, 1.0, alpha=0.05, n_star=400)
    >>> lo > 0, hi < 0.6
    (True, True)
    """
    if n < 2:
        return None
    if var <= 0:
        return (mean, mean)
    half = _half(var / n, n * rho2(alpha, n_star), alpha)
    return (mean - half, mean + half)


@dataclass(frozen=True, slots=True)
class Mismatch:
    """One sample-ratio check: its p-value and whether it says the split is broken."""

    what: Literal["rounds", "stake"]
    p: float
    observed: float  # B's share of the rounds, or B's mean stake over A's
    expected: float

    @property
    def broken(self) -> bool:
        return self.p < SRM_P


def rounds_mismatch(n_a: int, n_b: int, split_b: float) -> Mismatch | None:
    """χ² of the rounds per arm against B's expected share ``split_b`` (0 < split_b < 1).

    >>> rounds_mismatch(500, 500, 0.5).p, rounds_mismatch(600, 400, 0.5).broken
    (1.0, True)
    """
    n = n_a + n_b
    if n == 0:
        return None
    e_a, e_b = n * (1 - split_b), n * split_b
    chi2 = (n_a - e_a) ** 2 / e_a + (n_b - e_b) ** 2 / e_b
    return Mismatch("rounds", math.erfc(math.sqrt(chi2 / 2)), n_b / n, split_b)


def stake_mismatch(a: Running, b: Running, split_b: float) -> Mismatch | None:
    """Welch's z on the mean stake per round, each arm's scaled by its share (an arm given
    half the capital stakes half as much): equal under a healthy split."""
    if a.n < 2 or b.n < 2:
        return None
    scale_a, scale_b = 1 - split_b, split_b
    ma, mb = a.mean / scale_a, b.mean / scale_b
    v = a.var / scale_a**2 / a.n + b.var / scale_b**2 / b.n
    ratio = mb / ma if ma else math.inf
    if v <= 0:
        return Mismatch("stake", 1.0 if ma == mb else 0.0, ratio, 1.0)
    z = abs(mb - ma) / math.sqrt(v)
    return Mismatch("stake", math.erfc(z / math.sqrt(2)), ratio, 1.0)


def welch_t(a: Running, b: Running) -> float:
    """The naive two-sample statistic, (B − A) / √V: what a fixed-sample t-test reads."""
    v = a.var / a.n + b.var / b.n
    return 0.0 if v <= 0 else (b.mean - a.mean) / math.sqrt(v)
