"""escrow_gap: a watched escrow that the acting color has not checked for longer than its gap.

Agents report ``escrow`` events: ``watch`` (start monitoring, with ``due_at`` and an own
``gap_s`` when they have one), ``check`` (looked at it just now), ``unwatch`` (done with it).
Only the acting color's checks count: the standby may look at escrows all it likes, the one in
charge is the one that must. Likewise only the acting color opens an escrow (until the first
``tick`` says who acts, any color does); a standby's watch of one already open counts as its
check and may update its terms. Each escrow keeps the time of the last check *per color*, so a
check costs a dict lookup and a float store, and judging a color needs no replay.

After a flip the new acting color gets a full gap of grace for every escrow (its clock starts at
the flip, not at its last check as standby); ``acting_changed`` moves one number, not every
escrow. An escrow overdue for the acting color fires once per acting period: one verdict lists
the escrows found overdue at that tick, and the alert lists them all for the audit.

``tick`` runs on the housekeeping timer. It keeps a lower bound on the earliest moment anything
can be overdue and does nothing before it, so a tick is O(1) while all is well; a scan over the
escrows (at most ``max_escrows``) happens when that moment comes.
"""

from __future__ import annotations

import math
import time
from typing import Any, Final, Literal

from supervisor.config import Color, EscrowGapTrigger
from supervisor.guard.evaluator import Context, Evaluator, Reset, Sender, TriggerState
from supervisor.guard.verdict import Action, Severity, Verdict

TRIGGER: Final = "escrow_gap"
# Escrow ids longer than this are refused (counted): ids are kept and shown in the audit list.
MAX_ID_CHARS: Final = 256
# Escrows named in a verdict's message; the alert's list (``overdue``) has them all.
SHOWN_IDS: Final = 10


class EscrowGapState(TriggerState):
    trigger: str
    enabled: bool
    role: Literal["acting"] | None
    threshold: float
    fired: int
    last_fired_ago_s: float | None
    escrows: int
    max_escrows: int
    refused: int
    ignored: int


class _Escrow:
    """One watched escrow: its gap, its due time, and when each color last checked it."""

    __slots__ = ("blue", "due_at", "fired", "gap_s", "green")

    def __init__(self, gap_s: float, due_at: float | None, now: float) -> None:
        self.gap_s = gap_s
        self.due_at = due_at
        # A new escrow is as good as checked by both: the gap runs from when it was watched.
        self.blue = now
        self.green = now
        self.fired = -1  # the acting period in which it last fired

    def checked(self, color: Color) -> float:
        return self.blue if color is Color.BLUE else self.green


class EscrowGap:
    """The escrow_gap evaluator.

    >>> from supervisor.config import EscrowGapTrigger
    >>> guard = EscrowGap(EscrowGapTrigger(gap_s=60))
    >>> guard.event(Color.BLUE, "esc-1", "watch", due_at=None, gap_s=None, now=0.0)
    >>> guard.tick(59.0, Color.BLUE) is None
    True
    >>> guard.tick(61.0, Color.BLUE).message
    'escrow esc-1 unchecked by blue for 61 s (gap 60 s): audit esc-1'
    """

    def __init__(self, config: EscrowGapTrigger) -> None:
        self.config = config
        self._enabled = config.enabled
        self._gap = config.gap_s
        self._cap = config.max_escrows
        self._escrows: dict[str, _Escrow] = {}
        self.acting: Color | None = None
        self._period = 0  # acting periods so far: an escrow fires at most once in each
        self._grace_from = -math.inf  # the new acting color's clocks start here
        self._next_due = math.inf  # nothing can be overdue before this (a lower bound)
        self.refused = 0  # watches refused: over max_escrows, or an id too long
        self.ignored = 0  # new escrows watched by the standby (not the acting color's to check)
        self.fired = dict.fromkeys(Color, 0)
        self.last_fired: dict[Color, float] = {}
        self.worst_gap_s: float | None = None  # at the last scan, for the acting color

    # -- the hot path -----------------------------------------------------------------------

    def event(
        self,
        color: Color,
        escrow_id: str,
        op: str,
        due_at: float | None,
        gap_s: float | None,
        now: float,
    ) -> None:
        """An ``escrow`` event of ``color``: op ``watch``, ``check`` or ``unwatch``."""
        if not self._enabled:
            return
        escrows = self._escrows
        e = escrows.get(escrow_id)
        if op == "check":
            if e is not None:
                if color is Color.BLUE:
                    e.blue = now
                else:
                    e.green = now
                if self.worst_gap_s is not None and color is self.acting:
                    self._next_due = -math.inf  # it may be the overdue one: rescan at the tick
            return
        if op == "unwatch":
            if e is not None:
                del escrows[escrow_id]
                if self.worst_gap_s is not None:
                    self._next_due = -math.inf  # it may be the overdue one: rescan at the tick
            return
        if op != "watch":
            return
        # The escrow's own gap, when it gives a usable one.
        gap = gap_s if gap_s is not None and 0.0 < gap_s < math.inf else None
        if e is None:
            if self.acting is not None and color is not self.acting:
                # Only the color in charge opens escrows; a standby that (re)starts and watches
                # its stale list would otherwise bring back escrows released long ago, which
                # the acting color rightly never checks: a false rollback.
                self.ignored += 1
                return
            if len(escrows) >= self._cap or len(escrow_id) > MAX_ID_CHARS:
                self.refused += 1
                return
            escrows[escrow_id] = e = _Escrow(self._gap if gap is None else gap, due_at, now)
        else:
            # A watch again: new terms where it gives them, and a check by the color that sent it.
            if gap is not None:
                e.gap_s = gap
            if due_at is not None:
                e.due_at = due_at
            if color is Color.BLUE:
                e.blue = now
            else:
                e.green = now
        # A gap may have shrunk: the earliest this escrow can be overdue for either color.
        due = (e.blue if e.blue < e.green else e.green) + e.gap_s
        if due < self._next_due:
            self._next_due = due

    def paused(self, seconds: float, now: float) -> None:
        """The supervisor itself stood still for ``seconds`` until ``now``: every clock moves on
        by as much (none past ``now``), so that its own pause is never an agent's gap. O(n),
        and only after a stall."""
        for e in self._escrows.values():
            e.blue = min(e.blue + seconds, now)
            e.green = min(e.green + seconds, now)
        self._grace_from = min(self._grace_from + seconds, now)
        self._next_due = -math.inf  # judge afresh at the next tick

    def acting_changed(self, now: float, acting: Color | None = None) -> None:
        """Who acts changed (to ``acting``, when given): every escrow's clock starts again for
        the new acting color, and an escrow that fired for the old one may fire again."""
        if acting is not None:
            self.acting = acting
        self._period += 1
        self._grace_from = now
        self._next_due = -math.inf  # judge afresh at the next tick

    def tick(self, now: float, acting: Color | None) -> Verdict | None:
        """On the housekeeping timer, with the color acting now (None: nobody, e.g. Redis is
        down: nothing is judged). A change of ``acting`` since the last tick is taken as an
        ``acting_changed`` at ``now`` if the daemon has not said so already."""
        if acting is None or not self._enabled:
            return None
        if acting is not self.acting:
            if self.acting is not None:
                self.acting_changed(now)
            self.acting = acting
        if now < self._next_due:
            return None
        return self._scan(now, acting)

    def _scan(self, now: float, acting: Color) -> Verdict | None:
        grace = self._grace_from
        period = self._period
        next_due = math.inf
        late: list[tuple[str, _Escrow, float]] = []
        worst: float | None = None
        for escrow_id, e in self._escrows.items():
            last = e.blue if acting is Color.BLUE else e.green
            if last < grace:
                last = grace
            unchecked = now - last
            if unchecked > e.gap_s:
                if worst is None or unchecked > worst:
                    worst = unchecked
                if e.fired != period:
                    e.fired = period
                    late.append((escrow_id, e, unchecked))
            else:
                due = last + e.gap_s
                if due < next_due:
                    next_due = due
        self._next_due = next_due
        self.worst_gap_s = worst
        if not late:
            return None
        return self._verdict(acting, now, late)

    def _verdict(
        self, acting: Color, now: float, late: list[tuple[str, _Escrow, float]]
    ) -> Verdict:
        self.fired[acting] += 1
        self.last_fired[acting] = now
        late.sort(key=lambda item: -item[2])
        worst_id, worst, worst_s = late[0]
        shown = [_describe(escrow_id, e) for escrow_id, e, _ in late[:SHOWN_IDS]]
        more = f" and {len(late) - SHOWN_IDS} more" if len(late) > SHOWN_IDS else ""
        head = (
            f"escrow {worst_id} unchecked by {acting.value} for {worst_s:.0f} s "
            f"(gap {worst.gap_s:g} s)"
            if len(late) == 1
            else f"{len(late)} escrows unchecked by {acting.value}, the worst {worst_id} for "
            f"{worst_s:.0f} s (gap {worst.gap_s:g} s)"
        )
        return Verdict(
            trigger=TRIGGER,
            severity=Severity.MEDIUM,
            action=Action.ROLLBACK,
            color=acting,
            message=f"{head}: audit {', '.join(shown)}{more}",
            value=round(worst_s, 3),
            threshold=worst.gap_s,
            window=float(len(late)),
        )

    # -- reporting ----------------------------------------------------------------------------

    def overdue(self, now: float, limit: int = 1000) -> list[dict[str, str | float | None]]:
        """The escrows the acting color has let go unchecked past their gap, worst first, for
        the alert's audit list: id, due_at, unchecked_s, gap_s."""
        acting = self.acting
        if acting is None:
            return []
        grace = self._grace_from
        late: list[tuple[float, str, _Escrow]] = []
        for escrow_id, e in self._escrows.items():
            unchecked = now - max(e.checked(acting), grace)
            if unchecked > e.gap_s:
                late.append((unchecked, escrow_id, e))
        late.sort(key=lambda item: -item[0])
        return [
            {"id": escrow_id, "due_at": e.due_at, "unchecked_s": round(s, 3), "gap_s": e.gap_s}
            for s, escrow_id, e in late[:limit]
        ]

    def due_times(self) -> list[tuple[str, float]]:
        """Every watched escrow that has a due time (its auto-release): id, due_at. For the
        deploy gates (supervisor/gates): no deploy within 30 minutes of one."""
        return [(i, e.due_at) for i, e in self._escrows.items() if e.due_at is not None]

    def __len__(self) -> int:
        return len(self._escrows)

    def state(self, color: Color, now: float | None = None) -> EscrowGapState:
        """What ``agentsup triggers`` shows for ``color`` (times on the clock of ``now``).
        ``value`` is the longest the acting color has left an escrow overdue, at the last scan."""
        acting = color is self.acting
        last = self.last_fired.get(color)
        worst = self.worst_gap_s if acting else None
        return {
            "trigger": TRIGGER,
            "enabled": self._enabled,
            "role": "acting" if acting else None,
            "state": "fired" if worst is not None else "ok",
            "value": worst,
            "threshold": self._gap,
            "fired": self.fired[color],
            "last_fired": last,
            "last_fired_ago_s": None if last is None or now is None else round(now - last, 3),
            "escrows": len(self._escrows),
            "max_escrows": self._cap,
            "refused": self.refused,
            "ignored": self.ignored,
        }


def _describe(escrow_id: str, e: _Escrow) -> str:
    return escrow_id if e.due_at is None else f"{escrow_id} (due {e.due_at:.0f})"


class EscrowGapEvaluator(Evaluator):
    """The escrow_gap trigger on the pipeline: ``escrow`` events into :class:`EscrowGap`, the
    color acting now judged on the tick, a fresh gap of grace for whoever acts after a flip."""

    name = TRIGGER
    severity = Severity.MEDIUM
    listens = ("escrow",)

    def __init__(self, ctx: Context) -> None:
        config = ctx.triggers.escrow_gap
        self.judge = EscrowGap(config)
        self.enabled = config.enabled
        self.threshold: float | None = config.gap_s
        self._roles = ctx.roles

    def on_event(self, child: Sender, msg: dict[str, Any]) -> Verdict | None:
        self.judge.event(
            child.color, msg["id"], msg["op"], msg.get("due_at"), msg.get("gap_s"), time.monotonic()
        )
        return None

    def tick(self, now: float) -> Verdict | None:
        return self.judge.tick(now, self._roles.state.active)

    def reset(self, reset: Reset) -> None:
        if reset.kind == "active":
            self.judge.acting_changed(reset.now, reset.active)

    def paused(self, seconds: float, now: float) -> None:
        self.judge.paused(seconds, now)

    def state(self, color: Color, now: float) -> EscrowGapState:
        return self.judge.state(color, now)
