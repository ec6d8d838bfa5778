"""Canary, the seed's section 3: the candidate gets a small share of the capital first (5 %),
then more step by step (20, 50 %) while it performs as well as stable, and all of it at the
last step (100 %: in charge alone, on probation, as after a switch).

Both colors act: stable is told ``active`` with ``1 - allocation``, the candidate ``canary``
with ``allocation``, and each sizes its stakes by its share (as the seed's ``CanaryRouter``
does). The split is not left to the agents' good manners: the permit script keeps each
color's stake in the step and refuses the candidate (``over_allocation``) once its share of
the step's stake would pass its allocation (plus the allowance); see
:data:`supervisor.arbiter.scripts.PERMIT`. Changing the step, aborting and promoting are each
one flip that writes the split (``{ns}:alloc``) and bumps the epoch, so a permit asked under
the old split is refused.

Who judges: the triggers that act at once (exception, auth, exit, heartbeat, double spend) see
the candidate on trial and abort the canary as they roll back a candidate in blue-green. The
ones that compare PnL and latency with a stable baseline see neither color (``other``): in a
canary the two colors stake at different scales (5 % against 95 %), which those triggers would
read as a drift, and stable's scaled-down rounds would spoil the baseline they keep for after
the canary. The canary's own judge (:mod:`supervisor.rollout.judge`) compares the two colors
per unit staked, over the same step.
"""

from __future__ import annotations

import time

from supervisor.config import Color
from supervisor.rollout.state import CanaryState, Mode, RolloutState
from supervisor.rollout.strategy import Assignment, Judged

_STANDBY = Assignment("standby", 0.0)


class Canary:
    """The canary strategy.

    >>> from supervisor.rollout.state import CanaryState, Mode, RolloutState
    >>> c = CanaryState((5.0, 20.0, 100.0), 0, 5.0, 0.0, 0.0)
    >>> s = RolloutState(Color.BLUE, 7, Color.BLUE, Color.GREEN, mode=Mode.CANARY, canary=c)
    >>> Canary().assignment(s, Color.GREEN), Canary().assignment(s, Color.BLUE)
    (Assignment(role='canary', allocation=0.05), Assignment(role='active', allocation=0.95))
    >>> Canary().on_trial(s, Color.GREEN), Canary().on_trial(s, Color.BLUE)
    (True, False)
    """

    mode = Mode.CANARY

    def assignment(self, state: RolloutState, color: Color) -> Assignment:
        c = state.canary
        if c is None or state.active is None:
            return _STANDBY  # not a canary one can act in: nobody acts but through a flip
        if color is state.candidate:
            return Assignment("canary", c.allocation)
        if color is state.active:
            return Assignment("active", round(1.0 - c.allocation, 12))
        return _STANDBY

    def judged(self, state: RolloutState, color: Color) -> Judged:
        return "other"  # the canary's judge compares them (see the module's docstring)

    def on_trial(self, state: RolloutState, color: Color) -> bool:
        return color is state.candidate and state.active is not None

    def rollback_target(self, state: RolloutState) -> Color:
        return state.stable

    def may_promote(self, state: RolloutState, color: Color, version: str) -> bool:
        return False  # probation does not apply; the steps promote (see stepper.py)


def alloc_fields(state: RolloutState, *, reset: bool) -> dict[str, str]:
    """The allocation hash ``{ns}:alloc`` for ``state`` (a canary), as the flip writes it
    (the script adds the epoch). ``reset``: a new step, whose stakes count from zero; else
    (an epoch bump within the step: a restart, a restore) the stakes are kept."""
    c = state.canary
    assert c is not None
    assert state.candidate is not None
    fields = {
        "mode": "canary",
        "candidate": state.candidate.value,
        "stable": state.stable.value,
        "allocation": repr(c.allocation),
        "percent": f"{c.percent:g}",
        "step": str(c.step),
        "since": f"{c.since:.3f}",
        "allowance": repr(c.allowance),
        "start": repr(c.start_amount),
        "ended": "",
    }
    if reset:
        fields.update({f"{what}_{k.value}": "0" for what in ("stake", "n") for k in Color})
    return fields


def ended_fields(reason: str) -> dict[str, str]:
    """The allocation hash once a canary ended (aborted, promoted, switched away from): no
    candidate, the last step's stakes kept for the record."""
    return {
        "mode": "off",
        "candidate": "",
        "allocation": "",
        "ended": reason[:200],
        "ended_at": f"{time.time():.3f}",
    }


def in_force(alloc: dict[str, str], epoch: int, candidate: Color | None) -> bool:
    """Whether the allocation hash read from Redis still holds the canary of ``candidate`` at
    ``epoch``: the fence lets the candidate act only then (scripts.PERMIT).

    >>> in_force({"mode": "canary", "epoch": "8", "candidate": "green"}, 8, Color.GREEN)
    True
    >>> in_force({"mode": "canary", "epoch": "7", "candidate": "green"}, 8, Color.GREEN)
    False
    """
    return (
        candidate is not None
        and alloc.get("mode") == "canary"
        and alloc.get("epoch") == str(epoch)
        and alloc.get("candidate") == candidate.value
    )


def step_index(steps: tuple[float, ...], percent: float) -> int:
    """The step a share belongs to: the last step at or under it (the first, below all).

    >>> step_index((5.0, 20.0, 50.0, 100.0), 30.0), step_index((5.0, 20.0, 100.0), 1.0)
    (1, 0)
    """
    at_or_under = [i for i, p in enumerate(steps) if p <= percent]
    return at_or_under[-1] if at_or_under else 0


def started(
    steps: tuple[float, ...], allowance: float, start_amount: float, now: float
) -> CanaryState:
    """A canary at its first step."""
    return CanaryState(steps, 0, steps[0], now, allowance, start_amount)
