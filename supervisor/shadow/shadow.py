"""Shadow mode: the standby color decides on the live inputs and never acts.

While a shadow runs, every ``decision`` the color in charge reports is put on a bounded queue
(the pipeline's subscriber only enqueues: a slow shadow never slows the live color, and what
the queue cannot hold is dropped and counted); workers send each as a ``mirror`` (the same
inputs, its kind and decision id) to the shadow with ``Child.request`` and compare its
``mirror_result`` with the live output, field by field (:mod:`supervisor.shadow.compare`). A
sample of the live decisions (``[shadow] floor_fraction``) is mirrored back to the live color
itself, on a queue of its own: its disagreement with itself is the noise floor a field's
divergence must pass to be reported (:mod:`supervisor.shadow.stats`). When a live round ends
(an ``outcome`` with the decision's id), the outcome goes to the shadow as ``mirror_outcome``,
and the PnL its SDK hook gives its own decision (``mirror_scored``) is its would-be PnL.

It cannot act: the color is told the role ``shadow`` (allocation 0), and the permit script
refuses every color but the one in charge (in blue-green mode, the shadow is never it). An
``execution`` reported by the shadow is a critical event all the same: counted, logged and
alerted. The shadow ends on ``shadow stop``, on a flip that moves who acts or makes the shadow
color anything but standby, and when the shadow's process exits; its report stays readable
until the next one starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any, Final

from supervisor.children.process import Child, ChildState, ChildUnavailable
from supervisor.config import Color, PnlSigmaTrigger, ShadowSection
from supervisor.errors import Refused
from supervisor.guard.pnl import TRIGGER as PNL_TRIGGER
from supervisor.guard.pnl import PnlSigma
from supervisor.guard.verdict import Action, Severity, Verdict
from supervisor.logs import get as get_logger
from supervisor.metrics import Metrics
from supervisor.rollout.responder import alert_from_verdict
from supervisor.rollout.state import Mode
from supervisor.shadow.compare import Comparators, declared_by
from supervisor.shadow.session import Mirrored, Session, divergence
from supervisor.shadow.stats import fields_above

if TYPE_CHECKING:
    from supervisor.alerts import Alerter
    from supervisor.rollout import Change, Rollout

log = get_logger("shadow")

# Live decisions remembered, by id, until their outcome comes (the oldest forgotten first).
MAX_AWAITING: Final = 10_000


class Shadow:
    """The shadow of one deployment; :meth:`attach` subscribes it to the pipeline's bus."""

    def __init__(
        self,
        section: ShadowSection,
        *,
        pnl: PnlSigmaTrigger,
        rollout: Rollout,
        children: Mapping[Color, Child],
        metrics: Metrics,
        alerter: Alerter,
        spawn: Callable[[Coroutine[Any, Any, Any], str], asyncio.Task[Any]],
        push_roles: Callable[[], None],
        supervisor_name: str,
    ) -> None:
        self.section = section
        self._pnl = pnl  # the pnl_sigma trigger's settings, run on the would-be PnL too
        self.rollout = rollout
        self.children = children
        self.metrics = metrics
        self.alerter = alerter
        self._spawn = spawn
        self._push_roles = push_roles
        self._name = supervisor_name
        self.session: Session | None = None
        self.last: Session | None = None  # the run that ended, for its report
        self._task: asyncio.Task[Any] | None = None
        self._rng = random.Random()
        self._mirrors: asyncio.Queue[dict[str, Any]] = asyncio.Queue(section.queue_size)
        self._floor: asyncio.Queue[dict[str, Any]] = asyncio.Queue(section.queue_size)
        self._scores: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue(section.queue_size)
        for result in ("answered", "dropped", "timeout", "error"):
            metrics.shadow_mirrors.labels(result)

    def attach(self, pipeline: Any) -> None:
        """Subscribe to the pipeline's bus (``supervisor.pipeline.Pipeline``)."""
        pipeline.subscribe("decision", self._on_decision)
        pipeline.subscribe("outcome", self._on_outcome)
        pipeline.subscribe("execution", self._on_execution)

    # what the deployment asks -------------------------------------------------------------
    def overrides(self, color: Color, role: str) -> bool:
        """True when ``color``, about to be told ``role``, is to be told ``shadow`` instead."""
        s = self.session
        return s is not None and s.color is color and role == "standby"

    def describe(self) -> dict[str, Any] | None:
        """The status entry: the shadow running (None when none runs)."""
        s = self.session
        if s is None:
            return None
        t = s.tally
        return {
            "color": s.color.value,
            "live": s.live.value,
            "since": s.started_at,
            "mirrors": dict(t.mirrors),
            "compared": t.compared_total,
            "diverged": t.diverged_total,
            "executions": t.executions,
        }

    async def start(self, color: Color, by: str) -> dict[str, Any]:
        """``color`` (the standby, RUNNING, answering mirrors) becomes the shadow of the color
        in charge. Refused: shadow_in_progress, not_blue_green, nobody_in_charge, is_active,
        not_running, no_mirror."""
        if self.session is not None:
            raise Refused(
                "shadow_in_progress", f"{self.session.color} is the shadow already (shadow stop)"
            )
        state = self.rollout.state
        if state.mode is not Mode.BLUE_GREEN:
            raise Refused("not_blue_green", f"the rollout is in {state.mode} mode: no standby")
        live = state.active
        if live is None:
            raise Refused("nobody_in_charge", "no color is in charge: nothing to mirror")
        if color is live:
            raise Refused("is_active", f"{color} is in charge: the shadow is the standby")
        child = self.children[color]
        if child.state is not ChildState.RUNNING or child.hello is None:
            raise Refused("not_running", f"{color} is {child.state.value} and has not said hello")
        caps = child.hello.get("capabilities") or []
        if "mirror" not in caps:
            raise Refused("no_mirror", f"{color} does not answer mirrors (no on_mirror hook)")
        live_child = self.children[live]
        live_hello = live_child.hello or {}
        declared, problems = declared_by(live_hello)
        mine, more = declared_by(child.hello)
        declared.update(mine)  # the shadow's word on its own outputs wins over the live one's
        self._drain()
        session = Session(
            color=color,
            live=live,
            version=child.cfg.version,
            live_version=live_child.cfg.version,
            by=by,
            started_at=time.time(),
            comparators=Comparators(self.section, declared),
            scoring="mirror_outcome" in caps,
            floor="mirror" in (live_hello.get("capabilities") or []),
            problems=problems + more,
            detector=PnlSigma(self._pnl) if "mirror_outcome" in caps else None,
        )
        self.session = session
        self._task = self._spawn(self._run(session), "shadow")
        self.metrics.shadow_running.labels(color.value).set(1)
        log.info(
            "shadow_started",
            color=color,
            live=live,
            version=session.version,
            scoring=session.scoring,
            floor=session.floor,
            by=by,
            comparator_problems=session.problems or None,
        )
        self._push_roles()
        return self.report()

    async def stop(self, by: str) -> dict[str, Any]:
        """End the shadow run (refused: no_shadow); the color goes back to standby."""
        s = self.session
        if s is None:
            raise Refused("no_shadow", "no shadow is running")
        task = self._end(f"stopped by {by}")
        self._push_roles()
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                async with asyncio.timeout(5.0):
                    await asyncio.gather(task, return_exceptions=True)
        return self.report()

    def on_change(self, change: Change) -> None:
        """Before the roles of a committed change are pushed: a flip that moves who acts, or
        leaves the shadow color anything but standby, ends the shadow (the push that follows
        tells it standby, or its new role)."""
        s = self.session
        if s is None or change.kind != "flip":
            return
        state = self.rollout.state
        if (
            state.active is not s.live
            or state.mode is not Mode.BLUE_GREEN
            or self.rollout.assignment(s.color).role != "standby"
        ):
            self._end(f"flip: {change.reason}")

    def child_exited(self, color: Color) -> None:
        """A color's process ended: the shadow's ends the shadow run."""
        s = self.session
        if s is not None and s.color is color:
            self._end(f"{color} exited")

    def report(self) -> dict[str, Any]:
        """The running shadow's report, else the last one's (refused: no_shadow)."""
        from supervisor.shadow.report import build

        s = self.session or self.last
        if s is None:
            raise Refused("no_shadow", "no shadow has run since the daemon started")
        return build(s, self.section, running=s is self.session)

    # the end --------------------------------------------------------------------------------
    def _end(self, reason: str) -> asyncio.Task[Any] | None:
        s = self.session
        if s is None:
            return None
        s.stopped_at = time.time()
        s.stop_reason = reason
        self.session, self.last = None, s
        task, self._task = self._task, None
        if task is not None:
            task.cancel("the shadow run ended")
        self._drain()
        self.metrics.shadow_running.labels(s.color.value).set(0)
        t = s.tally
        log.info(
            "shadow_stopped",
            color=s.color,
            reason=reason,
            compared=t.compared_total,
            diverged=t.diverged_total,
            mirrors=t.mirrors,
            executions=t.executions,
        )
        return task

    def _drain(self) -> None:
        for queue in (self._mirrors, self._floor, self._scores):
            while not queue.empty():
                queue.get_nowait()

    # the pipeline's subscribers (the hot path: only counting and enqueueing) ---------------
    def _on_decision(self, child: Any, msg: dict[str, Any]) -> None:
        s = self.session
        if s is None or child.color is not s.live:
            return
        t = s.tally
        t.live_decisions += 1
        t.live_latency.append(msg["latency_ms"] / 1000.0)
        try:
            self._mirrors.put_nowait(msg)
        except asyncio.QueueFull:
            t.mirrors["dropped"] += 1
            self.metrics.shadow_mirrors.labels("dropped").inc()
        else:
            awaiting = s.awaiting
            awaiting[msg["id"]] = Mirrored(msg["kind"])
            if len(awaiting) > MAX_AWAITING:
                awaiting.popitem(last=False)
        if s.floor and self._rng.random() < self.section.floor_fraction:
            try:
                self._floor.put_nowait(msg)
            except asyncio.QueueFull:
                t.floor_mirrors["dropped"] += 1

    def _on_outcome(self, child: Any, msg: dict[str, Any]) -> None:
        s = self.session
        decision_id = msg.get("decision_id")
        if s is None or child.color is not s.live or decision_id is None or not s.scoring:
            return
        mirrored = s.awaiting.get(decision_id)
        if mirrored is None:
            return
        outcome = {k: v for k, v in msg.items() if k != "type"}
        if mirrored.answered:
            self._score(s, decision_id, outcome)
        else:
            mirrored.outcome = outcome  # sent once the shadow has decided

    def _on_execution(self, child: Any, msg: dict[str, Any]) -> None:
        s = self.session
        if s is None or child.color is not s.color:
            return
        s.tally.executions += 1
        self.metrics.shadow_executions.inc()
        message = (
            f"the shadow {s.color} reported an execution (key {msg['key'][:200]!r}, amount "
            f"{msg['amount']}): a shadow must never act; its permits are refused by the fence"
        )
        log.error(
            "shadow_execution",
            color=s.color,
            key=msg["key"][:200],
            amount=msg["amount"],
            decision_id=msg["decision_id"][:200],
        )
        verdict = Verdict("shadow_execution", Severity.CRITICAL, Action.ALERT, s.color, message)
        self.alerter.send(
            alert_from_verdict(
                verdict,
                supervisor_name=self._name,
                version=s.version,
                epoch=self.rollout.state.epoch,
                extra={"key": msg["key"][:200], "amount": msg["amount"]},
            )
        )

    def _score(self, s: Session, decision_id: str, outcome: dict[str, Any]) -> None:
        s.awaiting.pop(decision_id, None)
        try:
            self._scores.put_nowait((decision_id, outcome))
        except asyncio.QueueFull:
            s.tally.unscored += 1

    # the workers ------------------------------------------------------------------------
    async def _run(self, s: Session) -> None:
        n = self.section.concurrency
        async with asyncio.TaskGroup() as group:
            for i in range(n):
                group.create_task(self._mirror_worker(s), name=f"shadow-mirror-{i}")
                group.create_task(self._floor_worker(s), name=f"shadow-floor-{i}")
            group.create_task(self._score_worker(s), name="shadow-score")

    async def _ask(
        self, child: Child, msg: dict[str, Any], counts: dict[str, int]
    ) -> tuple[str, Any, float]:
        """One mirror: its result (answered, timeout, error, counted in ``counts``), the
        output and the round trip in seconds."""
        started = time.monotonic()
        try:
            reply = await child.request(msg, self.section.timeout_s)
        except TimeoutError:
            result, output = "timeout", None
        except ChildUnavailable:
            result, output = "error", None
        else:
            result, output = "answered", reply.get("output")
        counts[result] += 1
        return result, output, time.monotonic() - started

    async def _mirror_worker(self, s: Session) -> None:
        child = self.children[s.color]
        t = s.tally
        while True:
            msg = await self._mirrors.get()
            mirror = {
                "type": "mirror",
                "inputs": msg["inputs"],
                "kind": msg["kind"],
                "decision_id": msg["id"],
            }
            result, output, round_trip = await self._ask(child, mirror, t.mirrors)
            self.metrics.shadow_mirrors.labels(result).inc()
            decision_id = msg["id"]
            if result != "answered":
                s.awaiting.pop(decision_id, None)
                continue
            t.shadow_latency.append(round_trip)
            self._compare(s, msg, output)
            mirrored = s.awaiting.get(decision_id)
            if mirrored is not None:
                mirrored.answered = True
                if mirrored.outcome is not None:
                    self._score(s, decision_id, mirrored.outcome)

    def _compare(self, s: Session, msg: dict[str, Any], output: Any) -> None:
        t = s.tally
        comparator = s.comparators.of(msg["kind"])
        divergences = comparator.diverging(msg["output"], output)
        kind = t.shadow.add(msg["kind"], divergences)
        now = time.time()
        t.compared(now, divergences)
        if divergences:
            self.metrics.shadow_divergences.labels(kind).inc()
            item = divergence(msg, output, divergences, kind, now)
            t.keep_top(item, max(d.size for d in divergences))
        self._export(s, kind)

    async def _floor_worker(self, s: Session) -> None:
        child = self.children[s.live]
        t = s.tally
        while True:
            msg = await self._floor.get()
            mirror = {"type": "mirror", "inputs": msg["inputs"], "kind": msg["kind"]}
            result, output, round_trip = await self._ask(child, mirror, t.floor_mirrors)
            if result != "answered":
                continue
            t.floor_latency.append(round_trip)
            comparator = s.comparators.of(msg["kind"])
            divergences = comparator.diverging(msg["output"], output)
            self._export(s, t.floor.add(msg["kind"], divergences))

    async def _score_worker(self, s: Session) -> None:
        child = self.children[s.color]
        t = s.tally
        while True:
            decision_id, outcome = await self._scores.get()
            ask = {"type": "mirror_outcome", "decision_id": decision_id, "outcome": outcome}
            try:
                reply = await child.request(ask, self.section.timeout_s)
            except (TimeoutError, ChildUnavailable):
                t.unscored += 1
                continue
            pnl = reply.get("pnl")
            if pnl is None:
                t.unscored += 1
                continue
            t.scored(time.time(), float(outcome["pnl"]), float(pnl))
            self._judge(s, float(outcome["pnl"]), float(pnl))

    def _judge(self, s: Session, real: float, would_be: float) -> None:
        """The sequential detector of the live trigger (pnl_sigma) on the would-be PnL, the
        live rounds as its baseline: had the shadow been in charge, would it have been rolled
        back, and after how many rounds?"""
        detector = s.detector
        if detector is None:
            return
        detector.baseline_round(real)
        verdict = detector.candidate_round(s.color, would_be)
        if verdict is None or verdict.trigger != PNL_TRIGGER or s.detector_fired is not None:
            return
        s.detector_fired = {"round": detector.rounds, "message": verdict.message}
        log.warning(
            "shadow_pnl_detector_fired",
            color=s.color,
            round=detector.rounds,
            message=verdict.message,
            hint="had the shadow been in charge, pnl_sigma would have rolled it back",
        )

    def _export(self, s: Session, kind: str) -> None:
        """The gauge of fields above the floor, for ``kind``."""
        above = fields_above(s.tally, kind, z=self.section.floor_z)
        self.metrics.shadow_fields_diverging.labels(kind).set(above)
