"""Simulate A/B tests read after every round; print the README tables.

Seeded, standard library only, through the statistics the A/B test will run
(:mod:`supervisor.ab.stats`: the always-valid confidence sequence, α = 0.05, tuned for
``--n-star`` rounds in all). Beside it, the naive reading: a two-sample t-test (|t| > 1.96)
looked at every 10 rounds, stopping at the first "significant" one.

Each round both arms play one round of the crash game at stake 1 (the seed's example): an
arm with cash-out target T wins T − 1 when the crash point (0.99 / U, at least 1) reaches T,
else loses 1: P(win) = 0.99 / T. Metrics: the return per unit staked, and the win rate. No
verdict before ``--min-rounds`` per arm.

Scenarios:
  A/A 2.0× vs 2.0×      nothing differs: every winner called is a false one
  seed 2.0× vs 3.0×     the seed's example: the same expected return (−1 %), different win rates
  +0.1 per unit         B's return is A's + 0.1 per unit staked (power on the primary metric)

    .venv/bin/python bench/ab_sim.py            # the README tables (about a minute)
    .venv/bin/python bench/ab_sim.py --quick    # a smoke run, seconds
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable

from supervisor.ab.stats import Running, sequence, welch_t

ALPHA = 0.05
Round = Callable[[random.Random], tuple[float, float]]


def crash(target_a: float, target_b: float, bonus_b: float = 0.0) -> Round:
    def play(rng: random.Random) -> tuple[float, float]:
        point = max(1.0, 0.99 / max(rng.random(), 1e-12))  # one crash point, both arms
        a = target_a - 1 if point >= target_a else -1.0
        b = (target_b - 1 if point >= target_b else -1.0) + bonus_b
        return a, b

    return play


def one(
    rng: random.Random, play: Round, rounds: int, min_rounds: int, n_star: float
) -> dict[str, int | None]:
    """First round (per arm) at which each reading calls a winner, per metric; None: never."""
    ret_a, ret_b, win_a, win_b = Running(), Running(), Running(), Running()
    called: dict[str, int | None] = {"return": None, "win": None, "naive_return": None}
    for n in range(1, rounds + 1):
        # Independent rounds per arm (each arm plays its own): two crash points.
        a, _ = play(rng)
        _, b = play(rng)
        ret_a.add(a)
        ret_b.add(b)
        win_a.add(1.0 if a > 0 else 0.0)
        win_b.add(1.0 if b > 0 else 0.0)
        if n < min_rounds:
            continue
        if called["return"] is None:
            cs = sequence(ret_a, ret_b, alpha=ALPHA, n_star=n_star)
            if cs is not None and cs.verdict() != "not_yet":
                called["return"] = n
        if called["win"] is None:
            cs = sequence(win_a, win_b, alpha=ALPHA, n_star=n_star)
            if cs is not None and cs.verdict() != "not_yet":
                called["win"] = n
        if called["naive_return"] is None and n % 10 == 0 and abs(welch_t(ret_a, ret_b)) > 1.96:
            called["naive_return"] = n
        if all(v is not None for v in called.values()):
            break
    return called


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2000, help="per arm, at most")
    parser.add_argument("--min-rounds", type=int, default=100, help="per arm")
    parser.add_argument("--n-star", type=float, default=2000.0, help="rounds in all")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="100 runs")
    args = parser.parse_args()
    if args.quick:
        args.runs = 100
    started = time.perf_counter()
    print(
        f"{args.runs} runs of up to {args.rounds} rounds per arm, read after every round from "
        f"{args.min_rounds}; always-valid α = {ALPHA}, N* = {args.n_star:g}\n"
    )
    print(
        "| scenario | metric | winner called (always-valid, every round) | rounds to call "
        "(median) | naive t-test every 10 rounds |"
    )
    print("|---|---|---|---|---|")
    scenarios = {
        "A/A 2.0× vs 2.0×": crash(2.0, 2.0),
        "seed 2.0× vs 3.0×": crash(2.0, 3.0),
        "+0.1 per unit": crash(2.0, 2.0, bonus_b=0.1),
    }
    for name, play in scenarios.items():
        rng = random.Random(f"{args.seed}:{name}")
        runs = [one(rng, play, args.rounds, args.min_rounds, args.n_star) for _ in range(args.runs)]
        naive = sum(r["naive_return"] is not None for r in runs) / args.runs
        for metric in ("return", "win"):
            calls = [n for r in runs if (n := r[metric]) is not None]
            rate = len(calls) / args.runs
            median = f"{statistics.median(calls):.0f}" if calls else "–"
            naive_cell = f"{naive:.1%}" if metric == "return" else ""
            print(f"| {name} | {metric} | {rate:.1%} | {median} | {naive_cell} |")
    print(f"\n({time.perf_counter() - started:.1f} s)")


if __name__ == "__main__":
    main()
