"""The shadow's report, as ``shadow report --json`` prints it and ``--html`` draws it.

Per kind and field: how often the shadow's output differed from the live one, how often the
live color differed from itself (the floor), and whether the difference passes the floor
(``reported``); the largest divergences with their inputs; the would-be PnL beside the real
one on the same rounds, each with its 95 % interval, and their paired difference; the
latencies (the shadow's mirror round trips, the live color's own on the floor's mirrors, and
the live decisions' as reported); the points of the plots.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from supervisor.ab.stats import mean_sequence
from supervisor.config import ShadowSection
from supervisor.shadow.stats import above_floor, quantiles

if TYPE_CHECKING:
    from supervisor.shadow.session import Session

# The always-valid interval on would-be − real is narrowest near this many scored rounds.
N_STAR_ROUNDS = 1000


def build(s: Session, section: ShadowSection, *, running: bool) -> dict[str, Any]:
    t = s.tally
    ended = s.stopped_at if s.stopped_at is not None else time.time()
    kinds = []
    reported = []
    for kind in sorted(set(t.shadow.compared) | set(t.floor.compared)):
        n_s = t.shadow.compared.get(kind, 0)
        n_f = t.floor.compared.get(kind, 0)
        k_s_all = t.shadow.diverged.get(kind, {})
        k_f_all = t.floor.diverged.get(kind, {})
        rows: list[dict[str, Any]] = []
        for name in sorted(set(k_s_all) | set(k_f_all)):
            k_s, k_f = k_s_all.get(name, 0), k_f_all.get(name, 0)
            above = above_floor(k_s, n_s, k_f, n_f, z=section.floor_z)
            rate = k_s / n_s if n_s else None
            floor_rate = k_f / n_f if n_f else None
            rows.append(
                {
                    "field": name,
                    "diverged": k_s,
                    "rate": _r(rate),
                    "floor_diverged": k_f,
                    "floor_rate": _r(floor_rate),
                    "excess": _r((rate or 0.0) - (floor_rate or 0.0)) if n_s else None,
                    "reported": above,
                }
            )
            if above:
                reported.append(f"{kind}.{name}")
        rows.sort(key=lambda r: (not r["reported"], -float(r["rate"] or 0.0)))
        spec = s.comparators.of(kind)
        kinds.append(
            {
                "kind": kind,
                "compared": n_s,
                "floor_compared": n_f,
                "comparator": {
                    "fields": list(spec.fields),
                    "ignore": list(spec.ignore),
                    "relative": spec.relative,
                    "absolute": spec.absolute,
                },
                "fields": rows,
            }
        )
    if not s.floor:
        floor = "assumed zero: the live color does not answer mirrors"
    elif section.floor_fraction == 0:
        floor = "assumed zero: [shadow] floor_fraction = 0"
    else:
        floor = f"measured on {section.floor_fraction:.0%} of the live decisions"
    top = [item for _, _, item in sorted(t.top, key=lambda e: (-e[0], -e[1]))]
    return {
        "running": running,
        "color": s.color.value,
        "live": s.live.value,
        "version": s.version,
        "live_version": s.live_version,
        "by": s.by,
        "started_at": s.started_at,
        "stopped_at": s.stopped_at,
        "stop_reason": s.stop_reason,
        "seconds": round(ended - s.started_at, 3),
        "settings": {
            "floor_fraction": section.floor_fraction,
            "floor_z": section.floor_z,
            "queue_size": section.queue_size,
            "concurrency": section.concurrency,
            "timeout_s": section.timeout_s,
        },
        "comparator_problems": s.problems,
        "live_decisions": t.live_decisions,
        "mirrors": dict(t.mirrors),
        "floor_mirrors": dict(t.floor_mirrors),
        "floor": floor,
        "compared": t.compared_total,
        "diverged": t.diverged_total,
        "reported": reported,
        "kinds": kinds,
        "top": top,
        "executions": t.executions,
        "pnl": {
            "scoring": s.scoring,
            "rounds": t.gap.n,
            "unscored": t.unscored,
            "real": {"total": _r(t.real_total), **t.real.as_dict()},
            "would_be": {"total": _r(t.would_be_total), **t.would_be.as_dict()},
            # would-be minus real, per round: paired, so its interval is the narrow one
            "difference": {**t.gap.as_dict(), **_always_valid(s)},
            # the live trigger's detector run on the would-be PnL (null: no scoring)
            "detector": None
            if s.detector is None
            else {"trigger": "pnl_sigma", "rounds": s.detector.rounds, "fired": s.detector_fired},
        },
        "latency": {
            "shadow_mirror": quantiles(t.shadow_latency),
            "live_mirror": quantiles(t.floor_latency),
            "live_decision": quantiles(t.live_latency),
        },
        "series": {
            "pnl": t.pnl_series.snapshot(),  # [unix time, cumulative real, cumulative would-be]
            "divergences": t.divergence_series.snapshot(),  # [unix time, compared, diverged]
        },
    }


def _always_valid(s: Session) -> dict[str, Any]:
    """The paired difference's interval valid at every look (the A/B test's boundary), and
    what it says: the shadow would have made more, less, or it cannot tell yet."""
    gap = s.tally.gap
    ci = mean_sequence(gap.n, gap.mean, gap.std**2, alpha=0.05, n_star=N_STAR_ROUNDS)
    if ci is None:
        return {"always_valid_ci95": None, "verdict": "not_yet"}
    verdict = "shadow_better" if ci[0] > 0 else "shadow_worse" if ci[1] < 0 else "not_yet"
    return {"always_valid_ci95": [_r(ci[0]), _r(ci[1])], "verdict": verdict}


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 6)
