"""Simulate the pnl_sigma detectors on synthetic rounds and print the table for the README.

Seeded, standard library only (CI has no numpy), and driven through the real evaluator,
:class:`supervisor.guard.pnl.PnlSigma`, once with ``detector = "seed"`` and once with the
default config. Both see the same rounds.

One run is one fresh candidate: the evaluator learns its baseline from ``--baseline`` stable
rounds drawn from the healthy distribution (the same way the daemon learns it from the stable
color, so the baseline's own estimation error is part of the result), then judges up to
``--rounds`` candidate rounds. Rounds are in units of the healthy per-round σ.

False rollbacks: fires / candidate rounds judged (a run stops judging once it fires), per
100,000. Rounds to detect: median and 95th percentile over ``--bad-runs`` runs; ">N" when fewer
than half (or 95 %) of the runs fired within the horizon, "never" when none did.

    .venv/bin/python bench/guard_sim.py            # the README table, under a minute
    .venv/bin/python bench/guard_sim.py --quick    # CI smoke run, a few seconds
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

from supervisor.config import Color, PnlSigmaTrigger
from supervisor.guard.pnl import TRIGGER, PnlSigma

Draw = Callable[[random.Random], float]
CANDIDATE = Color.GREEN


def normal(shift: float = 0.0, scale: float = 1.0) -> Draw:
    return lambda rng: shift + scale * rng.gauss(0.0, 1.0)


def student_t3(rng: random.Random) -> float:
    # t(3) is Z / sqrt(V/3) with V ~ chi²(3) = Gamma(1.5, 2); its variance is 3, so divide by √3.
    return rng.gauss(0.0, 1.0) / math.sqrt(rng.gammavariate(1.5, 2.0))


def crash_at_2x(win: float) -> Draw:
    """A crash game cashed out at 2.0×: win the stake (+1) with probability ``win``, else -1."""
    return lambda rng: 1.0 if rng.random() < win else -1.0


CASINO_HEALTHY = 0.495  # a 1 % house edge
CASINO_BAD = 0.475  # the edge grown to 5 %: -0.04 per-round σ


@dataclass(frozen=True)
class Scenario:
    name: str
    stable: Draw
    candidate: Draw
    healthy: bool  # a false-rate row (True) or a rounds-to-detect row
    baseline: int | None = None  # stable rounds learned, if not --baseline


def scenarios(min_baseline: int) -> list[Scenario]:
    n01, casino = normal(), crash_at_2x(CASINO_HEALTHY)
    return [
        Scenario("normal", n01, n01, healthy=True),
        Scenario("t(3), unit variance", student_t3, student_t3, healthy=True),
        Scenario("normal stable, t(3) candidate", n01, student_t3, healthy=True),
        Scenario("casino 2.0x, 1 % edge", casino, casino, healthy=True),
        Scenario(f"normal, {min_baseline} stable rounds", n01, n01, True, baseline=min_baseline),
        Scenario("mean -0.25σ", n01, normal(-0.25), healthy=False),
        Scenario("mean -0.5σ", n01, normal(-0.5), healthy=False),
        Scenario("mean -1σ", n01, normal(-1.0), healthy=False),
        Scenario("mean -4σ", n01, normal(-4.0), healthy=False),
        Scenario("variance doubled", n01, normal(scale=math.sqrt(2.0)), healthy=False),
        Scenario("casino edge 1 % -> 5 %", casino, crash_at_2x(CASINO_BAD), healthy=False),
    ]


def simulate(
    scenario: Scenario,
    guards: list[PnlSigma],
    runs: int,
    rounds: int,
    baseline: int,
    rng: random.Random,
) -> list[list[int | None]]:
    """For each guard, the round of its first rollback in each run (None: not in the horizon)."""
    fired_at: list[list[int | None]] = [[] for _ in guards]
    stable, candidate = scenario.stable, scenario.candidate
    for _ in range(runs):
        for guard in guards:
            guard.reset_baseline()
            guard.reset_candidate()
        for _ in range(baseline):
            x = stable(rng)
            for guard in guards:
                guard.baseline_round(x)
        pending = list(range(len(guards)))
        first: list[int | None] = [None] * len(guards)
        for n in range(1, rounds + 1):
            x = candidate(rng)
            fired = False
            for g in pending:
                verdict = guards[g].candidate_round(CANDIDATE, x)
                if verdict is not None and verdict.trigger == TRIGGER:
                    first[g] = n
                    fired = True
            if fired:
                pending = [g for g in pending if first[g] is None]
                if not pending:
                    break
        for g, at in enumerate(first):
            fired_at[g].append(at)
    return fired_at


def false_rate(fired: list[int | None], rounds: int) -> str:
    fires = sum(1 for at in fired if at is not None)
    judged = sum(rounds if at is None else at for at in fired)
    return f"{fires / judged * 1e5:6.2f}  ({fires}/{judged / 1e6:.2f}M)"


def percentile(fired: list[int | None], q: float, rounds: int) -> str:
    # Nearest rank, with the runs that never fired ranked last.
    caught = sorted(at for at in fired if at is not None)
    if not caught:
        return "never"
    rank = math.ceil(q * len(fired))
    return str(caught[rank - 1]) if rank <= len(caught) else f">{rounds}"


def detection(fired: list[int | None], rounds: int) -> str:
    caught = sum(1 for at in fired if at is not None)
    median, p95 = percentile(fired, 0.5, rounds), percentile(fired, 0.95, rounds)
    return f"{median:>6} {p95:>6}  ({100 * caught / len(fired):3.0f} %)"


def cost_per_round(guard: PnlSigma, rng: random.Random, n: int = 100_000) -> float:
    """Microseconds per candidate_round on a healthy stream, after a full baseline."""
    guard.reset_baseline()
    guard.reset_candidate()
    for _ in range(guard.config.baseline_rounds):
        guard.baseline_round(rng.gauss(0.0, 1.0))
    xs = [rng.gauss(0.0, 1.0) for _ in range(n)]
    judge = guard.candidate_round
    start = time.perf_counter()
    for x in xs:
        judge(CANDIDATE, x)
    return (time.perf_counter() - start) / n * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000, help="healthy runs per false-rate row")
    parser.add_argument("--bad-runs", type=int, default=200, help="runs per detection row")
    parser.add_argument("--rounds", type=int, default=2000, help="candidate rounds per run")
    parser.add_argument("--baseline", type=int, default=1000, help="stable rounds learned")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="small run for CI (~5 s)")
    args = parser.parse_args(argv)
    if args.quick:
        args.runs, args.bad_runs, args.rounds = 100, 40, 1000

    default = PnlSigmaTrigger()
    if args.baseline < default.min_baseline:
        parser.error(f"--baseline under min_baseline ({default.min_baseline}) judges nothing")
    seed_rule = PnlSigmaTrigger(detector="seed")
    # For reference, not a recommended setting: the same CUSUM with no clip, k=0.5 h=12.
    plain = PnlSigmaTrigger(detector="robust_cusum", cusum_h=12.0, cusum_clip=1e6)
    columns = [
        ("seed rule", seed_rule, f"window={seed_rule.window} sigma={seed_rule.sigma:g}"),
        ("plain CUSUM", plain, f"k={plain.cusum_k:g} h={plain.cusum_h:g}, no clip"),
        (
            f"{default.detector} (default)",
            default,
            f"k={default.cusum_k:g} h={default.cusum_h:g} clip={default.cusum_clip:g}",
        ),
    ]
    guards = [PnlSigma(config) for _, config, _ in columns]
    started = time.perf_counter()

    def line(first: str, cells: list[str]) -> None:
        print(f"{first:<32}" + "".join(f"  {cell:<24}" for cell in cells).rstrip())

    print(
        f"pnl_sigma simulation (seed {args.seed}): each run learns its baseline from "
        f"{args.baseline} stable rounds,\nthen judges up to {args.rounds} candidate rounds; "
        f"rounds in units of the healthy per-round σ"
    )
    for name, _, settings in columns:
        print(f"  {name}: {settings}")
    rows = scenarios(default.min_baseline)
    print()
    print(f"False rollbacks per 100,000 healthy rounds (fires/rounds), {args.runs} runs each")
    line("healthy candidate", [name for name, _, _ in columns])
    for scenario in (s for s in rows if s.healthy):
        rng = random.Random(f"{args.seed}:{scenario.name}")
        baseline = scenario.baseline or args.baseline
        fired = simulate(scenario, guards, args.runs, args.rounds, baseline, rng)
        line(scenario.name, [false_rate(f, args.rounds) for f in fired])
    print()
    print(
        f"Rounds to detect a bad candidate, {args.bad_runs} runs each: "
        f"median p95 (share caught in {args.rounds})"
    )
    line("bad candidate", [name for name, _, _ in columns])
    for scenario in (s for s in rows if not s.healthy):
        rng = random.Random(f"{args.seed}:{scenario.name}")
        fired = simulate(scenario, guards, args.bad_runs, args.rounds, args.baseline, rng)
        line(scenario.name, [detection(f, args.rounds) for f in fired])
    print()
    rng = random.Random(args.seed)
    cost_seed, cost_default = cost_per_round(guards[0], rng), cost_per_round(guards[-1], rng)
    print(
        f"candidate_round: {cost_seed:.2f} µs (seed rule), {cost_default:.2f} µs "
        f"({default.detector}); the simulation took {time.perf_counter() - started:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
