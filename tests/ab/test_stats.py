"""The A/B statistics: the always-valid confidence sequence keeps its error rate when read
after every round, and the sample-ratio checks catch a broken split."""

from __future__ import annotations

import math
import random

from supervisor.ab.stats import (
    Running,
    rounds_mismatch,
    sequence,
    stake_mismatch,
    welch_t,
)


def arms(xs: list[float], ys: list[float]) -> tuple[Running, Running]:
    a, b = Running(), Running()
    for x in xs:
        a.add(x)
    for y in ys:
        b.add(y)
    return a, b


def test_running_mean_and_variance() -> None:
    a, _ = arms([1.0, 2.0, 3.0, 4.0], [])
    assert a.mean == 2.5
    assert abs(a.var - 5 / 3) < 1e-12
    assert a.total == 10.0
    assert Running().var == 0.0


def test_the_interval_excludes_zero_exactly_when_the_p_value_is_under_alpha() -> None:
    rng = random.Random(3)
    for _ in range(300):
        n = rng.randint(2, 400)
        a, b = arms(
            [rng.gauss(0, 1) for _ in range(n)],
            [rng.gauss(rng.uniform(-0.5, 0.5), 1) for _ in range(rng.randint(2, 400))],
        )
        cs = sequence(a, b, alpha=0.05, n_star=1000)
        assert cs is not None
        assert cs.low <= cs.difference <= cs.high
        assert (cs.p < 0.05) == (cs.verdict() != "not_yet"), cs


def test_it_is_wider_than_the_fixed_sample_interval_and_narrows_with_rounds() -> None:
    rng = random.Random(5)
    xs = [rng.gauss(0, 1) for _ in range(4000)]
    ys = [rng.gauss(0, 1) for _ in range(4000)]
    widths = []
    for n in (100, 1000, 4000):
        a, b = arms(xs[:n], ys[:n])
        cs = sequence(a, b, alpha=0.05, n_star=2000)
        assert cs is not None
        fixed = 1.96 * math.sqrt(a.var / n + b.var / n)
        assert cs.high - cs.difference > fixed
        widths.append(cs.high - cs.low)
    assert widths[0] > widths[1] > widths[2]


def test_a_winner_is_called_falsely_rarely_when_read_after_every_round() -> None:
    """Nothing differs; 300 tests read after every round from 50 to 500 rounds an arm: at
    most about α of them ever call a winner (the naive t-test read every 10 rounds calls
    several times more)."""
    rng = random.Random(11)
    false, naive = 0, 0
    for _ in range(300):
        a, b = Running(), Running()
        called = naive_called = False
        for n in range(1, 501):
            a.add(rng.gauss(0, 1))
            b.add(rng.gauss(0, 1))
            if n < 50:
                continue
            cs = sequence(a, b, alpha=0.05, n_star=1000)
            called = called or (cs is not None and cs.verdict() != "not_yet")
            naive_called = naive_called or (n % 10 == 0 and abs(welch_t(a, b)) > 1.96)
        false += called
        naive += naive_called
    assert false / 300 <= 0.06
    assert naive > 3 * false


def test_a_real_difference_is_called_for_the_better_arm() -> None:
    rng = random.Random(2)
    a, b = arms([rng.gauss(0, 1) for _ in range(2000)], [rng.gauss(0.3, 1) for _ in range(2000)])
    cs = sequence(a, b, alpha=0.05, n_star=2000)
    assert cs is not None
    assert cs.verdict() == "b_better"
    cs = sequence(b, a, alpha=0.05, n_star=2000)
    assert cs is not None
    assert cs.verdict() == "a_better"


def test_too_few_rounds_or_constant_arms() -> None:
    assert sequence(*arms([1.0], [1.0, 2.0]), alpha=0.05, n_star=100) is None
    same = sequence(*arms([1.0, 1.0], [1.0, 1.0]), alpha=0.05, n_star=100)
    assert same is not None
    assert same.verdict() == "not_yet"
    apart = sequence(*arms([1.0, 1.0], [2.0, 2.0]), alpha=0.05, n_star=100)
    assert apart is not None
    assert apart.verdict() == "b_better"


def test_sample_ratio_mismatch_on_rounds() -> None:
    ok = rounds_mismatch(5020, 4980, 0.5)
    assert ok is not None
    assert not ok.broken
    bad = rounds_mismatch(5200, 4800, 0.5)
    assert bad is not None
    assert bad.broken
    skewed = rounds_mismatch(8000, 2000, 0.2)  # a 20 % arm B playing its share
    assert skewed is not None
    assert not skewed.broken
    assert rounds_mismatch(0, 0, 0.5) is None


def test_sample_ratio_mismatch_on_stake() -> None:
    rng = random.Random(4)
    # Each arm stakes base × its share × U(0.5, 1.5): a healthy 30/70 split.
    healthy = stake_mismatch(
        *arms(
            [10 * 0.3 * rng.uniform(0.5, 1.5) for _ in range(3000)],
            [10 * 0.7 * rng.uniform(0.5, 1.5) for _ in range(3000)],
        ),
        0.7,
    )
    assert healthy is not None
    assert not healthy.broken
    # B stakes as if it had the whole capital.
    doubled = stake_mismatch(
        *arms(
            [10 * 0.5 * rng.uniform(0.5, 1.5) for _ in range(3000)],
            [10 * 1.0 * rng.uniform(0.5, 1.5) for _ in range(3000)],
        ),
        0.5,
    )
    assert doubled is not None
    assert doubled.broken
    assert abs(doubled.observed - 2.0) < 0.1
