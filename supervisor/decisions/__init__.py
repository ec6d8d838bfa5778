"""The versioned decision log: every decision, who made it under which version, provably
intact, queryable, replayable (the seed's section 9; docs/decisions.md).

- :mod:`supervisor.decisions.record`: one record's fields, its encoding, the chain's hashes.
- :mod:`supervisor.decisions.writer`: :class:`DecisionLog`, the daemon's subscriber on the
  pipeline's bus and its batching writer (group commit, fsync policy, gaps, rotation).
- :mod:`supervisor.decisions.files`: the current and rotated files, read and written.
- :mod:`supervisor.decisions.maintenance`: rotated files gzipped and pruned, in the background.
- :mod:`supervisor.decisions.verify`: the chain checked across files, problems named.
- :mod:`supervisor.decisions.query`: filters, the Python and DuckDB engines, tail, the table.
- :mod:`supervisor.decisions.replay`: logged inputs sent to the standby as mirrors.
- :mod:`supervisor.decisions.lookup`: earlier executions of a key, for the double-spend trigger.
"""

from supervisor.decisions.writer import DecisionLog

__all__ = ["DecisionLog"]
