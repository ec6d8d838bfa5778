"""Shadow mode: the standby color decides on the live inputs, never acts (docs/shadow.md).

:mod:`~supervisor.shadow.shadow` runs it (the pipeline's subscribers, the mirror queues and
workers, start and stop), :mod:`~supervisor.shadow.compare` says which fields differ,
:mod:`~supervisor.shadow.stats` counts in bounded memory and holds the floor rule,
:mod:`~supervisor.shadow.session` holds one run and how a divergence is listed,
:mod:`~supervisor.shadow.report` builds the report and :mod:`~supervisor.shadow.html` draws it.
"""

from supervisor.shadow.shadow import Shadow

__all__ = ["Shadow"]
