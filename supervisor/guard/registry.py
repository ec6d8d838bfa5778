"""The trigger registry: every evaluator the pipeline runs, in the order ``agentsup triggers``
shows them (the rollback table's).

The pipeline builds each entry with a :class:`~supervisor.guard.evaluator.Context`, subscribes
it to the message types it ``listens`` to, ticks it, resets it and shows its state; the metrics
take their label sets from it (``triggers_fired_total{trigger,severity}``,
``rollbacks_total{trigger}``, ``trigger_value``, ``trigger_threshold``) and ``agentsup
triggers`` its rows. Nothing else names a trigger.

Adding a trigger, say ``drawdown``:

1. its config section: a ``DrawdownTrigger(Trigger)`` model with its settings in
   ``supervisor/config.py``, and ``drawdown: DrawdownTrigger = DrawdownTrigger()`` in
   ``Triggers`` (so ``[triggers.drawdown]`` is validated like every other table);
2. its module, ``supervisor/guard/drawdown.py``: a class that subclasses
   :class:`~supervisor.guard.evaluator.Evaluator`, with ``name = "drawdown"``, its
   ``severity``, the message types it ``listens`` to, ``__init__(self, ctx)`` that takes
   ``ctx.triggers.drawdown`` (and ``ctx.roles`` to ask whom it judges: ``judged(color)``,
   ``on_trial(color)``), ``on_event`` returning a Verdict or None, ``tick``/``reset``/
   ``paused`` when it keeps time or state across a flip, and ``state(color, now)`` returning
   a TypedDict that extends ``TriggerState``;
3. one line below.

The responder acts on its verdicts by their ``action`` (roll back the color on trial, alert, or
log); the responder, the metrics and ``agentsup triggers`` need no change.
"""

from __future__ import annotations

from collections.abc import Callable

from supervisor.guard.critical import AuthEvaluator, ExceptionEvaluator, ExitEvaluator
from supervisor.guard.double_spend import DoubleSpendEvaluator
from supervisor.guard.escrow import EscrowGapEvaluator
from supervisor.guard.evaluator import Context, Evaluator
from supervisor.guard.heartbeat import HeartbeatEvaluator
from supervisor.guard.latency import LatencyEvaluator
from supervisor.guard.pnl import PnlSigmaEvaluator

Factory = Callable[[Context], Evaluator]

REGISTRY: tuple[Factory, ...] = (
    ExceptionEvaluator,
    AuthEvaluator,
    ExitEvaluator,
    HeartbeatEvaluator,
    DoubleSpendEvaluator,
    PnlSigmaEvaluator,
    LatencyEvaluator,
    EscrowGapEvaluator,
)
