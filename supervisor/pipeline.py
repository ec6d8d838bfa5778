"""One pass per event: every valid message a child sends goes through :meth:`Pipeline.handle`.

validate (already done by the channel) → metrics → triggers → verdict. Synchronous and
allocation-light: a decision event costs a dict lookup, two metric updates and the evaluators'
few float operations. Anything slow (a flip, a permit, an alert) is handed to the daemon's
callbacks, which schedule it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from supervisor.children.process import Child
from supervisor.config import Color, Config
from supervisor.guard import critical
from supervisor.guard.pnl import PnlSigma
from supervisor.guard.verdict import Verdict
from supervisor.logs import BurstLog
from supervisor.logs import get as get_logger
from supervisor.metrics import Metrics
from supervisor.rollout import Rollout

log = get_logger("pipeline")

Handler = Callable[[Child, dict[str, Any]], None]


class Tally:
    """What one color did: decisions, executions, finished rounds and their PnL."""

    __slots__ = ("decisions", "executions", "pnl", "rounds")

    def __init__(self) -> None:
        self.decisions = 0
        self.executions = 0
        self.rounds = 0
        self.pnl = 0.0

    def as_dict(self) -> dict[str, float]:
        return {"decisions": self.decisions, "executions": self.executions,
                "rounds": self.rounds, "pnl": round(self.pnl, 6)}


class Pipeline:
    def __init__(
        self,
        config: Config,
        metrics: Metrics,
        rollout: Rollout,
        *,
        on_verdict: Callable[[Verdict], None],
        on_hello: Callable[[Child], None],
        on_permit: Callable[[Child, dict[str, Any]], None],
        on_reply: Callable[[Child, dict[str, Any]], None],
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.rollout = rollout
        self._on_verdict = on_verdict
        self._on_hello = on_hello
        self._on_permit = on_permit
        self._on_reply = on_reply
        self.pnl = PnlSigma(config.triggers.pnl_sigma)
        self.context: dict[Color, dict[str, Any]] = {}
        self.events = 0
        # Plain counters for status and the live view (the metrics hold the same, labelled).
        self.tally = {c: Tally() for c in Color}
        self._bursts = {c: BurstLog() for c in Color}
        self._handlers: dict[str, Handler] = {
            "hello": self._hello,
            "heartbeat": self._heartbeat,
            "decision": self._decision,
            "execution": self._execution,
            "outcome": self._outcome,
            "error": self._error,
            "escrow": self._escrow,
            "context": self._context,
            "permit": on_permit,
            "snapshot": on_reply,
            "restored": on_reply,
            "mirror_result": on_reply,
        }

    # the hot path -----------------------------------------------------------------------
    def handle(self, child: Child, msg: dict[str, Any]) -> None:
        self.events += 1
        self._handlers[msg["type"]](child, msg)

    def protocol_error(self, child: Child, kind: str, detail: str) -> None:
        self.metrics.protocol_errors.labels(child.color.value, kind).inc()
        suppressed = self._bursts[child.color].should_log(time.monotonic())
        if suppressed is not None:
            child.log.warning(
                "protocol_error", kind=kind, detail=detail, suppressed_since_last=suppressed
            )

    def _acting_candidate(self, color: Color) -> bool:
        s = self.rollout.state
        return s.candidate is color and s.active is color

    def _hello(self, child: Child, msg: dict[str, Any]) -> None:
        child.log.info("hello", agent_version=msg["version"], capabilities=msg.get("capabilities"))
        child.said_hello(msg)
        self._on_hello(child)

    def _heartbeat(self, child: Child, msg: dict[str, Any]) -> None:
        child.last_heartbeat = time.monotonic()

    def _decision(self, child: Child, msg: dict[str, Any]) -> None:
        color = child.color
        self.tally[color].decisions += 1
        self.metrics.decisions[color].inc()
        self.metrics.decision_latency[color].observe(msg["latency_ms"] / 1000.0)

    def _execution(self, child: Child, msg: dict[str, Any]) -> None:
        self.tally[child.color].executions += 1
        self.metrics.executions[child.color].inc()

    def _outcome(self, child: Child, msg: dict[str, Any]) -> None:
        color = child.color
        pnl = float(msg["pnl"])
        tally = self.tally[color]
        tally.rounds += 1
        tally.pnl += pnl
        self.metrics.round_pnl[color].observe(pnl)
        s = self.rollout.state
        if color is s.stable and s.candidate is not color:
            self.pnl.baseline_round(pnl)
        elif color is s.candidate:
            verdict = self.pnl.candidate_round(color, pnl)
            if verdict is not None:
                self._on_verdict(verdict)

    def _error(self, child: Child, msg: dict[str, Any]) -> None:
        color = child.color
        child.log.warning("agent_error", kind=msg["kind"], message=msg["message"][:500])
        if not self._acting_candidate(color):
            return  # only the candidate in charge is rolled back; stable has nowhere to go
        verdict = critical.on_error(self.config.triggers, color, msg["kind"], msg["message"])
        if verdict is not None:
            self._on_verdict(verdict)

    def _escrow(self, child: Child, msg: dict[str, Any]) -> None:
        pass  # the escrow_gap trigger is fed here (see supervisor.guard)

    def _context(self, child: Child, msg: dict[str, Any]) -> None:
        ctx = self.context.setdefault(child.color, {})
        for key in ("volatility", "disputes_open", "auto_releases"):
            if key in msg:
                ctx[key] = msg[key]

    # events that do not come from a line -----------------------------------------------
    def child_exited(self, child: Child, returncode: int) -> None:
        if self._acting_candidate(child.color):
            verdict = critical.on_exit(self.config.triggers, child.color, returncode)
            if verdict is not None:
                self._on_verdict(verdict)

    def check_heartbeats(self, children: dict[Color, Child], now: float) -> None:
        """Called on the housekeeping tick: the acting candidate's heartbeat age."""
        hb = self.config.triggers.heartbeat
        for color, child in children.items():
            last = child.last_heartbeat
            age = 0.0 if last is None else now - last
            self.metrics.heartbeat_age.labels(color.value).set(round(age, 3))
            if not hb.enabled or last is None or not self._acting_candidate(color):
                continue
            timeout = child.cfg.heartbeat_timeout_s or hb.timeout_s
            if age > timeout:
                self._on_verdict(critical.on_silence(color, age, timeout))

    def new_candidate(self) -> None:
        self.pnl.reset_candidate()

    def new_stable(self) -> None:
        self.pnl.reset_baseline()
        self.pnl.reset_candidate()
