"""The canary's judge: the candidate against the concurrent stable color, over the same step.

Six metrics, each a sample per event of each color in the step (the latest ``max_samples``):

========== ===================================================== ==========================
metric     one sample                                            fails when the candidate is
========== ===================================================== ==========================
return     a round's PnL per unit staked (the outcome's PnL over  low
           the stake of its execution)
win_rate   a round: 1 won (PnL > 0), 0 not                       low
error_rate a decision: 0; an ``error``: 1                        high
latency    a decision's latency (ms)                             high (and its median at
                                                                 least ``latency_ratio`` ×
                                                                 stable's, and
                                                                 ``latency_min_ms`` more)
stake      a permit's amount, as asked, per unit of the color's    high or low
           allocation (``stakes = "as_is"``: the amount)
action_mix a decision's kind (dice, crash, ...)                  different
========== ===================================================== ==========================

Stakes are taken as the agent asks for them, before the fence: a healthy candidate whose share
wanders over its allocation is refused its larger stakes more often, and the stakes that get
through would look smaller than stable's. Where the daemon does not see the permits (direct
permits), the executions' amounts are used instead.

Stakes and the action mix are the metrics that move at once when a bug changes what the agent
does (it doubles its stakes, it stops playing one game), long before its PnL can tell: a
round's PnL is mostly noise, and a −1σ shift takes tens of rounds to see, a 1 % → 5 % house
edge thousands.

Each metric is compared as Kayenta does, with Mann-Whitney (the chi-square test for the action
mix; both in :mod:`supervisor.rollout.stats`), and its verdict is:

- ``no_data``: fewer than ``min_samples`` of either color. It never passes.
- ``high`` / ``low``: the difference is proven (p under ``alpha``) and large enough to matter
  (the effect, P(candidate > stable) − ½, or the total variation distance for the mix, at
  least ``min_effect``). It fails the step in the metric's bad direction, and passes in the
  other (a candidate that wins more is not held back; it is shown).
- ``inconclusive``: large enough to matter in the bad direction, not proven yet: hold and look
  again as the step goes on.
- ``pass``: anything else.

A step's verdict: ``fail`` when any metric fails; else ``hold`` when any has no data or is
inconclusive; else ``pass``. Within the step the same tests look again every ``look_s`` at
``alpha_running`` (much stricter: a repeated test's false alarms add up over its looks) with
at least ``min_running_samples`` of each: this is the sequential watch that aborts a bad
candidate long before the step's end (bench/canary_sim.py measures how long). Latency is
judged at the step's end only, as the latency trigger waits ``persist_s``: a color that was
standing by decides slowly for its first few rounds (its caches are cold), which a look at
ten samples would take for a slower version.
"""

from __future__ import annotations

from collections import Counter, OrderedDict, deque
from dataclasses import dataclass
from typing import Any, Final, Literal

from supervisor.config import CanaryJudgeSection, CanaryMetric, Color
from supervisor.rollout.stats import Comparison, chi_square, mann_whitney, median

MetricVerdict = Literal["pass", "high", "low", "no_data", "inconclusive"]
StepVerdict = Literal["pass", "fail", "hold"]
METRIC_VERDICTS: Final = ("pass", "high", "low", "no_data", "inconclusive")
# The direction that fails each metric ("either": both).
BAD: Final[dict[str, Literal["low", "high", "either"]]] = {
    "return": "low",
    "win_rate": "low",
    "error_rate": "high",
    "latency": "high",
    "stake": "either",
    "action_mix": "either",
}
# Decision ids remembered per color to find a round's stake (its execution) from its outcome.
_STAKES_BY_DECISION: Final = 10_000
# Decision kinds told apart in the mix; the rest are counted together as "(other)".
_MAX_KINDS: Final = 50
# A running look compares each color's latest samples, this many at most: it runs every
# look_s, and its cost grows with them (about 7 ms a metric at 2,000 each).
RUNNING_WINDOW: Final = 2000
# What a running look judges (see the module's docstring for latency).
RUNNING_METRICS: Final = frozenset({"return", "win_rate", "error_rate", "stake", "action_mix"})


@dataclass(frozen=True, slots=True)
class Row:
    """One metric's line in the judge's table."""

    metric: str
    stable: float | None  # the stable color's median (a rate for the binary metrics)
    candidate: float | None
    n_stable: int
    n_candidate: int
    effect: float
    p: float
    verdict: MetricVerdict
    fails: bool

    def as_dict(self) -> dict[str, Any]:
        def r(x: float | None) -> float | None:
            return None if x is None else round(x, 6)

        return {
            "metric": self.metric,
            "stable": r(self.stable),
            "candidate": r(self.candidate),
            "n_stable": self.n_stable,
            "n_candidate": self.n_candidate,
            "effect": round(self.effect, 4),
            "p": float(f"{self.p:.3g}"),
            "verdict": self.verdict,
        }


@dataclass(frozen=True, slots=True)
class Judgement:
    verdict: StepVerdict
    rows: tuple[Row, ...]

    @property
    def failed(self) -> tuple[Row, ...]:
        return tuple(r for r in self.rows if r.fails)

    def reason(self) -> str:
        """The failing metrics, with their numbers (the abort's reason)."""
        return "; ".join(
            f"{r.metric} {r.verdict} (candidate {_num(r.candidate)} vs stable "
            f"{_num(r.stable)}, effect {r.effect:+.2f}, p {r.p:.2g}, "
            f"n {r.n_candidate}/{r.n_stable})"
            for r in self.failed
        )


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.4g}"


class _Side:
    """One color's samples in the step."""

    def __init__(self, keep: int) -> None:
        self.returns: deque[float] = deque(maxlen=keep)
        self.wins: deque[float] = deque(maxlen=keep)
        self.errors: deque[float] = deque(maxlen=keep)
        self.latency: deque[float] = deque(maxlen=keep)
        self.stakes: deque[float] = deque(maxlen=keep)
        self.kinds: Counter[str] = Counter()
        self.rounds = 0
        self.last_stake: float | None = None
        self.stake_of: OrderedDict[str, float] = OrderedDict()


class Judge:
    """The samples of the current step, and the tests over them."""

    def __init__(self, config: CanaryJudgeSection, *, stakes_from_permits: bool = True) -> None:
        self.config = config
        self.min_running_samples = config.min_running_samples
        self.stakes_from_permits = stakes_from_permits
        self.metrics: tuple[CanaryMetric, ...] = tuple(config.metrics)
        self.sides = {c: _Side(config.max_samples) for c in Color}

    def new_step(self) -> None:
        """A step began: its samples only from now on."""
        self.sides = {c: _Side(self.config.max_samples) for c in Color}

    def rounds(self, color: Color) -> int:
        return self.sides[color].rounds

    # what the colors do ---------------------------------------------------------------------
    def decision(self, color: Color, kind: str, latency_ms: float) -> None:
        side = self.sides[color]
        side.latency.append(latency_ms)
        side.errors.append(0.0)
        if kind in side.kinds or len(side.kinds) < _MAX_KINDS:
            side.kinds[kind] += 1
        else:
            side.kinds["(other)"] += 1

    def error(self, color: Color) -> None:
        self.sides[color].errors.append(1.0)

    def asked(self, color: Color, amount: float, allocation: float) -> None:
        """A permit asked for ``amount`` at ``allocation`` (the color's share then)."""
        if self.stakes_from_permits:
            self._stake(color, amount, allocation)

    def execution(self, color: Color, decision_id: str, amount: float, allocation: float) -> None:
        """Money moved: ``amount`` at ``allocation`` (the color's share when it moved)."""
        side = self.sides[color]
        stake = abs(amount)
        side.last_stake = stake
        side.stake_of[decision_id] = stake
        if len(side.stake_of) > _STAKES_BY_DECISION:
            side.stake_of.popitem(last=False)
        if not self.stakes_from_permits:
            self._stake(color, amount, allocation)

    def _stake(self, color: Color, amount: float, allocation: float) -> None:
        stake = abs(amount)
        if self.config.stakes == "per_allocation":
            if allocation <= 0:
                return  # a color with no share has no stake to compare
            stake /= allocation
        self.sides[color].stakes.append(stake)

    def outcome(self, color: Color, pnl: float, decision_id: str | None) -> None:
        side = self.sides[color]
        side.rounds += 1
        side.wins.append(1.0 if pnl > 0 else 0.0)
        stake = side.stake_of.get(decision_id) if decision_id is not None else None
        if stake is None:
            stake = side.last_stake  # an outcome not tied to its execution: the latest stake
        if stake is not None and stake > 0:
            side.returns.append(pnl / stake)

    # the tests ------------------------------------------------------------------------------
    def judge(self, candidate: Color, *, running: bool = False) -> Judgement:
        """The table and the step's verdict; ``running``: a look within the step (stricter,
        with fewer samples needed; only a failure counts then)."""
        return self.prepare(candidate, running=running).run()

    def prepare(self, candidate: Color, *, running: bool = False) -> Prepared:
        """A copy of the samples to judge (cheap; on the event loop), whose :meth:`run` may go
        to a thread while new samples keep coming."""
        cfg = self.config
        window = RUNNING_WINDOW if running else cfg.max_samples
        return Prepared(
            tuple(m for m in self.metrics if m in RUNNING_METRICS) if running else self.metrics,
            _Copy(self.sides[candidate], window),
            _Copy(self.sides[candidate.other], window),
            alpha=cfg.alpha_running if running else cfg.alpha,
            least=self.min_running_samples if running else cfg.min_samples,
            min_effect=cfg.min_effect,
            latency_ratio=cfg.latency_ratio,
            latency_min_ms=cfg.latency_min_ms,
        )


class _Copy:
    """One color's samples, copied (the latest ``window`` of each)."""

    def __init__(self, side: _Side, window: int) -> None:
        def last(d: deque[float]) -> list[float]:
            return list(d)[-window:] if len(d) > window else list(d)

        self.series = {
            "return": last(side.returns),
            "win_rate": last(side.wins),
            "error_rate": last(side.errors),
            "latency": last(side.latency),
            "stake": last(side.stakes),
        }
        self.kinds = Counter(side.kinds)


class Prepared:
    """What :meth:`Judge.prepare` copied, and the tests over it."""

    def __init__(
        self,
        metrics: tuple[CanaryMetric, ...],
        cand: _Copy,
        stable: _Copy,
        *,
        alpha: float,
        least: int,
        min_effect: float,
        latency_ratio: float = 1.0,
        latency_min_ms: float = 0.0,
    ) -> None:
        self.metrics, self.cand, self.stable = metrics, cand, stable
        self.alpha, self.least, self.min_effect = alpha, least, min_effect
        self.latency_ratio, self.latency_min_ms = latency_ratio, latency_min_ms

    def run(self) -> Judgement:
        rows = tuple(self._row(m, self.cand, self.stable) for m in self.metrics)
        if any(r.fails for r in rows):
            verdict: StepVerdict = "fail"
        elif any(r.verdict in ("no_data", "inconclusive") for r in rows):
            verdict = "hold"
        else:
            verdict = "pass"
        return Judgement(verdict, rows)

    def _row(self, metric: CanaryMetric, cand: _Copy, stable: _Copy) -> Row:
        alpha, least = self.alpha, self.least
        if metric == "action_mix":
            n1, n2 = sum(cand.kinds.values()), sum(stable.kinds.values())
            top_c = cand.kinds.most_common(1)
            top_s = stable.kinds.most_common(1)
            # Shown: the share of the stable color's most common kind, in each.
            kind = top_s[0][0] if top_s else (top_c[0][0] if top_c else None)
            shown_c = cand.kinds[kind] / n1 if kind is not None and n1 else None
            shown_s = stable.kinds[kind] / n2 if kind is not None and n2 else None
            if min(n1, n2) < least:
                return Row(metric, shown_s, shown_c, n2, n1, 0.0, 1.0, "no_data", False)
            comparison = chi_square(cand.kinds, stable.kinds)
            return self._verdict(metric, shown_s, shown_c, n2, n1, comparison, alpha, "either")
        a, b = cand.series[metric], stable.series[metric]
        binary = metric in ("win_rate", "error_rate")
        shown_c = (sum(a) / len(a) if a else None) if binary else median(a)
        shown_s = (sum(b) / len(b) if b else None) if binary else median(b)
        if min(len(a), len(b)) < least:
            return Row(metric, shown_s, shown_c, len(b), len(a), 0.0, 1.0, "no_data", False)
        comparison = mann_whitney(a, b)
        return self._verdict(
            metric, shown_s, shown_c, len(b), len(a), comparison, alpha, BAD[metric]
        )

    def _verdict(
        self,
        metric: str,
        shown_s: float | None,
        shown_c: float | None,
        n2: int,
        n1: int,
        c: Comparison,
        alpha: float,
        bad: str,
    ) -> Row:
        big = abs(c.effect) >= self.min_effect
        if metric == "latency" and big and c.effect > 0:
            # Slower, but by how much: medians closer than the ratio and the floor are alike.
            big = (
                shown_c is not None
                and shown_s is not None
                and shown_c >= self.latency_ratio * shown_s
                and shown_c - shown_s >= self.latency_min_ms
            )
        direction: MetricVerdict = "high" if c.effect > 0 else "low"
        in_bad = bad == "either" or bad == direction
        if big and c.p < alpha:
            return Row(metric, shown_s, shown_c, n2, n1, c.effect, c.p, direction, in_bad)
        verdict: MetricVerdict = "inconclusive" if big and in_bad else "pass"
        return Row(metric, shown_s, shown_c, n2, n1, c.effect, c.p, verdict, False)
