"""The rollback guard: evaluators fed once per event, each producing verdicts.

One module per trigger family. Every evaluator keeps bounded memory and returns a
:class:`~supervisor.guard.verdict.Verdict` that carries its numbers (value, threshold, window,
baseline) into the flip reason, the log and the metrics.
"""
