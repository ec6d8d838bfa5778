"""pnl_sigma: the candidate's PnL per round, judged against the stable color's baseline.

The baseline is the stable color's latest rounds (a running mean and standard deviation over a
ring of ``baseline_rounds``), or the fixed ``baseline_mean``/``baseline_std`` of the config while
the stable color has fewer than ``min_baseline`` rounds. Each candidate round is judged by one of
two detectors:

``seed``
    The article's ``RollbackGuard.check`` as written: after at least ``window`` rounds, the
    mean of the last ``window`` rounds is more than ``sigma`` *per-round* deviations from the
    baseline (not standard errors: the mean of ten rounds must move three per-round σ).
``robust_cusum`` (the default)
    A two-sided CUSUM on rounds standardised by the baseline and clipped to ±``cusum_clip``:
    ``down = max(0, down - z - k)``, ``up = max(0, up + z - k)``, fire when either passes ``h``.

Why the robust CUSUM, with the numbers of ``bench/guard_sim.py`` (default arguments: each run
learns its baseline from 1,000 stable rounds of the same distribution, then judges up to 2,000
candidate rounds; false rollbacks per 100,000 healthy rounds):

=============================  =========  ===========  ============
                               seed rule  plain CUSUM  robust_cusum
=============================  =========  ===========  ============
false, normal rounds           0.00       0.15         0.10
false, t(3) rounds             2.88       35.3         0.05
false, casino 2.0x, 1 % edge   0.00       0.05         0.00
false, 300 stable rounds only  0.00       0.70         0.20
-1σ, median (p95) rounds       never      23 (43)      26 (46)
-4σ, median (p95) rounds       10 (10)    4 (5)        6 (6)
=============================  =========  ===========  ============

- The seed's rule never sees -1σ (the mean of ten rounds would have to move 3σ, a 9.5
  standard-error event), and heavy tails break it all the same: one t(3) round can carry the
  mean of ten past 3σ.
- A plain CUSUM (k=0.5, h=12) has the power but one heavy-tailed round can carry it most of
  the way to ``h``: 35 false rollbacks per 100,000 t(3) rounds.
- Clipping each standardised round at 3σ bounds what one round can add (at most
  ``clip - k`` = 2.5, so nothing fires before round 6) and barely costs power against a
  shifted mean, whose rounds mostly fall inside the clip. ``h`` goes from 12 to 13 to keep the
  false rate at 0.2 even when the baseline has only ``min_baseline`` = 300 rounds.

Two-sided, because a candidate whose PnL is suspiciously *better* than stable by a σ per round
is as likely a bug as a windfall: it stopped paying fees, books a position at the wrong price,
or reports PnL it does not have. Money that is not accounted for is the failure this daemon
exists to stop, and a real improvement can be promoted by an operator. The second side costs
a factor of two in false alarms, which ``h`` already pays for.

What neither detector catches quickly, and the simulation says so: shifts well under k (0.25σ,
a casino edge grown from 1 % to 5 %, which is -0.04σ per round) and a variance that doubles
with the mean unchanged. Those are for slower statistics over thousands of rounds.

Per event the work is a few float operations on arrays preallocated at construction (about
1 µs per candidate round): no list grows, and memory stays what it was at construction.
"""

from __future__ import annotations

import math
from array import array
from typing import Any, Final, Literal, Protocol

from supervisor.config import Color, PnlSigmaTrigger
from supervisor.guard.evaluator import Context, Evaluator, Reset, Sender, TriggerState
from supervisor.guard.verdict import Action, Severity, Verdict

TRIGGER: Final = "pnl_sigma"
OK_TRIGGER: Final = "pnl_ok"
# A healthy candidate is worth a log line now and then, not on every round.
OK_EVERY: Final = 100
OK_BELOW_SIGMA: Final = 1.0


class PnlSigmaState(TriggerState):
    trigger: str
    enabled: bool
    detector: str
    role: Literal["stable", "candidate"] | None
    threshold: float
    rounds: int
    fired: bool
    deviation_sigma: float | None
    baseline_source: str
    baseline_mean: float | None
    baseline_std: float | None
    baseline_rounds: int


class BaselineStats:
    """Running mean and standard deviation of the last ``capacity`` rounds (fixed memory).

    Welford's update while the ring fills, then a sliding update that swaps the oldest round for
    the newest. Each time the ring wraps, both sums are recomputed from the buffer, so rounding
    error cannot build up over millions of rounds (O(capacity) once per ``capacity`` rounds).
    """

    __slots__ = ("_buf", "_i", "_m2", "capacity", "count", "mean")

    def __init__(self, capacity: int) -> None:
        if capacity < 2:
            raise ValueError("capacity must be at least 2")
        self.capacity = capacity
        self._buf = array("d", bytes(8 * capacity))
        self.clear()

    def clear(self) -> None:
        self.count = 0
        self.mean = 0.0
        self._m2 = 0.0
        self._i = 0

    def add(self, x: float) -> None:
        i = self._i
        if self.count < self.capacity:
            self.count += 1
            d = x - self.mean
            self.mean += d / self.count
            self._m2 += d * (x - self.mean)
        else:
            old = self._buf[i]
            mean = self.mean + (x - old) / self.capacity
            self._m2 += (x - old) * (x - mean + old - self.mean)
            self.mean = mean
        self._buf[i] = x
        i += 1
        if i == self.capacity:
            i = 0
            self._recompute()
        self._i = i

    def _recompute(self) -> None:
        buf = self._buf
        mean = math.fsum(buf) / self.capacity
        self.mean = mean
        self._m2 = math.fsum((v - mean) * (v - mean) for v in buf)

    @property
    def std(self) -> float:
        """Sample standard deviation (0.0 with fewer than two rounds)."""
        if self.count < 2 or self._m2 <= 0.0:
            return 0.0
        return math.sqrt(self._m2 / (self.count - 1))


class RecentWindow:
    """The last ``size`` rounds and their sum (fixed memory)."""

    __slots__ = ("_buf", "_i", "count", "size", "total")

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("size must be at least 1")
        self.size = size
        self._buf = array("d", bytes(8 * size))
        self.clear()

    def clear(self) -> None:
        self.count = 0
        self.total = 0.0
        self._i = 0
        for j in range(self.size):
            self._buf[j] = 0.0

    def push(self, x: float) -> None:
        buf, i = self._buf, self._i
        self.total += x - buf[i]
        buf[i] = x
        i += 1
        if i == self.size:
            # Exact again once per lap: the running sum would otherwise drift in the last bits.
            i = 0
            self.total = math.fsum(buf)
        self._i = i
        if self.count < self.size:
            self.count += 1

    @property
    def full(self) -> bool:
        return self.count == self.size

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0


class Detector(Protocol):
    """A sequential test fed one candidate round at a time with the baseline of the moment."""

    name: str

    @property
    def value(self) -> float: ...
    @property
    def threshold(self) -> float: ...

    def update(self, pnl: float, mean: float, std: float) -> bool:
        """Take one round; True when the candidate departs from the baseline."""
        ...

    def describe(self, mean: float, std: float) -> tuple[str, float]:
        """After a True: the message of the rollback and the rounds it is based on."""
        ...

    def reset(self) -> None: ...


class SeedRule:
    """The seed article's rule, as written in its ``RollbackGuard.check``.

    >>> rule = SeedRule(window=10, sigma=3.0)
    >>> any(rule.update(-3.5, mean=0.0, std=1.0) for _ in range(9))
    False
    >>> rule.update(-3.5, mean=0.0, std=1.0)
    True
    """

    name = "seed"
    __slots__ = ("_recent", "rounds", "sigma", "value", "window")

    def __init__(self, window: int = 10, sigma: float = 3.0) -> None:
        self.window = window
        self.sigma = sigma
        self._recent = RecentWindow(window)
        self.reset()

    @property
    def threshold(self) -> float:
        return self.sigma

    def reset(self) -> None:
        self._recent.clear()
        self.rounds = 0
        self.value = 0.0

    def update(self, pnl: float, mean: float, std: float) -> bool:
        self._recent.push(pnl)
        self.rounds += 1
        if self.rounds < self.window:
            return False  # the seed's "need minimum samples"
        self.value = abs(self._recent.total / self.window - mean) / std
        return self.value > self.sigma

    def describe(self, mean: float, std: float) -> tuple[str, float]:
        recent = self._recent.total / self.window
        side = "below" if recent < mean else "above"
        return (
            f"candidate mean {recent:+.4g}/round is {self.value:.1f}σ {side} baseline "
            f"{mean:+.4g} (σ {std:.4g}) over {self.window} rounds (seed rule)",
            float(self.window),
        )


class RobustCusum:
    """Two-sided CUSUM of rounds in baseline σ, each clipped to ±``clip`` before it counts.

    >>> cusum = RobustCusum(k=0.5, h=13.0, clip=3.0)
    >>> [cusum.update(-4.0, mean=0.0, std=1.0) for _ in range(6)][-2:]
    [False, True]
    """

    name = "robust_cusum"
    __slots__ = (
        "_down_n",
        "_down_sum",
        "_up_n",
        "_up_sum",
        "clip",
        "down",
        "h",
        "k",
        "rounds",
        "up",
    )

    def __init__(self, k: float = 0.5, h: float = 13.0, clip: float = 3.0) -> None:
        if clip <= k:
            raise ValueError("clip must be larger than k, or nothing ever fires")
        self.k = k
        self.h = h
        self.clip = clip
        self.reset()

    @property
    def threshold(self) -> float:
        return self.h

    @property
    def value(self) -> float:
        return self.up if self.up > self.down else self.down

    def reset(self) -> None:
        self.rounds = 0
        self.up = self.down = 0.0
        # Length and PnL of the run of rounds behind each side's current sum, for the message.
        self._up_n = self._down_n = 0
        self._up_sum = self._down_sum = 0.0

    def update(self, pnl: float, mean: float, std: float) -> bool:
        self.rounds += 1
        z = (pnl - mean) / std
        # The clip is the robustness: one t(3) round at 8σ counts as 3σ, not as 8.
        if z > self.clip:
            z = self.clip
        elif z < -self.clip:
            z = -self.clip
        up = self.up + z - self.k
        if up > 0.0:
            self.up = up
            self._up_n += 1
            self._up_sum += pnl
        else:
            self.up = 0.0
            self._up_n = 0
            self._up_sum = 0.0
        down = self.down - z - self.k
        if down > 0.0:
            self.down = down
            self._down_n += 1
            self._down_sum += pnl
        else:
            self.down = 0.0
            self._down_n = 0
            self._down_sum = 0.0
        return up > self.h or down > self.h

    def describe(self, mean: float, std: float) -> tuple[str, float]:
        if self.down >= self.up:
            side, n, total, stat = "below", self._down_n, self._down_sum, self.down
        else:
            side, n, total, stat = "above", self._up_n, self._up_sum, self.up
        return (
            f"candidate mean {total / n:+.4g}/round over the last {n} rounds is {side} baseline "
            f"{mean:+.4g} (σ {std:.4g}): CUSUM {stat:.1f} > {self.h:g} "
            f"(robust_cusum k={self.k:g} clip={self.clip:g})",
            float(n),
        )


def make_detector(config: PnlSigmaTrigger) -> SeedRule | RobustCusum:
    """The detector ``config.detector`` names, with its settings."""
    if config.detector == "seed":
        return SeedRule(config.window, config.sigma)
    return RobustCusum(config.cusum_k, config.cusum_h, config.cusum_clip)


class PnlSigma:
    """The pnl_sigma evaluator: stable rounds make the baseline, candidate rounds are judged.

    >>> from supervisor.config import PnlSigmaTrigger
    >>> guard = PnlSigma(PnlSigmaTrigger(baseline_mean=0.0, baseline_std=1.0))
    >>> verdicts = [guard.candidate_round(Color.GREEN, -4.0) for _ in range(6)]
    >>> verdicts[-1].action, verdicts[-1].trigger
    (<Action.ROLLBACK: 'rollback'>, 'pnl_sigma')
    """

    candidate: Color | None  # the color judged since the last reset, once it has had a round

    def __init__(self, config: PnlSigmaTrigger) -> None:
        self.config = config
        self.detector: Detector = make_detector(config)
        self.baseline = BaselineStats(config.baseline_rounds)
        # The candidate's last `window` rounds, for the healthy (pnl_ok) check and the state.
        self._recent = RecentWindow(config.window)
        self._enabled = config.enabled
        self._min_baseline = config.min_baseline
        self._fixed_mean = config.baseline_mean
        self._fixed_std = config.baseline_std
        self.reset_candidate()

    # -- the stable color -------------------------------------------------------------------

    def baseline_round(self, pnl: float) -> None:
        """One round of the stable color (bad numbers are dropped: they would poison the sums)."""
        if math.isfinite(pnl):
            self.baseline.add(pnl)

    def reset_baseline(self) -> None:
        """Forget the stable color's rounds (after a promotion the stable color is another)."""
        self.baseline.clear()

    def _baseline_source(self) -> str:
        b = self.baseline
        if b.count >= self._min_baseline and b.std > 0.0:
            return "stable"
        if self._fixed_mean is not None:
            return "config"
        return "none"

    # -- the candidate ----------------------------------------------------------------------

    def reset_candidate(self) -> None:
        """A new candidate starts fresh: no rounds, no evidence, not fired."""
        self.detector.reset()
        self._recent.clear()
        self.candidate = None
        self.rounds = 0
        self.fired = False
        self._last_ok = 0

    def candidate_round(self, color: Color, pnl: float) -> Verdict | None:
        """Judge one round of the candidate: a rollback, now and then a healthy line, or None."""
        self.candidate = color
        self.rounds += 1
        if self.fired or not self._enabled or not math.isfinite(pnl):
            return None
        b = self.baseline
        if b.count >= self._min_baseline and (std := b.std) > 0.0:
            mean = b.mean
        elif self._fixed_mean is not None and self._fixed_std is not None:
            mean, std = self._fixed_mean, self._fixed_std
        else:
            return None  # nothing to judge against yet: the round is only counted
        self._recent.push(pnl)
        if self.detector.update(pnl, mean, std):
            self.fired = True
            message, window = self.detector.describe(mean, std)
            return Verdict(
                trigger=TRIGGER,
                severity=Severity.HIGH,
                action=Action.ROLLBACK,
                color=color,
                message=message,
                value=self.detector.value,
                threshold=self.detector.threshold,
                window=window,
                baseline=mean,
            )
        if self.rounds - self._last_ok >= OK_EVERY and self._recent.full:
            return self._healthy(color, mean, std)
        return None

    def _healthy(self, color: Color, mean: float, std: float) -> Verdict | None:
        recent = self._recent.mean
        deviation = (recent - mean) / std
        if abs(deviation) >= OK_BELOW_SIGMA:
            return None
        self._last_ok = self.rounds
        return Verdict(
            trigger=OK_TRIGGER,
            severity=Severity.LOW,
            action=Action.LOG,
            color=color,
            message=(
                f"candidate mean {recent:+.4g}/round is {abs(deviation):.2f}σ from baseline "
                f"{mean:+.4g} (σ {std:.4g}) over {self._recent.size} rounds"
            ),
            value=abs(deviation),
            threshold=OK_BELOW_SIGMA,
            window=float(self._recent.size),
            baseline=mean,
        )

    # -- reporting ----------------------------------------------------------------------------

    def state(self, color: Color) -> PnlSigmaState:
        """What ``agentsup triggers`` shows for ``color``: the numbers behind the judgement.
        ``last_fired`` is not known here (the pipeline has it from the responder)."""
        source = self._baseline_source()
        if source == "stable":
            mean: float | None = self.baseline.mean
            std: float | None = self.baseline.std
        elif source == "config":
            mean, std = self._fixed_mean, self._fixed_std
        else:
            mean = std = None
        judged = color is self.candidate
        fired = self.fired if judged else False
        return {
            "trigger": TRIGGER,
            "enabled": self._enabled,
            "detector": self.detector.name,
            "role": "candidate" if judged else ("stable" if self.candidate else None),
            "value": self.detector.value if judged else None,
            "threshold": self.detector.threshold,
            "rounds": self.rounds if judged else 0,
            "fired": fired,
            "deviation_sigma": (
                (self._recent.mean - mean) / std
                if judged and self._recent.full and mean is not None and std
                else None
            ),
            "baseline_source": source,
            "baseline_mean": mean,
            "baseline_std": std,
            "baseline_rounds": self.baseline.count,
            "last_fired": None,
            "state": "fired" if fired else "ok",
        }


class PnlSigmaEvaluator(Evaluator):
    """The pnl_sigma trigger on the pipeline: each ``outcome`` of the stable color adds to the
    baseline, each of the candidate on trial is judged (and now and then said healthy)."""

    name = TRIGGER
    severity = Severity.HIGH
    listens = ("outcome",)
    emits = ((TRIGGER, Severity.HIGH), (OK_TRIGGER, Severity.LOW))

    def __init__(self, ctx: Context) -> None:
        config = ctx.triggers.pnl_sigma
        self.judge = PnlSigma(config)
        self.enabled = config.enabled
        self.threshold: float | None = self.judge.detector.threshold
        # Bound once: this runs for every round.
        self._judged = ctx.roles.judged
        self._baseline_round = self.judge.baseline_round
        self._candidate_round = self.judge.candidate_round

    def on_event(self, child: Sender, msg: dict[str, Any]) -> Verdict | None:
        color = child.color
        judged = self._judged(color)
        if judged == "stable":
            self._baseline_round(float(msg["pnl"]))
        elif judged == "candidate":
            return self._candidate_round(color, float(msg["pnl"]))
        return None

    def reset(self, reset: Reset) -> None:
        if reset.kind == "stable":
            self.judge.reset_baseline()  # the baseline is another color's rounds from now on
        self.judge.reset_candidate()

    def state(self, color: Color, now: float) -> PnlSigmaState:
        return self.judge.state(color)
