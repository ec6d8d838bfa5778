"""A rollout strategy: what a mode means for who acts, who is judged and where a rollback goes.

The :class:`~supervisor.rollout.rollout.Rollout` owns the state and is its only writer; a
strategy only reads it and answers. One module per strategy, picked by the mode Redis stores
(:data:`STRATEGIES`); adding canary, shadow or A/B is one module and one line there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from supervisor.config import Color
from supervisor.rollout.state import Mode, RolloutState

# What a child is told it may do (the ``role`` message's contract).
Role = Literal["active", "standby", "canary", "shadow"]
# How the judging triggers see a color: the baseline, the one on trial, or neither.
Judged = Literal["stable", "candidate", "other"]


@dataclass(frozen=True, slots=True)
class Assignment:
    """A color's role and its share of the capital (0..1)."""

    role: Role
    allocation: float


class Strategy(Protocol):
    """Answers about a :class:`RolloutState`; never changes it."""

    mode: Mode

    def assignment(self, state: RolloutState, color: Color) -> Assignment:
        """The role (and allocation) ``color`` is told."""
        ...

    def judged(self, state: RolloutState, color: Color) -> Judged:
        """How the triggers judge ``color``: its rounds are the baseline, or on trial."""
        ...

    def on_trial(self, state: RolloutState, color: Color) -> bool:
        """True when a verdict against ``color`` rolls it back (it acts, and is not stable)."""
        ...

    def rollback_target(self, state: RolloutState) -> Color:
        """Who takes over after a rollback."""
        ...

    def may_promote(self, state: RolloutState, color: Color, version: str) -> bool:
        """Whether anything automatic (probation) may make ``color`` stable."""
        ...


_STRATEGIES: dict[Mode, Strategy] = {}


def strategy_for(mode: Mode) -> Strategy:
    """The strategy of ``mode`` (one instance each; they hold no state)."""
    strategy = _STRATEGIES.get(mode)
    if strategy is None:
        from supervisor.rollout.blue_green import BlueGreen  # the table, filled once
        from supervisor.rollout.canary import Canary

        _STRATEGIES.update({Mode.BLUE_GREEN: BlueGreen(), Mode.CANARY: Canary()})
        from supervisor.rollout.ab import Ab

        _STRATEGIES[Mode.AB] = Ab()
        strategy = _STRATEGIES[mode]
    return strategy
