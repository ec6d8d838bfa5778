"""One pass per event: every valid message a child sends goes through :meth:`Pipeline.handle`.

The pipeline is a small bus: each message type has a list of subscribers, called in the order
they subscribed, each with ``(child, msg)``; a subscriber that returns a
:class:`~supervisor.guard.verdict.Verdict` has it handed to ``on_verdict`` (the responder).
The built-in subscribers come first (liveness, the tallies and their metrics, the context, the
permits and replies the deployment answers), then every trigger of the registry
(:mod:`supervisor.guard.registry`) on the types it listens to. Synchronous and
allocation-light: a decision event costs one dict lookup, two calls, two metric updates and
the latency trigger's few float operations. Anything slow (a flip, a permit, an alert) is
handed to the deployment's callbacks, which schedule it.

Later subscribers join the same way, without a change here: the decision log as
``pipeline.subscribe("decision", log.on_event, first=True)`` (and ``execution``, ``outcome``,
``error``; first, so that it records what the checks then judge), the shadow
comparator on ``decision`` and ``mirror_result``, the deploy gates on ``context`` and
``escrow``. A subscriber must be as quick as the line rate needs (hand anything slow to a
task), and may return a Verdict to have it acted on like a trigger's.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, TypeVar

from supervisor import protocol
from supervisor.children.process import Child
from supervisor.config import Color, Triggers
from supervisor.guard.double_spend import DoubleSpend, DoubleSpendEvaluator
from supervisor.guard.escrow import EscrowGap, EscrowGapEvaluator
from supervisor.guard.evaluator import EXIT, Context, Evaluator, Reset, Roles, emitted
from supervisor.guard.registry import REGISTRY, Factory
from supervisor.guard.verdict import Verdict
from supervisor.logs import BurstLog
from supervisor.logs import get as get_logger
from supervisor.metrics import Metrics

log = get_logger("pipeline")

# Every type a subscriber may listen to: the channel's (supervisor/protocol.py, the contract's
# child → supervisor table) and the pipeline's own ``exit``.
MESSAGE_TYPES: Final = (
    "hello",
    "heartbeat",
    "decision",
    "execution",
    "outcome",
    "error",
    "escrow",
    "context",
    "snapshot",
    "snapshot_chunk",
    "restored",
    "quiesced",
    "mirror_result",
    "mirror_scored",
    "permit",
    EXIT,
)

Subscriber = Callable[[Child, dict[str, Any]], Verdict | None]
E = TypeVar("E", bound=Evaluator)


class Tally:
    """What one color did: decisions, executions, finished rounds and their PnL."""

    __slots__ = ("decisions", "executions", "pnl", "rounds")

    def __init__(self) -> None:
        self.decisions = 0
        self.executions = 0
        self.rounds = 0
        self.pnl = 0.0

    def as_dict(self) -> dict[str, float]:
        return {
            "decisions": self.decisions,
            "executions": self.executions,
            "rounds": self.rounds,
            "pnl": round(self.pnl, 6),
        }


class Pipeline:
    """The bus of one deployment's children.

    ``children`` is a live mapping (the deployment may fill it after building the pipeline,
    since each child's ``on_message`` is :meth:`handle`); ``heartbeat_timeouts`` the per color
    overrides of ``[triggers.heartbeat] timeout_s``; ``roles`` how the rollout judges each
    color (the :class:`~supervisor.rollout.Rollout`). ``evaluators`` is the trigger registry,
    replaceable for tests.
    """

    def __init__(
        self,
        triggers: Triggers,
        metrics: Metrics,
        roles: Roles,
        children: Mapping[Color, Child],
        *,
        heartbeat_timeouts: Mapping[Color, float | None],
        on_verdict: Callable[[Verdict], None],
        on_hello: Callable[[Child], None],
        on_permit: Callable[[Child, dict[str, Any]], None],
        on_reply: Callable[[Child, dict[str, Any]], None],
        on_lookup: Callable[[Color, str, int], None],
        evaluators: Sequence[Factory] = REGISTRY,
    ) -> None:
        self.metrics = metrics
        self.children = children
        self._roles = roles
        self._on_verdict = on_verdict
        self._on_hello = on_hello
        self.context: dict[Color, dict[str, Any]] = {}
        self.events = 0
        # Plain counters for status and the live view (the metrics hold the same, labelled).
        self.tally = {c: Tally() for c in Color}
        # Each color's tally with its metrics bound, so that counting an event is one lookup.
        self._decided = {
            c: (self.tally[c], metrics.decisions[c].inc, metrics.decision_latency[c].observe)
            for c in Color
        }
        self._executed = {c: (self.tally[c], metrics.executions[c].inc) for c in Color}
        self._finished = {c: (self.tally[c], metrics.round_pnl[c].observe) for c in Color}
        self._bursts = {c: BurstLog() for c in Color}
        # Our own failures apart: a child's garbage must not hide them from the log.
        self._handler_bursts = {c: BurstLog() for c in Color}
        self._subscribers: dict[str, list[Subscriber]] = {t: [] for t in MESSAGE_TYPES}
        builtins: list[tuple[str, Subscriber]] = [
            ("hello", self._hello),
            ("heartbeat", self._heartbeat),
            ("decision", self._count_decision),
            ("execution", self._count_execution),
            ("outcome", self._count_outcome),
            ("error", self._log_error),
            ("context", self._context),
            ("permit", on_permit),
            ("snapshot", on_reply),
            ("snapshot_chunk", on_reply),
            ("restored", on_reply),
            ("quiesced", on_reply),
            ("mirror_result", on_reply),
            ("mirror_scored", on_reply),
        ]
        for msg_type, subscriber in builtins:
            self.subscribe(msg_type, subscriber)
        ctx = Context(triggers, roles, children, heartbeat_timeouts, on_lookup)
        self.evaluators: tuple[Evaluator, ...] = tuple(build(ctx) for build in evaluators)
        for evaluator in self.evaluators:
            for msg_type in evaluator.listens:
                self.subscribe(msg_type, evaluator.on_event)
        metrics.declare_triggers(
            {name: severity.value for ev in self.evaluators for name, severity in emitted(ev)},
            [ev.name for ev in self.evaluators],
        )
        self._double_spend = self.evaluator(DoubleSpendEvaluator)
        # The parts the deployment reads: the permit records of forgotten keys are judged by
        # double_spend.from_permit_record, and the responder lists escrow.overdue(now).
        self.double_spend: DoubleSpend = self._double_spend.judge
        self.escrow: EscrowGap = self.evaluator(EscrowGapEvaluator).judge

    def subscribe(self, msg_type: str, subscriber: Subscriber, *, first: bool = False) -> None:
        """Call ``subscriber(child, msg)`` for every message of ``msg_type``, after those that
        subscribed before it (before all of them with ``first``: the decision log, so that an
        event is recorded before anything it causes, and whatever a later subscriber does);
        a Verdict it returns goes to the responder."""
        subscribers = self._subscribers.get(msg_type)
        if subscribers is None:
            raise ValueError(f"no message type {msg_type!r} (one of {', '.join(MESSAGE_TYPES)})")
        if first:
            subscribers.insert(0, subscriber)
        else:
            subscribers.append(subscriber)

    def evaluator(self, kind: type[E]) -> E:
        """The registered evaluator of class ``kind``."""
        for evaluator in self.evaluators:
            if isinstance(evaluator, kind):
                return evaluator
        raise LookupError(f"no {kind.__name__} in the pipeline's registry")

    # the hot path -----------------------------------------------------------------------
    def handle(self, child: Child, msg: dict[str, Any]) -> None:
        self.events += 1
        for subscriber in self._subscribers[msg["type"]]:
            verdict = subscriber(child, msg)
            if verdict is not None:
                self._on_verdict(verdict)

    def _deliver(self, child: Child, msg: dict[str, Any]) -> None:
        """A message that is not a line of the channel (not counted as an event)."""
        for subscriber in self._subscribers[msg["type"]]:
            verdict = subscriber(child, msg)
            if verdict is not None:
                self._on_verdict(verdict)

    def protocol_error(self, child: Child, kind: str, detail: str) -> None:
        self.metrics.protocol_errors.labels(child.color.value, kind).inc()
        if kind == protocol.E_HANDLER:
            # A good line we failed to handle is our bug, not the child's: said as an error.
            suppressed = self._handler_bursts[child.color].should_log(time.monotonic())
            if suppressed is not None:
                child.log.error(
                    "protocol_error", kind=kind, detail=detail, suppressed_since_last=suppressed
                )
            return
        suppressed = self._bursts[child.color].should_log(time.monotonic())
        if suppressed is not None:
            child.log.warning(
                "protocol_error", kind=kind, detail=detail, suppressed_since_last=suppressed
            )

    # the built-in subscribers -----------------------------------------------------------
    def _hello(self, child: Child, msg: dict[str, Any]) -> None:
        caps = msg.get("capabilities")
        if caps is not None and not all(type(c) is str for c in caps):
            # Only names go to the log: a child's nesting could be deeper than the JSON log
            # renderer goes, and the hello would fail in its own log line.
            caps = f"{len(caps)} items, not all names"
        child.log.info("hello", agent_version=msg["version"], capabilities=caps)
        child.said_hello(msg)
        self._on_hello(child)

    def _heartbeat(self, child: Child, msg: dict[str, Any]) -> None:
        child.last_heartbeat = time.monotonic()

    def _count_decision(self, child: Child, msg: dict[str, Any]) -> None:
        tally, count, observe = self._decided[child.color]
        tally.decisions += 1
        count()
        observe(msg["latency_ms"] / 1000.0)

    def _count_execution(self, child: Child, msg: dict[str, Any]) -> None:
        tally, count = self._executed[child.color]
        tally.executions += 1
        count()

    def _count_outcome(self, child: Child, msg: dict[str, Any]) -> None:
        tally, observe = self._finished[child.color]
        pnl = float(msg["pnl"])
        tally.rounds += 1
        tally.pnl += pnl
        observe(pnl)

    def _log_error(self, child: Child, msg: dict[str, Any]) -> None:
        child.log.warning("agent_error", kind=msg["kind"], message=msg["message"][:500])

    def _context(self, child: Child, msg: dict[str, Any]) -> None:
        ctx = self.context.setdefault(child.color, {})
        for key in ("volatility", "disputes_open", "auto_releases"):
            if key in msg:
                ctx[key] = msg[key]

    def granted(self, color: Color, key: str, epoch: int) -> None:
        """The deployment granted ``key`` to ``color`` at ``epoch`` (a channel permit): its
        execution is judged at that epoch."""
        self._double_spend.granted(color, key, epoch)

    # events that do not come from a line -----------------------------------------------
    def child_exited(self, child: Child, returncode: int) -> None:
        """``child``'s process ended (any exit: the exit trigger judges only the color on
        trial); delivered on the bus as an ``exit`` message."""
        self._deliver(child, {"type": EXIT, "returncode": returncode})

    def tick(self, now: float) -> None:
        """The housekeeping tick: what is judged by time rather than by events."""
        for color, child in self.children.items():
            last = child.last_heartbeat
            age = 0.0 if last is None else now - last
            self.metrics.heartbeat_age.labels(color.value).set(round(age, 3))
        for evaluator in self.evaluators:
            verdict = evaluator.tick(now)
            if verdict is not None:
                self._on_verdict(verdict)

    def loop_stalled(self, seconds: float, now: float) -> None:
        """The daemon's own event loop stood still for ``seconds`` until ``now`` (a VM freeze,
        a SIGSTOP, a blocking call): the children's clocks move on by as much, so that the
        pause is never counted as their silence. Call it before the channels are read again;
        a heartbeat read afterwards sets its clock to the present anyway. No clock moves past
        ``now``: a stall spent handling a child's lines may have read its heartbeat late."""
        for child in self.children.values():
            last = child.last_heartbeat
            if last is not None:
                child.last_heartbeat = min(last + seconds, now)
        for evaluator in self.evaluators:
            evaluator.paused(seconds, now)

    def new_active(self, active: Color | None) -> None:
        """Who acts changed: a new candidate starts with a clean slate, and the escrows get a
        full gap of grace under their new keeper."""
        reset = Reset("active", active, time.monotonic())
        for evaluator in self.evaluators:
            evaluator.reset(reset)

    def new_stable(self) -> None:
        """A candidate was confirmed: the baseline is the new stable color's from now on."""
        reset = Reset("stable", self._roles.state.active, time.monotonic())
        for evaluator in self.evaluators:
            evaluator.reset(reset)

    # what is shown ------------------------------------------------------------------------
    def trigger_states(self, fired: Mapping[tuple[str, Color], float]) -> dict[str, dict[str, Any]]:
        """Every trigger, its threshold and, for both colors, its value, state and when it
        last fired (unix time): what ``agentsup triggers`` and the live view show.
        ``fired`` is the responder's record, (trigger, color) → unix time, for the triggers
        that do not keep their own."""
        now, wall = time.monotonic(), time.time()
        out: dict[str, dict[str, Any]] = {}
        for evaluator in self.evaluators:
            name = evaluator.name
            colors: dict[str, dict[str, Any]] = {}
            for color in Color:
                state: dict[str, Any] = dict(evaluator.state(color, now))
                last = state["last_fired"]
                state["last_fired"] = (
                    wall - round(now - last, 3) if last is not None else fired.get((name, color))
                )
                colors[color.value] = state
            out[name] = {
                "severity": evaluator.severity.value,
                "enabled": evaluator.enabled,
                "threshold": evaluator.threshold,
                "colors": colors,
            }
        return out

    def export_trigger_values(self) -> None:
        """Every trigger's threshold and its value for each color, to the metrics
        (``agentsup_trigger_threshold``, ``agentsup_trigger_value``)."""
        now = time.monotonic()
        metrics = self.metrics
        for evaluator in self.evaluators:
            name = evaluator.name
            if evaluator.threshold is not None:
                metrics.trigger_threshold.labels(name).set(evaluator.threshold)
            for color in Color:
                value = evaluator.state(color, now)["value"]
                if value is not None:
                    metrics.trigger_value.labels(name, color.value).set(value)
