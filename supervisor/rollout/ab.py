"""A/B, the seed's section 8: two strategy variants of one version split the capital (50/50 by
default), each with its own value of one flag, until the statistics call a winner.

Blue is arm A and keeps the active key, told ``active`` with ``1 - allocation``; green is arm B,
told ``canary`` with ``allocation`` (the roles an agent already knows: both act, each sizing its
stakes by its share). The split is the canary's fence with a fixed share and no steps: the
allocation hash ``{ns}:alloc`` is written with ``mode = ab`` by the flip that starts the test
(and again, stakes kept, by every flip while it runs), and the permit script then holds *both*
arms to their share of the test's stakes (plus the allowance and the start amount), once the
other arm has staked: see :data:`supervisor.arbiter.scripts.PERMIT`. Starting and ending a
test are one flip each: the epoch rises, so a permit asked under the old split is refused.

Who judges: nobody rolls an arm back. Both run the same version, so the triggers that compare
with a stable baseline see neither color (``other``), and no verdict against an arm is a
rollback (``on_trial`` is False): the test's own statistics (:mod:`supervisor.ab`) compare the
arms, and the operator ends it (``agentsup ab stop [--winner a|b]``).
"""

from __future__ import annotations

from supervisor.config import Color
from supervisor.rollout.state import AbState, Mode, RolloutState
from supervisor.rollout.strategy import Assignment, Judged

_STANDBY = Assignment("standby", 0.0)


class Ab:
    """The A/B strategy.

    >>> from supervisor.rollout.state import AbState, Mode, RolloutState
    >>> t = AbState("crash_target", "2.0", "3.0", 30.0, 100, 0.0, 0.01)
    >>> s = RolloutState(Color.BLUE, 7, Color.BLUE, Color.GREEN, mode=Mode.AB, ab=t)
    >>> Ab().assignment(s, Color.GREEN), Ab().assignment(s, Color.BLUE)
    (Assignment(role='canary', allocation=0.3), Assignment(role='active', allocation=0.7))
    >>> Ab().on_trial(s, Color.GREEN), Ab().judged(s, Color.BLUE)
    (False, 'other')
    """

    mode = Mode.AB

    def assignment(self, state: RolloutState, color: Color) -> Assignment:
        t = state.ab
        if t is None or state.active is None:
            return _STANDBY  # not a test one can act in: nobody acts but through a flip
        if color is state.candidate:
            return Assignment("canary", t.allocation)
        if color is state.active:
            return Assignment("active", round(1.0 - t.allocation, 12))
        return _STANDBY

    def judged(self, state: RolloutState, color: Color) -> Judged:
        return "other"  # the test's statistics compare the arms (see the module's docstring)

    def on_trial(self, state: RolloutState, color: Color) -> bool:
        return False

    def rollback_target(self, state: RolloutState) -> Color:
        return state.stable

    def may_promote(self, state: RolloutState, color: Color, version: str) -> bool:
        return False


def arm_color(arm: str) -> Color:
    """The color of arm ``a`` (blue) or ``b`` (green).

    >>> arm_color("a"), arm_color("b")
    (<Color.BLUE: 'blue'>, <Color.GREEN: 'green'>)
    """
    return Color.BLUE if arm == "a" else Color.GREEN


def started(
    flag: str,
    a: str,
    b: str,
    *,
    split: float,
    min_rounds: int,
    allowance: float,
    start_amount: float,
    now: float,
) -> AbState:
    """A test starting ``now`` (to the millisecond, as the rollout record keeps it)."""
    return AbState(flag, a, b, split, min_rounds, round(now, 3), allowance, start_amount)


def alloc_fields(state: RolloutState, *, reset: bool) -> dict[str, str]:
    """The allocation hash ``{ns}:alloc`` for ``state`` (an A/B test), as the flip writes it
    (the script adds the epoch): the canary's fields, ``mode = ab`` (both arms fenced).
    ``reset``: the test starts, its stakes count from zero; else (an epoch bump while it runs:
    a restart, a restore) the stakes are kept."""
    t = state.ab
    assert t is not None
    assert state.candidate is not None
    fields = {
        "mode": "ab",
        "candidate": state.candidate.value,
        "stable": state.stable.value,
        "allocation": repr(t.allocation),
        "percent": f"{t.split:g}",
        "step": "0",
        "since": f"{t.since:.3f}",
        "allowance": repr(t.allowance),
        "start": repr(t.start_amount),
        "ended": "",
    }
    if reset:
        fields.update({f"{what}_{k.value}": "0" for what in ("stake", "n") for k in Color})
    return fields


def in_force(alloc: dict[str, str], epoch: int, candidate: Color | None) -> bool:
    """Whether the allocation hash read from Redis still holds the A/B split at ``epoch``.

    >>> in_force({"mode": "ab", "epoch": "8", "candidate": "green"}, 8, Color.GREEN)
    True
    >>> in_force({"mode": "canary", "epoch": "8", "candidate": "green"}, 8, Color.GREEN)
    False
    """
    return (
        candidate is not None
        and alloc.get("mode") == "ab"
        and alloc.get("epoch") == str(epoch)
        and alloc.get("candidate") == candidate.value
    )
