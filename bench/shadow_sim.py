"""Simulate the shadow's comparator and noise floor on noisy agents; print the README table.

Seeded, standard library only, and driven through the code the daemon runs: the comparator
(:class:`supervisor.shadow.compare.Comparators`, default ``[shadow]`` settings: Diffy's 20 %
and 0.03), the counts (:class:`supervisor.shadow.stats.Counts`) and the floor rule
(:func:`supervisor.shadow.stats.above_floor`, z = 3).

One run is one shadow: ``--decisions`` live decisions of kind ``crash``, each output
``{"target": T, "stake": S}``. The agent is nondeterministic: each time it decides (live, in
the shadow, or again for the floor) its stake is 1.0, or with probability q 1.0 × U(2, 4),
beyond the tolerance. The shadow runs the same code (same target: only noise) or a planted
difference (target 3.0 against 2.0). ``floor_fraction`` = 0.1 of the live decisions are
mirrored back to the live agent. The report is read every 50 mirrors (an operator peeking);
a field counts as reported in a run if any read reported it.

Columns: how often ``stake`` (noise only) was reported in a run, with the floor and with the
floor assumed zero (no floor); for the planted runs, how often ``target`` was reported and the
median number of mirrors before its first report.

    .venv/bin/python bench/shadow_sim.py            # the README table (about a minute)
    .venv/bin/python bench/shadow_sim.py --quick    # a smoke run, seconds
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from typing import Any

from supervisor.config import ShadowSection
from supervisor.shadow.compare import Comparators
from supervisor.shadow.stats import Counts, above_floor

LOOK_EVERY = 50


def run(
    rng: random.Random, q: float, planted: bool, decisions: int, fraction: float
) -> dict[str, Any]:
    comparator = Comparators(ShadowSection()).of("crash")

    def decide(target: float) -> dict[str, float]:
        stake = 1.0 if rng.random() >= q else rng.uniform(2.0, 4.0)
        return {"target": target, "stake": stake}

    shadow, floor = Counts(), Counts()
    seen: dict[str, dict[str, bool]] = {"floor": {}, "none": {}}
    first_target: int | None = None
    for i in range(1, decisions + 1):
        live = decide(2.0)
        shadow.add("crash", comparator.diverging(live, decide(3.0 if planted else 2.0)))
        if rng.random() < fraction:
            floor.add("crash", comparator.diverging(live, decide(2.0)))
        if i % LOOK_EVERY:
            continue
        n_s, n_f = shadow.compared["crash"], floor.compared.get("crash", 0)
        for name, k_s in shadow.diverged["crash"].items():
            k_f = floor.diverged.get("crash", {}).get(name, 0)
            if above_floor(k_s, n_s, k_f, n_f, z=3.0):
                seen["floor"][name] = True
                if name == "target" and first_target is None:
                    first_target = i
            if above_floor(k_s, n_s, 0, 0, z=3.0):
                seen["none"][name] = True
    return {
        "stake_floor": seen["floor"].get("stake", False),
        "stake_none": seen["none"].get("stake", False),
        "target": seen["floor"].get("target", False),
        "first_target": first_target,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--decisions", type=int, default=2000)
    parser.add_argument("--fraction", type=float, default=0.1, help="[shadow] floor_fraction")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="20 runs of 500 decisions")
    args = parser.parse_args()
    if args.quick:
        args.runs, args.decisions = 20, 500
    started = time.perf_counter()
    print(
        f"{args.runs} runs of {args.decisions} decisions, floor_fraction {args.fraction}, "
        f"read every {LOOK_EVERY} mirrors, z = 3\n"
    )
    print(
        "| noise q | shadow | `stake` reported, with the floor | without a floor "
        "| `target` reported | mirrors to report `target` (median) |"
    )
    print("|---|---|---|---|---|---|")
    for q in (0.0, 0.05, 0.2, 0.5):
        for planted in (False, True):
            rng = random.Random(f"{args.seed}:{q}:{planted}")
            results = [
                run(rng, q, planted, args.decisions, args.fraction) for _ in range(args.runs)
            ]
            stake_floor = sum(r["stake_floor"] for r in results) / args.runs
            stake_none = sum(r["stake_none"] for r in results) / args.runs
            target = sum(r["target"] for r in results) / args.runs
            firsts = [r["first_target"] for r in results if r["first_target"] is not None]
            median = f"{statistics.median(firsts):.0f}" if firsts else "–"
            print(
                f"| {q:.2f} | {'target 3.0' if planted else 'same code'} | {stake_floor:.1%} | "
                f"{stake_none:.1%} | {target:.1%} | {median} |"
            )
    print(f"\n({time.perf_counter() - started:.1f} s)")


if __name__ == "__main__":
    main()
