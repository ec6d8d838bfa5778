"""State handoff: an upgrade is a state transition, not a restart (``agentsup handoff``).

- :mod:`supervisor.handoff.handoff`: :class:`Handoffs`, the orchestration (quiesce, snapshot,
  store, restore, verify, flip, resume), snapshots on demand, periodic and at the stop.
- :mod:`supervisor.handoff.carry`: the state going back on a rollback; a half-done handoff
  finished or undone at start.
- :mod:`supervisor.handoff.transfer`: the requests to a child, chunked states.
- :mod:`supervisor.handoff.snapshot`, :mod:`~supervisor.handoff.store`: a snapshot, and
  where it lives (Redis ``{ns}:snapshot:{color}`` and state_dir).
- :mod:`supervisor.handoff.record`: the progress (``{ns}:handoff``, state_dir).
- :mod:`supervisor.handoff.journal`: the candidate's events since its latest snapshot.
"""

from supervisor.handoff.errors import HandoffFailed
from supervisor.handoff.handoff import Handoffs

__all__ = ["HandoffFailed", "Handoffs"]
