"""Between the steps of a canary: what both colors do goes to the judge, the judge looks
within the step and judges it at its end, and the step moves on, holds or is aborted.

- **Within the step**, every ``[canary.judge] look_s``: the running look (strict, see
  :mod:`supervisor.rollout.judge`). A failure aborts at once: the candidate's version is
  rejected, stable takes the whole capital back in one flip, and the failing metric with its
  numbers goes to the flip's reason, the log (``canary_aborted``), the metrics and the webhook.
- **At the step's end** (the candidate has played ``min_rounds`` rounds in it, and it has lasted
  ``min_seconds``): the step's judgement. ``pass``: the next step (``auto_promote``; else it
  waits, ready, for ``agentsup canary promote``); at the last step the candidate is in charge
  alone, on probation. ``fail``: abort, as above. ``hold`` (no data, or a difference not yet
  proven): never a promotion; judged again once as many rounds more have come, and alerted
  on (``canary_held``) once the step has lasted ``min_seconds + hold_alert_s``.
- **Any moment**: the critical triggers see the candidate on trial, and the responder's
  rollback aborts the canary (:class:`~supervisor.rollout.canary.Canary`).

The tests run in a thread (their sorting would hold the event loop for milliseconds); the
samples are copied first, on the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any, Literal

from supervisor.alerts import Alerter
from supervisor.arbiter.durable import DurableWriteError
from supervisor.config import Color, Config, check_canary_steps
from supervisor.errors import RedisUnavailable, Refused
from supervisor.logs import get as get_logger
from supervisor.metrics import Metrics
from supervisor.rollout.judge import Judge, Judgement
from supervisor.rollout.rollout import Rollout
from supervisor.rollout.state import Change, Mode

log = get_logger("canary")

JUDGE_TRIGGER = "canary_judge"  # the rollbacks_total{trigger} label of the judge's aborts
StepState = Literal["running", "held", "ready", "gated"]


class Stepper:
    """The canary's steps, judged. ``spawn`` runs a coroutine as a tracked job."""

    def __init__(
        self,
        config: Config,
        rollout: Rollout,
        metrics: Metrics,
        alerter: Alerter,
        spawn: Callable[[Coroutine[Any, Any, Any]], Any],
        *,
        children: Mapping[Color, Any],
        stakes_from_permits: bool,
    ) -> None:
        self.config = config
        self.children = children
        self.cfg = config.canary
        self.rollout = rollout
        self.metrics = metrics
        self.alerter = alerter
        self._spawn = spawn
        self.judge = Judge(self.cfg.judge, stakes_from_permits=stakes_from_permits)
        self._step: tuple[Color, float] | None = None  # (candidate, since) the samples are of
        # The deploy gates that are closed now ("gate: why" each; supervisor/gates): a step
        # the judge passes waits while any is (state "gated"); the operator's promote does not.
        self.gates_closed: Callable[[], list[str]] = list
        self._reset_step()

    def _reset_step(self) -> None:
        self.judgement: Judgement | None = None  # the last look or judgement, for status
        self.judged_at: float | None = None
        self.judged_kind: Literal["running", "step"] | None = None
        self.state: StepState = "running"
        self.due_rounds = self.cfg.min_rounds
        self.held_alerted = False
        self._last_look = 0.0
        self._busy = False
        self.metrics.canary_held.set(0)

    # what both colors do ------------------------------------------------------------------
    def attach(self, pipeline: Any) -> None:
        """Subscribe to the pipeline's bus (``supervisor.pipeline.Pipeline``)."""
        pipeline.subscribe("decision", self._decision)
        pipeline.subscribe("execution", self._execution)
        pipeline.subscribe("outcome", self._outcome)
        pipeline.subscribe("error", self._error)

    def _candidate(self) -> Color | None:
        """The candidate while a canary runs (and the samples are of its current step)."""
        s = self.rollout.state
        if s.mode is not Mode.CANARY or s.canary is None or s.candidate is None:
            return None
        key = (s.candidate, s.canary.since)
        if key != self._step:
            self._step = key
            self.judge.new_step()
            self._reset_step()
        return s.candidate

    def _decision(self, child: Any, msg: dict[str, Any]) -> None:
        if self._candidate() is not None:
            self.judge.decision(child.color, msg["kind"], msg["latency_ms"])

    def _execution(self, child: Any, msg: dict[str, Any]) -> None:
        if self._candidate() is not None:
            share = self.rollout.assignment(child.color).allocation
            self.judge.execution(child.color, msg["decision_id"], msg["amount"], share)

    def _outcome(self, child: Any, msg: dict[str, Any]) -> None:
        if self._candidate() is not None:
            decision_id = msg.get("decision_id")
            self.judge.outcome(child.color, msg["pnl"], decision_id)

    def _error(self, child: Any, msg: dict[str, Any]) -> None:
        if self._candidate() is not None:
            self.judge.error(child.color)

    def asked(self, color: Color, amount: float) -> None:
        """A permit asked for ``amount`` on ``color``'s channel (before the fence answers)."""
        if self._candidate() is not None:
            self.judge.asked(color, amount, self.rollout.assignment(color).allocation)

    # the looks ----------------------------------------------------------------------------
    def tick(self, now: float) -> None:
        """The housekeeping tick (wall clock): a look when one is due, the hold's alert."""
        candidate = self._candidate()
        c = self.rollout.state.canary
        if candidate is None or c is None:
            self.metrics.canary_held.set(0)
            return
        age = now - c.since
        if (
            not self.held_alerted
            and self.state != "ready"
            and age >= self.cfg.min_seconds + self.cfg.hold_alert_s
        ):
            self._held_too_long(candidate, age)
        if self.state == "gated" and not self._busy and not self.gates_closed():
            self._busy = True
            self._spawn(self._ungated(candidate))
            return
        if self._busy or now - self._last_look < self.cfg.judge.look_s:
            return
        self._last_look = now
        due = self.judge.rounds(candidate) >= self.due_rounds and age >= self.cfg.min_seconds
        self._busy = True
        # Passed and waiting (for an operator, or for the gates): only the running looks,
        # which still abort a candidate that goes bad meanwhile.
        self._spawn(self._look(candidate, due and self.state not in ("ready", "gated"), now))

    async def _look(self, candidate: Color, due: bool, now: float) -> None:
        step = self._step
        try:
            running = self.judge.prepare(candidate, running=True)
            at_end = self.judge.prepare(candidate) if due else None
            judgement = await asyncio.to_thread(running.run)
            if self._step != step:
                return  # the step changed meanwhile: these samples are of the last one
            if judgement.verdict == "fail":
                self._judged(judgement, "running", now)
                await self._abort(candidate, judgement, "running")
                return
            if at_end is None:
                if self.judged_kind != "step":
                    self._judged(judgement, "running", now)
                return
            judgement = await asyncio.to_thread(at_end.run)
            if self._step != step:
                return
            self._judged(judgement, "step", now)
            for row in judgement.rows:
                self.metrics.canary_verdicts.labels(row.metric, row.verdict).inc()
            if judgement.verdict == "fail":
                await self._abort(candidate, judgement, "step")
            elif judgement.verdict == "pass":
                await self._passed(candidate)
            else:
                self._hold(candidate, judgement)
        finally:
            if self._step == step:
                self._busy = False

    def _judged(self, judgement: Judgement, kind: Literal["running", "step"], now: float) -> None:
        self.judgement, self.judged_kind, self.judged_at = judgement, kind, now

    async def _abort(self, candidate: Color, judgement: Judgement, kind: str) -> None:
        if kind == "running":
            for row in judgement.failed:
                self.metrics.canary_verdicts.labels(row.metric, row.verdict).inc()
        why = judgement.reason()
        c = self.rollout.state.canary
        percent = c.percent if c is not None else None
        started = time.monotonic()
        try:
            change = await self.rollout.canary_abort(
                f"canary_abort: {why}",
                "judge",
                automatic=True,
                trigger=JUDGE_TRIGGER,
                started=started,
            )
        except (RedisUnavailable, Refused, DurableWriteError) as exc:
            log.error(
                "canary_abort_not_committed",
                error=str(exc),
                reason=why,
                hint="looked at again on the next tick; the fence still holds the split",
            )
            return
        if change is None:
            return
        log.error(
            "canary_aborted",
            candidate=candidate,
            version=self.rollout.versions[candidate],
            percent=percent,
            look=kind,
            reason=why,
            epoch=change.epoch,
            metrics=[r.as_dict() for r in judgement.failed],
            hint="the version is rejected; stable has the whole capital back",
        )
        self._alert(candidate, "critical", f"canary aborted at {percent:g}%: {why}", percent)

    async def _ungated(self, candidate: Color) -> None:
        step = self._step
        try:
            log.info("canary_step_ungated", candidate=candidate, hint="the gates opened")
            self.state = "running"
            await self._passed(candidate)
        finally:
            if self._step == step:
                self._busy = False

    async def _passed(self, candidate: Color) -> None:
        c = self.rollout.state.canary
        assert c is not None
        closed = self.gates_closed()
        if closed:
            if self.state != "gated":
                log.warning(
                    "canary_step_gated",
                    candidate=candidate,
                    percent=c.percent,
                    closed=closed,
                    hint="the step passed; it moves on once the deploy gates open (held, "
                    "not aborted)",
                )
            self.state = "gated"
            return
        if not self.cfg.auto_promote:
            self.state = "ready"
            log.info(
                "canary_step_ready",
                candidate=candidate,
                percent=c.percent,
                hint="`agentsup canary promote` moves it on ([canary] auto_promote = false)",
            )
            return
        try:
            change = await self.rollout.canary_promote(
                "judge", why="judge: pass", expect_since=c.since
            )
        except (RedisUnavailable, Refused, DurableWriteError) as exc:
            log.warning("canary_promote_not_committed", error=str(exc), percent=c.percent)
            return
        log.info(
            "canary_step_passed",
            candidate=candidate,
            percent=c.percent,
            now=self.rollout.state.canary.percent if self.rollout.state.canary else 100.0,
            epoch=change.epoch,
        )

    def _hold(self, candidate: Color, judgement: Judgement) -> None:
        self.state = "held"
        self.due_rounds += self.cfg.min_rounds  # judged again once as many rounds more came
        log.info(
            "canary_step_held",
            candidate=candidate,
            metrics={r.metric: r.verdict for r in judgement.rows},
            next_at_rounds=self.due_rounds,
            hint="no data or a difference not yet proven: never promoted; looked at again",
        )

    def _held_too_long(self, candidate: Color, age: float) -> None:
        self.held_alerted = True
        c = self.rollout.state.canary
        percent = c.percent if c is not None else 0.0
        rounds = self.judge.rounds(candidate)
        why = (
            ", ".join(
                f"{r.metric} {r.verdict}"
                for r in self.judgement.rows
                if r.verdict in ("no_data", "inconclusive")
            )
            if self.judgement is not None and self.judged_kind == "step"
            else f"the candidate played {rounds} of {self.cfg.min_rounds} rounds"
        )
        self.metrics.canary_held.set(1)
        log.warning(
            "canary_held",
            candidate=candidate,
            percent=percent,
            seconds=round(age, 1),
            rounds=rounds,
            reason=why,
            hint="the step neither passes nor fails: check the candidate acts and reports "
            "its rounds; `agentsup canary status`; promote or abort by hand",
        )
        message = f"canary held at {percent:g}% for {age:.0f} s: {why}"
        self._alert(candidate, "medium", message, percent)

    def _alert(self, candidate: Color, severity: str, message: str, percent: float | None) -> None:
        self.metrics.alerts_sent.labels(JUDGE_TRIGGER).inc()
        self.alerter.send(
            {
                "trigger": JUDGE_TRIGGER,
                "severity": severity,
                "color": candidate.value,
                "version": self.rollout.versions[candidate],
                "message": message,
                "percent": percent,
                "epoch": self.rollout.state.epoch,
                "at": time.time(),
                "supervisor": self.config.supervisor.name,
            }
        )

    # what the operator asks (agentsup canary ...) -------------------------------------------
    async def start(self, color: Color, steps: Sequence[float] | None, by: str) -> Change:
        """``canary start COLOR [--steps]`` (refused: bad_steps, not_running, direct_permits
        and the rollout's own refusals)."""
        if self.config.redis.child_access == "permit":
            # The permit script counts stakes in {ns}:alloc, which a child's own Redis user
            # may not write (and must not: it could reset its stakes).
            raise Refused(
                "direct_permits",
                'a canary needs permits through the channel (redis.child_access = "permit")',
            )
        try:
            chosen = tuple(check_canary_steps(list(steps))) if steps else tuple(self.cfg.steps)
        except ValueError as exc:
            raise Refused("bad_steps", str(exc)) from None
        child = self.children[color]
        if child.state.value != "RUNNING":
            raise Refused("not_running", f"{color} is {child.state.value}, not RUNNING")
        return await self.rollout.canary_start(
            color,
            chosen,
            by,
            allowance=self.cfg.allowance,
            start_amount=self.cfg.start_amount,
        )

    async def set(self, percent: float, by: str) -> Change:
        """``canary set PCT``: that share now, as a new step (100: promoted). The operator's
        own move, not gated (as ``switch`` is not): the gates hold the judge's steps."""
        return await self.rollout.canary_set(percent, by, why=f"set by {by}")

    async def promote(self, full: bool, by: str) -> Change:
        """``canary promote [--full]``: the next step now, or straight to 100 % (the
        operator's own move, not gated; a step held by the gates is moved on by it)."""
        return await self.rollout.canary_promote(by, full=full, why=f"promoted by {by}")

    async def abort(self, reason: str, by: str, started: float) -> Change:
        """``canary abort``: stable takes all back (an operator's abort rejects nothing)."""
        change = await self.rollout.canary_abort(reason, by, trigger="manual", started=started)
        assert change is not None  # only automatic aborts can be a no-op
        return change

    async def status(self) -> dict[str, Any]:
        """``canary status``: the canary running (or None), and how the last one ended."""
        alloc: dict[str, str] | None = None
        with contextlib.suppress(RedisUnavailable, OSError):
            alloc = await self.rollout.arbiter.alloc()
        last = None
        if alloc and alloc.get("mode") == "off":
            last = {
                "ended": alloc.get("ended"),
                "ended_at": _float(alloc.get("ended_at")),
                "percent": _float(alloc.get("percent")),
                "stakes": {k.value: _float(alloc.get(f"stake_{k.value}")) for k in Color},
            }
        return {
            "mode": self.rollout.state.mode.value,
            "canary": self.describe(alloc),
            "last": last,
            "redis": "up" if alloc is not None else "down",
        }

    # what is shown ------------------------------------------------------------------------
    def on_change(self, change: Change) -> None:
        """After every committed change: the gauges of the split."""
        s = self.rollout.state
        for color in Color:
            share = self.rollout.assignment(color).allocation
            self.metrics.canary_allocation.labels(color.value).set(share)
        c = s.canary if s.mode is Mode.CANARY else None
        self.metrics.canary_step.set(c.step + 1 if c is not None else 0)
        if c is None:
            self.metrics.canary_held.set(0)

    def describe(self, alloc: dict[str, str] | None) -> dict[str, Any] | None:
        """The canary's status (None when none runs); ``alloc``: the allocation hash as read
        from Redis just now (None when Redis is down)."""
        s = self.rollout.state
        c = s.canary
        candidate = self._candidate()
        if candidate is None or c is None:
            return None
        fields = alloc or {}
        stakes = {k.value: _float(fields.get(f"stake_{k.value}")) for k in Color}
        total = sum(v for v in stakes.values() if v is not None)
        return {
            "candidate": candidate.value,
            "stable": s.stable.value,
            "version": self.rollout.versions[candidate],
            "steps": list(c.steps),
            "step": c.step + 1,
            "percent": c.percent,
            "since": c.since,
            "allocation": {k.value: self.rollout.assignment(k).allocation for k in Color},
            "allowance": c.allowance,
            "start_amount": c.start_amount,
            "stakes": stakes,
            "share": {
                k: (round(v / total, 6) if v is not None and total > 0 else None)
                for k, v in stakes.items()
            },
            "permits": {k.value: int(_float(fields.get(f"n_{k.value}")) or 0) for k in Color},
            "rounds": {k.value: self.judge.rounds(k) for k in Color},
            "min_rounds": self.due_rounds,
            "min_seconds": self.cfg.min_seconds,
            "state": self.state,
            "gates_closed": self.gates_closed() if self.state == "gated" else [],
            "auto_promote": self.cfg.auto_promote,
            "judge": None
            if self.judgement is None
            else {
                "verdict": self.judgement.verdict,
                "look": self.judged_kind,
                "at": self.judged_at,
                "metrics": [r.as_dict() for r in self.judgement.rows],
            },
        }


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None
