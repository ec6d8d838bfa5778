"""The rollback guard: the triggers of the rollback table, each an evaluator fed by the
pipeline, each producing verdicts.

- :mod:`supervisor.guard.evaluator`: the :class:`~supervisor.guard.evaluator.Evaluator`
  protocol and what an evaluator is given (never the daemon).
- :mod:`supervisor.guard.registry`: every trigger, in the table's order; how to add one.
- one module per trigger family: :mod:`~supervisor.guard.critical` (exception, auth, exit),
  :mod:`~supervisor.guard.heartbeat`, :mod:`~supervisor.guard.double_spend`,
  :mod:`~supervisor.guard.pnl`, :mod:`~supervisor.guard.latency`,
  :mod:`~supervisor.guard.escrow`. Where a trigger has numbers to keep, its judge (``PnlSigma``,
  ``Latency``...) is a plain class with explicit clocks, tested alone; its evaluator wires it
  to the pipeline's messages and the rollout's roles.

Every evaluator keeps bounded memory and returns a :class:`~supervisor.guard.verdict.Verdict`
that carries its numbers (value, threshold, window, baseline) into the flip reason, the log and
the metrics. What a verdict leads to is the responder's (:mod:`supervisor.rollout.responder`).
"""
