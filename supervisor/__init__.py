"""agent-supervisor: run two versions of a money-handling agent, fence who may act, roll back.

The package is laid out the way the daemon is: ``arbiter`` decides who may act (Redis, Lua),
``children`` runs the blue and green processes and speaks the channel, ``pipeline`` and
``guard`` judge every event, ``rollout`` holds stable and candidate, ``control`` serves the
operator's socket, and ``agent`` is the SDK an agent imports.
"""

__version__ = "0.1.0"
