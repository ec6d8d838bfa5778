"""The two tests the canary's judge runs, in plain Python: Mann-Whitney U (Kayenta's test,
for every metric that is a number per sample) and the chi-square test of homogeneity (for the
mix of decision kinds).

Why not scipy: it is not a dependency of the daemon (nor numpy), it would add about 100 MB to
an install that has none of it, and what the judge needs is one rank sum and two tail
probabilities. The normal approximation of U, with the correction for ties, is what scipy's
``mannwhitneyu(method="asymptotic")`` computes; the judge asks for at least ten samples of each
color (``min_running_samples``), where it is already close, and its tails are conservative at
the extremes the judge looks at (the exact distribution is bounded, the normal is not). The
chi-square tail is the regularized upper incomplete gamma function, by its series or its
continued fraction (Numerical Recipes, 6.2).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Comparison:
    """The candidate's samples against stable's: ``effect`` is P(candidate > stable) +
    P(equal)/2 less one half (-0.5 .. 0.5; 0 when alike), ``p`` the two-sided p-value."""

    effect: float
    p: float


def mann_whitney(candidate: Sequence[float], stable: Sequence[float]) -> Comparison:
    """Mann-Whitney U, normal approximation with the tie correction, two-sided.

    >>> c = mann_whitney([2.0] * 20, [1.0] * 200)
    >>> c.effect, c.p < 1e-9
    (0.5, True)
    >>> mann_whitney([1, 2, 3, 4], [1, 2, 3, 4])
    Comparison(effect=0.0, p=1.0)
    """
    n1, n2 = len(candidate), len(stable)
    if n1 == 0 or n2 == 0:
        return Comparison(0.0, 1.0)
    # Both sorted (in C), then walked together one distinct value at a time: a run of equal
    # values is found by bisection, so binary samples take two steps, not n.
    a, b = sorted(candidate), sorted(stable)
    n = n1 + n2
    rank_sum = 0.0  # of the candidate's samples
    ties = 0.0  # sum of t^3 - t over the groups of ties
    i = j = 0
    rank = 1.0  # the rank the next value takes
    while i < n1 or j < n2:
        value = a[i] if j >= n2 or (i < n1 and a[i] <= b[j]) else b[j]
        ca = bisect.bisect_right(a, value, i) - i
        cb = bisect.bisect_right(b, value, j) - j
        size = ca + cb
        rank_sum += ca * (rank + (size - 1) / 2.0)
        if size > 1:
            ties += size**3 - size
        rank += size
        i += ca
        j += cb
    u = rank_sum - n1 * (n1 + 1) / 2.0
    mean = n1 * n2 / 2.0
    variance = n1 * n2 / 12.0 * ((n + 1) - ties / (n * (n - 1)))
    effect = u / (n1 * n2) - 0.5
    if variance <= 0.0:
        return Comparison(effect, 1.0)  # every sample equal: no difference to see
    z = (abs(u - mean) - 0.5) / math.sqrt(variance)  # with the continuity correction
    p = 1.0 if z <= 0 else min(1.0, math.erfc(z / math.sqrt(2.0)))
    return Comparison(effect, p)


def chi_square(candidate: Mapping[str, int], stable: Mapping[str, int]) -> Comparison:
    """The chi-square test that two samples of categories come from one distribution;
    ``effect`` is the total variation distance between them (0 .. 1: the share of one
    distribution that would have to move to make it the other).

    >>> c = chi_square({"dice": 50, "crash": 50}, {"dice": 90, "crash": 10})
    >>> round(c.effect, 2), c.p < 1e-6
    (0.4, True)
    >>> chi_square({"dice": 5}, {"dice": 9})
    Comparison(effect=0.0, p=1.0)
    """
    kinds = sorted(set(candidate) | set(stable))
    n1, n2 = sum(candidate.values()), sum(stable.values())
    if n1 == 0 or n2 == 0 or len(kinds) < 2:
        return Comparison(0.0, 1.0)
    n = n1 + n2
    statistic = 0.0
    distance = 0.0
    for kind in kinds:
        a, b = candidate.get(kind, 0), stable.get(kind, 0)
        column = a + b
        for observed, row in ((a, n1), (b, n2)):
            expected = row * column / n
            if expected > 0:
                statistic += (observed - expected) ** 2 / expected
        distance += abs(a / n1 - b / n2)
    return Comparison(distance / 2.0, chi2_sf(statistic, len(kinds) - 1))


def chi2_sf(x: float, dof: int) -> float:
    """P(X > x) for X chi-square with ``dof`` degrees of freedom.

    >>> round(chi2_sf(3.841458820694124, 1), 6), round(chi2_sf(9.487729036781154, 4), 6)
    (0.05, 0.05)
    """
    if x <= 0:
        return 1.0
    return _gamma_q(dof / 2.0, x / 2.0)


def _gamma_q(a: float, x: float) -> float:
    """The regularized upper incomplete gamma function Q(a, x)."""
    log_front = a * math.log(x) - x - math.lgamma(a)
    if x < a + 1.0:  # the series for P converges fast here
        term = total = 1.0 / a
        ap = a
        for _ in range(1000):
            ap += 1.0
            term *= x / ap
            total += term
            if abs(term) < abs(total) * 1e-15:
                break
        return max(0.0, 1.0 - total * math.exp(log_front))
    # Lentz's continued fraction for Q.
    tiny = 1e-300
    b = x + 1.0 - a
    c = 1.0 / tiny
    d = 1.0 / b
    h = d
    for i in range(1, 1000):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return min(1.0, math.exp(log_front) * h)


def median(values: Sequence[float]) -> float | None:
    """The median, or None for no values.

    >>> median([3.0, 1.0, 2.0]), median([])
    (2.0, None)
    """
    if not values:
        return None
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2.0
