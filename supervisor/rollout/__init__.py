"""Who acts: the rollout state and its one writer, the strategies that say what a mode means,
and the responder that turns verdicts into rollbacks.

- :mod:`supervisor.rollout.state`: :class:`Mode`, :class:`RolloutState`, :class:`Change`.
- :mod:`supervisor.rollout.rollout`: :class:`Rollout`, every change of who acts, one lock.
- :mod:`supervisor.rollout.strategy`: the :class:`Strategy` protocol; one module per mode
  (:mod:`supervisor.rollout.blue_green` today).
- :mod:`supervisor.rollout.responder`: a verdict → counted, alerted, rolled back.
"""

from supervisor.rollout.rollout import Rollout
from supervisor.rollout.state import Change, ChangeKind, Mode, RolloutState, as_color
from supervisor.rollout.strategy import Assignment, Judged, Role, Strategy, strategy_for

__all__ = [
    "Assignment",
    "Change",
    "ChangeKind",
    "Judged",
    "Mode",
    "Role",
    "Rollout",
    "RolloutState",
    "Strategy",
    "as_color",
    "strategy_for",
]
