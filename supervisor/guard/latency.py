"""latency: the candidate's median decision latency against the stable color's median.

Each side keeps its last ``window`` decision latencies twice: in a ring (which one leaves next)
and in a sorted list (the median is its middle). A decision costs one ``bisect`` to drop the
oldest and one ``insort`` to add the newest, O(window) memmove on a list of at most ``window``
floats: about a microsecond for the default 50, with no allocation beyond the new float.

Once both sides hold ``min_samples`` decisions, the candidate is *slow* while its median is over
``ratio`` × the stable median. Slow starts an episode: one ALERT at once, and one ROLLBACK when
the episode has lasted ``persist_s``. The episode ends (and a later one alerts again) when the
candidate's ratio falls below ``CLEAR_BELOW`` × ``ratio``: without that band a median that
hovers at the threshold would start a new episode, and a new alert, every few decisions.

The stable side is the baseline and outlives candidates: :meth:`Latency.reset_candidate` clears
only the candidate side. A side fed by a different color than before starts empty (after a
promotion the stable color is the other one, and its old numbers describe another version).
"""

from __future__ import annotations

import math
import time
from array import array
from bisect import bisect_left, insort
from typing import Any, Final, Literal

from supervisor.config import Color, LatencyTrigger
from supervisor.guard.evaluator import Context, Evaluator, Reset, Sender, Status, TriggerState
from supervisor.guard.verdict import Action, Severity, Verdict

TRIGGER: Final = "latency"
# An episode ends when the ratio falls below this fraction of the threshold (hysteresis).
CLEAR_BELOW: Final = 0.9
# A stable median of 0 ms (an agent that reports whole milliseconds) is judged as 1 µs, so the
# ratio stays a finite number that JSON, the log and Prometheus can carry.
FLOOR_MS: Final = 0.001


class LatencyState(TriggerState):
    trigger: str
    enabled: bool
    role: Literal["stable", "candidate"] | None
    threshold: float
    since: float | None
    for_s: float | None
    persist_s: float
    fired: int
    last_fired_ago_s: float | None
    stable_median_ms: float | None
    candidate_median_ms: float | None
    samples: int
    min_samples: int


class MedianWindow:
    """The last ``size`` values and their running median (fixed memory).

    >>> w = MedianWindow(3)
    >>> for x in (5.0, 1.0, 3.0, 10.0):
    ...     w.push(x)
    >>> w.median, len(w)
    (3.0, 3)
    """

    __slots__ = ("_i", "_ring", "_sorted", "size")

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("size must be at least 1")
        self.size = size
        self._ring = array("d", bytes(8 * size))
        self._sorted: list[float] = []
        self._i = 0

    def __len__(self) -> int:
        return len(self._sorted)

    def clear(self) -> None:
        self._sorted.clear()
        self._i = 0

    def push(self, x: float) -> None:
        s, i = self._sorted, self._i
        if len(s) == self.size:
            # The ring holds the exact float that went in, so bisect finds an equal one.
            del s[bisect_left(s, self._ring[i])]
        insort(s, x)
        self._ring[i] = x
        i += 1
        self._i = 0 if i == self.size else i

    @property
    def median(self) -> float:
        s = self._sorted
        n = len(s)
        if n == 0:
            return math.nan
        mid = n >> 1
        return s[mid] if n & 1 else (s[mid - 1] + s[mid]) * 0.5


class Latency:
    """The latency evaluator.

    ``decision`` for every decision of the stable color (role ``"stable"``) and of the acting
    candidate (role ``"candidate"``); ``tick`` on the housekeeping timer, so an episode that
    lasts is judged even while decisions are sparse; ``reset_candidate`` for each new candidate.

    >>> from supervisor.config import LatencyTrigger
    >>> guard = Latency(LatencyTrigger(min_samples=3, window=5, persist_s=300))
    >>> for t in range(3):
    ...     _ = guard.decision(Color.BLUE, 10.0, float(t), "stable")
    >>> [guard.decision(Color.GREEN, 48.0, 10.0 + t, "candidate") for t in range(3)][-1].message
    'candidate median 48.0 ms is 4.8× stable 10.0 ms (threshold 2×)'
    >>> guard.tick(311.9) is None, guard.tick(312.0).action
    (True, <Action.ROLLBACK: 'rollback'>)
    """

    def __init__(self, config: LatencyTrigger) -> None:
        self.config = config
        self._enabled = config.enabled
        self._ratio = config.ratio
        self._clear = config.ratio * CLEAR_BELOW
        self._persist_s = config.persist_s
        self._min = config.min_samples
        self.stable = MedianWindow(config.window)
        self.candidate = MedianWindow(config.window)
        self.stable_color: Color | None = None
        self.candidate_color: Color | None = None
        self.dropped = 0  # latencies that were not a finite number >= 0
        # Verdicts raised (alerts and rollbacks) per color, and when the last one was.
        self.fired = dict.fromkeys(Color, 0)
        self.last_fired: dict[Color, float] = {}
        self.reset_candidate()

    def reset_candidate(self) -> None:
        """A new candidate (or none): its window, its episode and its rollback start over."""
        self.candidate.clear()
        self.candidate_color = None
        self._since: float | None = None  # start of the current slow episode
        self._rolled_back = False  # this candidate has had its rollback verdict
        self.ratio: float | None = None  # candidate median / stable median, once judged

    # -- the hot path -----------------------------------------------------------------------

    def decision(self, color: Color, latency_ms: float, now: float, role: str) -> Verdict | None:
        """One decision's latency. ``role`` is ``"stable"``, ``"candidate"`` (the candidate in
        charge) or anything else (ignored: a candidate on standby, a shadow, a canary)."""
        if not self._enabled:
            return None
        if role == "candidate":
            side = self.candidate
            if color is not self.candidate_color:
                self.reset_candidate()
                self.candidate_color = color
        elif role == "stable":
            side = self.stable
            if color is not self.stable_color:
                side.clear()
                self.stable_color = color
                self._since = None
        else:
            return None
        if not latency_ms >= 0.0 or latency_ms == math.inf:  # NaN fails the first test
            self.dropped += 1
            return None
        side.push(latency_ms)
        # The sorted lists' len, not the windows' (a Python call each, on every decision).
        if len(self.candidate._sorted) < self._min or len(self.stable._sorted) < self._min:
            return None
        return self._judge(now)

    def tick(self, now: float) -> Verdict | None:
        """On the housekeeping timer: the rollback of an episode that has lasted long enough."""
        since = self._since
        if since is None or self._rolled_back or now - since < self._persist_s:
            return None
        return self._rollback(now, since)

    def _judge(self, now: float) -> Verdict | None:
        stable_ms = self.stable.median
        ratio = self.candidate.median / (stable_ms if stable_ms > FLOOR_MS else FLOOR_MS)
        self.ratio = ratio
        since = self._since
        if since is None:
            if ratio <= self._ratio:
                return None
            self._since = now
            if self._rolled_back:
                return None  # this candidate has had its rollback: no second round of alerts
            return self._verdict(Action.ALERT, now, "")
        if ratio < self._clear:
            self._since = None
            return None
        if not self._rolled_back and now - since >= self._persist_s:
            return self._rollback(now, since)
        return None

    # -- verdicts -----------------------------------------------------------------------------

    def _rollback(self, now: float, since: float) -> Verdict:
        self._rolled_back = True
        return self._verdict(Action.ROLLBACK, now, f" for {now - since:.0f} s")

    def _verdict(self, action: Action, now: float, lasted: str) -> Verdict:
        color = self.candidate_color
        assert color is not None  # only judged once the candidate side has samples
        self.fired[color] += 1
        self.last_fired[color] = now
        stable_ms = self.stable.median
        cand_ms = self.candidate.median
        ratio = self.ratio if self.ratio is not None else math.nan
        return Verdict(
            trigger=TRIGGER,
            severity=Severity.MEDIUM,
            action=action,
            color=color,
            message=(
                f"candidate median {cand_ms:.1f} ms is {ratio:.1f}× stable {stable_ms:.1f} ms "
                f"(threshold {self._ratio:g}×){lasted}"
            ),
            value=round(ratio, 4),
            threshold=self._ratio,
            window=float(len(self.candidate)),
            baseline=stable_ms,
        )

    # -- reporting ----------------------------------------------------------------------------

    def state(self, color: Color, now: float | None = None) -> LatencyState:
        """What ``agentsup triggers`` shows for ``color``. Times are on the clock of ``now``;
        with ``now`` given, ``for_s`` and ``last_fired_ago_s`` say how long ago."""
        role: Literal["stable", "candidate"] | None
        if color is self.candidate_color:
            role, side = "candidate", self.candidate
        elif color is self.stable_color:
            role, side = "stable", self.stable
        else:
            role, side = None, None
        judged = role == "candidate"
        state: Status
        if not judged:
            state = "ok"
        elif self._rolled_back:
            state = "fired"
        elif self._since is not None:
            state = "alert"
        else:
            state = "ok"
        since = self._since if judged else None
        last = self.last_fired.get(color)
        stable_n = len(self.stable)
        return {
            "trigger": TRIGGER,
            "enabled": self._enabled,
            "role": role,
            "state": state,
            "value": self.ratio if judged else None,
            "threshold": self._ratio,
            "since": since,
            "for_s": None if since is None or now is None else round(now - since, 3),
            "persist_s": self._persist_s,
            "fired": self.fired[color],
            "last_fired": last,
            "last_fired_ago_s": None if last is None or now is None else round(now - last, 3),
            "stable_median_ms": self.stable.median if stable_n else None,
            "candidate_median_ms": self.candidate.median if len(self.candidate) else None,
            "samples": len(side) if side is not None else 0,
            "min_samples": self._min,
        }


class LatencyEvaluator(Evaluator):
    """The latency trigger on the pipeline: each ``decision``'s latency into :class:`Latency`
    with how the rollout judges its color; the tick rolls back an episode that lasts."""

    name = TRIGGER
    severity = Severity.MEDIUM
    listens = ("decision",)

    def __init__(self, ctx: Context) -> None:
        config = ctx.triggers.latency
        self.judge = Latency(config)
        self.enabled = config.enabled
        self.threshold: float | None = config.ratio
        # Bound once: this runs for every decision.
        self._decision = self.judge.decision
        self._judged = ctx.roles.judged

    def on_event(self, child: Sender, msg: dict[str, Any]) -> Verdict | None:
        color = child.color
        return self._decision(color, msg["latency_ms"], time.monotonic(), self._judged(color))

    def tick(self, now: float) -> Verdict | None:
        return self.judge.tick(now)

    def reset(self, reset: Reset) -> None:
        self.judge.reset_candidate()  # the stable side outlives candidates (and follows color)

    def state(self, color: Color, now: float) -> LatencyState:
        return self.judge.state(color, now)
