"""Simulate canaries, healthy and bad, through the real judge and print the table for the README.

Seeded, standard library only, and driven through the judge the daemon runs
(:class:`supervisor.rollout.judge.Judge`, with the default ``[canary]`` settings) and the
fence's rule (the permit script's share check, written out in :func:`fence`). Side by side,
on the same rounds, the seed's ``CanaryRouter.should_promote`` as its article writes it.

One run is one canary: stable and the candidate each play one round per tick, each staking
``base × its allocation × U(0.5, 1.5)`` (the candidate asks the fence first: a stake that
would pass its share of the step is refused and the round not played), from its starting
step (5, 20 or 50 %) through the next ones to 100 %. The judge looks every ``--look`` of the
candidate's rounds within a step (the daemon looks every second), and judges the step once the
candidate has played ``min_rounds`` rounds in it; a step that holds is judged again each
time as many rounds more have come (as the daemon does), until ``--horizon`` rounds. Each
round is also a decision (a kind, dice or crash 60/40, and a latency, lognormal around 2 ms)
and, one time in 500, an error of kind ``other``. The judge's stake sizes are the stakes
asked for, before the fence (as the daemon takes them from the permits).

Candidates (a round's return per unit staked; σ = 1):
  healthy normal       N(0, 1)
  healthy t(3)         Student's t with 3 degrees of freedom, unit variance (heavy tails)
  healthy casino       ±1, won with probability 0.495 (a 1 % house edge)
  mean -0.5σ / -1σ     N(-0.5, 1), N(-1, 1)
  stakes doubled       healthy returns, twice the stake it should (the fence refuses some)
  casino edge 5 %      ±1, won with probability 0.475

The seed's rule, on the same streams, is its code: ``should_promote(min_samples=100,
tolerance=0.05)`` over the PnL it records (each round's PnL, at each version's own stake),
asked after every candidate round of a step; it has no abort.

    .venv/bin/python bench/canary_sim.py            # the README table (a few minutes)
    .venv/bin/python bench/canary_sim.py --quick    # a smoke run, seconds
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# Runs from a checkout, installed or not.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from supervisor.config import CanarySection, Color
from supervisor.rollout.judge import Judge

Draw = Callable[[random.Random], float]
CAND, STABLE = Color.GREEN, Color.BLUE
STEPS = (5.0, 20.0, 50.0)  # then 100: promoted


def normal(mean: float) -> Draw:
    return lambda rng: rng.gauss(mean, 1.0)


def student_t3(rng: random.Random) -> float:
    return rng.gauss(0.0, 1.0) / math.sqrt(rng.gammavariate(1.5, 2.0))


def casino(win: float) -> Draw:
    return lambda rng: 1.0 if rng.random() < win else -1.0


@dataclass(frozen=True)
class Scenario:
    name: str
    stable: Draw
    candidate: Draw
    healthy: bool
    stake_factor: float = 1.0


SCENARIOS = [
    Scenario("healthy normal", normal(0.0), normal(0.0), True),
    Scenario("healthy t(3)", student_t3, student_t3, True),
    Scenario("healthy casino 1 % edge", casino(0.495), casino(0.495), True),
    Scenario("mean -0.5σ", normal(0.0), normal(-0.5), False),
    Scenario("mean -1σ", normal(0.0), normal(-1.0), False),
    Scenario("stakes doubled", normal(0.0), normal(0.0), False, stake_factor=2.0),
    Scenario("casino edge 1 % -> 5 %", casino(0.495), casino(0.475), False),
]


def fence(
    taken: float, other: float, amount: float, allocation: float, allowance: float, start: float
) -> bool:
    """The permit script's share check (scripts.PERMIT) for the candidate."""
    mine = taken + amount
    total = mine + other
    return mine <= (allocation + allowance) * total + start + 1e-9 * total


class Seed:
    """The seed's CanaryRouter.should_promote, as written."""

    def __init__(self) -> None:
        self.v1: list[float] = []
        self.v2: list[float] = []

    def should_promote(self, min_samples: int = 100, tolerance: float = 0.05) -> bool:
        if len(self.v2) < min_samples:
            return False
        v1_mean = sum(self.v1) / len(self.v1)
        v2_mean = sum(self.v2) / len(self.v2)
        return v2_mean >= v1_mean * (1 - tolerance)


@dataclass
class Outcome:
    promoted: bool  # reached 100 %
    aborted: bool
    rounds: int  # the candidate's rounds until it was aborted or promoted
    seed_promoted: bool
    seed_rounds: int


def one_run(sc: Scenario, start: float, rng: random.Random, args: argparse.Namespace) -> Outcome:
    cfg = CanarySection()
    judge = Judge(cfg.judge)
    steps = [s for s in STEPS if s >= start]
    played = 0
    seed = Seed()
    seed_rounds: int | None = None
    seed_left = True  # the seed is still in the same run (it promotes step by step too)
    seed_step = 0
    for index, percent in enumerate(steps):
        a = percent / 100.0
        judge.new_step()
        stakes = {CAND: 0.0, STABLE: 0.0}
        step_rounds = 0
        due = cfg.min_rounds
        tick = 0
        while True:
            tick += 1
            for color, share, draw, factor in (
                (STABLE, 1.0 - a, sc.stable, 1.0),
                (CAND, a, sc.candidate, sc.stake_factor),
            ):
                kind = "dice" if rng.random() < 0.6 else "crash"
                judge.decision(color, kind, 2.0 * math.exp(0.3 * rng.gauss(0.0, 1.0)))
                if rng.random() < 0.002:
                    judge.error(color)
                amount = args.base * share * factor * rng.uniform(0.5, 1.5)
                judge.asked(color, amount, share)
                if color is CAND and not fence(
                    stakes[CAND], stakes[STABLE], amount, a, cfg.allowance, cfg.start_amount
                ):
                    continue  # over_allocation: no round
                stakes[color] += amount
                pnl = amount * draw(rng)
                judge.execution(color, f"{tick}", amount, share)
                judge.outcome(color, pnl, f"{tick}")
                if color is CAND:
                    played += 1
                    step_rounds += 1
                    seed.v2.append(pnl)
                else:
                    seed.v1.append(pnl)
            if (
                seed_left
                and seed_step == index
                and seed.v1
                and step_rounds
                and seed.should_promote()
            ):
                seed_step += 1
                seed.v1, seed.v2 = [], []
                if seed_step == len(steps):
                    seed_left, seed_rounds = False, played
            if step_rounds == 0 or step_rounds % args.look:
                continue
            if judge.judge(CAND, running=True).verdict == "fail":
                return _end(False, True, played, seed_rounds)
            if step_rounds >= due:
                verdict = judge.judge(CAND).verdict
                if verdict == "fail":
                    return _end(False, True, played, seed_rounds)
                if verdict == "pass":
                    break
                if step_rounds >= args.horizon:
                    return _end(False, False, played, seed_rounds)  # held, never promoted
                due += cfg.min_rounds  # held: judged again once as many rounds more came
    return _end(True, False, played, seed_rounds)


def _end(promoted: bool, aborted: bool, rounds: int, seed_rounds: int | None) -> Outcome:
    return Outcome(promoted, aborted, rounds, seed_rounds is not None, seed_rounds or 0)


def quantile(values: list[int], q: float, total: int) -> str:
    """The q-quantile of the runs' rounds; '>' when fewer than that share of runs counted."""
    if total == 0 or len(values) < math.ceil(q * total):
        return "-" if not values else ">" + str(max(values))
    ordered = sorted(values)
    return str(ordered[max(0, math.ceil(q * total) - 1)])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--healthy-runs", type=int, default=500)
    p.add_argument("--bad-runs", type=int, default=200)
    p.add_argument("--look", type=int, default=5, help="candidate rounds between looks")
    p.add_argument("--horizon", type=int, default=1000, help="candidate rounds a step may hold")
    p.add_argument("--base", type=float, default=10.0, help="the full stake")
    p.add_argument("--quick", action="store_true", help="a few runs each (a smoke run)")
    args = p.parse_args()
    if args.quick:
        args.healthy_runs, args.bad_runs = 20, 10
    cfg = CanarySection()
    j = cfg.judge
    began = time.monotonic()
    print(
        f"canary_sim: seed {args.seed}; judge alpha {j.alpha:g} (step end), {j.alpha_running:g} "
        f"(running, every {args.look} candidate rounds), min_effect {j.min_effect:g}, "
        f"min_rounds {cfg.min_rounds}, min_samples {j.min_samples}/{j.min_running_samples}; "
        f"{args.healthy_runs} healthy and {args.bad_runs} bad runs per line"
    )
    header = (
        f"{'candidate':<26}{'from':>6}   {'judge: promoted':>15} {'aborted':>8} "
        f"{'rounds to abort p50/p95':>24}   {'seed: promoted':>14} {'rounds p50':>11}"
    )
    print(header)
    for sc in SCENARIOS:
        runs = args.healthy_runs if sc.healthy else args.bad_runs
        for start in STEPS:
            rng = random.Random(f"{args.seed}:{sc.name}:{start}")
            outs = [one_run(sc, start, rng, args) for _ in range(runs)]
            promoted = sum(o.promoted for o in outs)
            aborted = [o.rounds for o in outs if o.aborted]
            seed_promoted = [o.seed_rounds for o in outs if o.seed_promoted]
            to_abort = (
                f"{quantile(aborted, 0.5, runs)} / {quantile(aborted, 0.95, runs)}"
                if not sc.healthy
                else "-"
            )
            print(
                f"{sc.name:<26}{start:>5g}%   {100.0 * promoted / runs:>14.1f}% "
                f"{100.0 * len(aborted) / runs:>7.1f}% {to_abort:>24}   "
                f"{100.0 * len(seed_promoted) / runs:>13.1f}% "
                f"{quantile(seed_promoted, 0.5, runs):>11}",
                flush=True,
            )
    print(f"({time.monotonic() - began:.0f} s)")


if __name__ == "__main__":
    main()
