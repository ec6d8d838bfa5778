"""Blue-green, the seed's pattern: one color acts with all the capital, the other stands by
warm; the candidate in charge is on trial, and a rollback goes back to stable."""

from __future__ import annotations

from supervisor.config import Color
from supervisor.rollout.state import Mode, RolloutState
from supervisor.rollout.strategy import Assignment, Judged

_ACTIVE = Assignment("active", 1.0)
_STANDBY = Assignment("standby", 0.0)


class BlueGreen:
    """The blue-green strategy.

    >>> from supervisor.rollout.state import RolloutState
    >>> s = RolloutState(active=Color.GREEN, stable=Color.BLUE, candidate=Color.GREEN)
    >>> bg = BlueGreen()
    >>> bg.assignment(s, Color.GREEN), bg.judged(s, Color.BLUE), bg.on_trial(s, Color.GREEN)
    (Assignment(role='active', allocation=1.0), 'stable', True)
    """

    mode = Mode.BLUE_GREEN

    def assignment(self, state: RolloutState, color: Color) -> Assignment:
        return _ACTIVE if color is state.active else _STANDBY

    def on_trial(self, state: RolloutState, color: Color) -> bool:
        return state.candidate is color and state.active is color

    def judged(self, state: RolloutState, color: Color) -> Judged:
        if color is state.candidate:
            return "candidate" if state.active is color else "other"
        return "stable" if color is state.stable else "other"

    def rollback_target(self, state: RolloutState) -> Color:
        return state.stable

    def may_promote(self, state: RolloutState, color: Color, version: str) -> bool:
        return state.rejected.get(color) != version
