"""One pass per event: every valid message a child sends goes through :meth:`Pipeline.handle`.

validate (already done by the channel) → metrics → triggers → verdict. Synchronous and
allocation-light: a decision event costs a dict lookup, two metric updates and the evaluators'
few float operations. Anything slow (a flip, a permit, an alert) is handed to the daemon's
callbacks, which schedule it.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from supervisor import protocol
from supervisor.children.process import Child
from supervisor.config import Color, Config
from supervisor.guard import critical
from supervisor.guard.double_spend import DoubleSpend
from supervisor.guard.escrow import EscrowGap
from supervisor.guard.latency import Latency
from supervisor.guard.pnl import PnlSigma
from supervisor.guard.verdict import Verdict
from supervisor.logs import BurstLog
from supervisor.logs import get as get_logger
from supervisor.metrics import Metrics
from supervisor.rollout import Rollout

log = get_logger("pipeline")

MAX_PENDING_GRANTS = 100_000

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
        return {
            "decisions": self.decisions,
            "executions": self.executions,
            "rounds": self.rounds,
            "pnl": round(self.pnl, 6),
        }


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
        on_lookup: Callable[[Color, str, int], None],
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.rollout = rollout
        self._on_verdict = on_verdict
        self._on_hello = on_hello
        self._on_permit = on_permit
        self._on_reply = on_reply
        self._on_lookup = on_lookup
        t = config.triggers
        self.pnl = PnlSigma(t.pnl_sigma)
        self.latency = Latency(t.latency)
        # Not fresh: keys executed before this daemon started are only in Redis's permits.
        self.double_spend = DoubleSpend(t.double_spend, fresh=False)
        self.escrow = EscrowGap(t.escrow_gap)
        self.context: dict[Color, dict[str, Any]] = {}
        # Keys the daemon granted through a channel and not yet reported executed, with the
        # color and epoch of the grant (bounded: an agent that never reports costs nothing).
        self._grants: OrderedDict[str, tuple[Color, int]] = OrderedDict()
        self.events = 0
        # Plain counters for status and the live view (the metrics hold the same, labelled).
        self.tally = {c: Tally() for c in Color}
        self._bursts = {c: BurstLog() for c in Color}
        # Our own failures apart: a child's garbage must not hide them from the log.
        self._handler_bursts = {c: BurstLog() for c in Color}
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

    def _acting_candidate(self, color: Color) -> bool:
        s = self.rollout.state
        return s.candidate is color and s.active is color

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

    def _role(self, color: Color) -> str:
        """How the judging evaluators see a color: its baseline, or on trial."""
        s = self.rollout.state
        if color is s.candidate:
            return "candidate" if s.active is color else "other"
        return "stable" if color is s.stable else "other"

    def _decision(self, child: Child, msg: dict[str, Any]) -> None:
        color = child.color
        self.tally[color].decisions += 1
        self.metrics.decisions[color].inc()
        latency_ms = msg["latency_ms"]
        self.metrics.decision_latency[color].observe(latency_ms / 1000.0)
        verdict = self.latency.decision(color, latency_ms, time.monotonic(), self._role(color))
        if verdict is not None:
            self._on_verdict(verdict)

    def _execution(self, child: Child, msg: dict[str, Any]) -> None:
        color = child.color
        self.tally[color].executions += 1
        self.metrics.executions[color].inc()
        key = msg["key"]
        # Judged at the epoch its permit was granted at, when the daemon granted it: a flip
        # between the permit and this report must not make one execution look like two.
        granted = self._grants.pop(key, None)
        epoch = granted[1] if granted and granted[0] is color else self.rollout.state.epoch
        verdict = self.double_spend.execution(color, key, epoch, time.monotonic())
        if verdict is not None:
            self._on_verdict(verdict)
        elif self.double_spend.might_have_forgotten(key):
            self._on_lookup(color, key, epoch)  # the permit in Redis is the durable record

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
        self.escrow.event(
            child.color, msg["id"], msg["op"], msg.get("due_at"), msg.get("gap_s"), time.monotonic()
        )

    def _context(self, child: Child, msg: dict[str, Any]) -> None:
        ctx = self.context.setdefault(child.color, {})
        for key in ("volatility", "disputes_open", "auto_releases"):
            if key in msg:
                ctx[key] = msg[key]

    def granted(self, color: Color, key: str, epoch: int) -> None:
        """The daemon granted ``key`` to ``color`` at ``epoch`` (a channel permit)."""
        self._grants[key] = (color, epoch)
        if len(self._grants) > MAX_PENDING_GRANTS:
            self._grants.popitem(last=False)

    # events that do not come from a line -----------------------------------------------
    def child_exited(self, child: Child, returncode: int) -> None:
        if self._acting_candidate(child.color):
            verdict = critical.on_exit(self.config.triggers, child.color, returncode)
            if verdict is not None:
                self._on_verdict(verdict)

    def tick(self, children: dict[Color, Child], now: float) -> None:
        """The housekeeping tick: what is judged by time rather than by events."""
        self.check_heartbeats(children, now)
        for verdict in (self.latency.tick(now), self.escrow.tick(now, self.rollout.state.active)):
            if verdict is not None:
                self._on_verdict(verdict)

    def check_heartbeats(self, children: dict[Color, Child], now: float) -> None:
        """The acting candidate's heartbeat age against its timeout."""
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

    def loop_stalled(self, children: dict[Color, Child], seconds: float, now: float) -> None:
        """The daemon's own event loop stood still for ``seconds`` until ``now`` (a VM freeze,
        a SIGSTOP, a blocking call): the children's clocks move on by as much, so that the
        pause is never counted as their silence. Call it before the channels are read again;
        a heartbeat read afterwards sets its clock to the present anyway. No clock moves past
        ``now``: a stall spent handling a child's lines may have read its heartbeat late."""
        for child in children.values():
            last = child.last_heartbeat
            if last is not None:
                child.last_heartbeat = min(last + seconds, now)
        self.escrow.paused(seconds, now)

    def new_active(self, active: Color | None) -> None:
        """Who acts changed: a new candidate starts with a clean slate, and the escrows get a
        full gap of grace under their new keeper."""
        self.pnl.reset_candidate()
        self.latency.reset_candidate()
        self.escrow.acting_changed(time.monotonic(), active)

    def new_stable(self) -> None:
        self.pnl.reset_baseline()
        self.pnl.reset_candidate()
        self.latency.reset_candidate()

    def trigger_states(
        self,
        children: dict[Color, Child],
        fired: dict[tuple[str, Color], float],
    ) -> dict[str, dict[str, Any]]:
        """Every trigger, its threshold and, for both colors, its value, state and when it
        last fired (unix time): what ``agentsup triggers`` and the live view show."""
        now, wall = time.monotonic(), time.time()
        t = self.config.triggers
        out: dict[str, dict[str, Any]] = {}

        def entry(
            name: str,
            severity: str,
            enabled: bool,
            threshold: float | None,
            colors: dict[Color, dict[str, Any]],
        ) -> None:
            out[name] = {
                "severity": severity,
                "enabled": enabled,
                "threshold": threshold,
                "colors": {c.value: v for c, v in colors.items()},
            }

        def last(name: str, color: Color) -> float | None:
            return fired.get((name, color))

        for name, trig in (("exception", t.exception), ("auth", t.auth), ("exit", t.exit)):
            entry(
                name,
                "critical",
                trig.enabled,
                None,
                {
                    c: {
                        "value": None,
                        "state": "fired" if last(name, c) else "ok",
                        "last_fired": last(name, c),
                    }
                    for c in Color
                },
            )
        hb = {}
        for c, child in children.items():
            age = None if child.last_heartbeat is None else round(now - child.last_heartbeat, 3)
            timeout = child.cfg.heartbeat_timeout_s or t.heartbeat.timeout_s
            hb[c] = {
                "value": age,
                "threshold": timeout,
                "last_fired": last("heartbeat", c),
                "state": "fired"
                if last("heartbeat", c)
                else ("alert" if age is not None and age > timeout else "ok"),
            }
        entry("heartbeat", "critical", t.heartbeat.enabled, t.heartbeat.timeout_s, hb)
        judged: list[tuple[str, str, Callable[[Color], dict[str, Any]], bool]] = [
            (
                "double_spend",
                "critical",
                lambda c: self.double_spend.state(c, now),
                t.double_spend.enabled,
            ),
            ("pnl_sigma", "high", self.pnl.state, t.pnl_sigma.enabled),
            ("latency", "medium", lambda c: self.latency.state(c, now), t.latency.enabled),
            ("escrow_gap", "medium", lambda c: self.escrow.state(c, now), t.escrow_gap.enabled),
        ]
        for name, severity, state_of, enabled in judged:
            colors = {}
            for c in Color:
                st = dict(state_of(c))
                ago = st.get("last_fired_ago_s")
                st["last_fired"] = wall - ago if isinstance(ago, int | float) else last(name, c)
                st.setdefault("state", "fired" if st.get("fired") else "ok")
                colors[c] = st
            thresholds = [v["threshold"] for v in colors.values() if v.get("threshold") is not None]
            entry(name, severity, enabled, thresholds[0] if thresholds else None, colors)
        return out
