"""The handoff: an upgrade as a state transition, not a restart.

``agentsup handoff green`` with blue in charge::

    quiesce blue ──► quiesced          blue finishes what it has in flight, takes nothing new
    snapshot_request ──► snapshot      its state, in a schema green reads (blue migrates down)
    check size and age, store          fsynced in state_dir and in Redis: acknowledged
    restore green ──► restored         green loads it (migrating up) and says its digest
    compare digests                    the state green received is the state blue gave
    flip (switch green)                the epoch bump: the point of no return
    resume blue                        standby now, warm for the next upgrade

From ``quiesce`` to green told it is active nobody may act: blue is quiesced (its SDK and the
daemon both refuse its permits), green is still standby. Any failure before the flip (a
refusal, a timeout, a digest mismatch, a stale snapshot, a restore that raises) resumes blue,
which never stopped being in charge, and records why. The progress is kept in ``{ns}:handoff``
and ``state_dir/handoff.json`` (:mod:`supervisor.handoff.record`): a daemon killed at any step
and started again finishes the handoff (green in charge: past the flip) or undoes it (blue in
charge), restores the stored state into the fresh process of the color in charge, and says
which in its log.

After a handoff, until the candidate is confirmed, a rollback carries the state back
(:mod:`supervisor.handoff.carry`); the acting color's state is also snapshotted every
``snapshot_interval_s``, on demand (``agentsup snapshot``) and at SIGTERM.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

from redis.asyncio import Redis
from redis.exceptions import RedisError

from supervisor.alerts import Alerter
from supervisor.arbiter.durable import DurableWriteError
from supervisor.children.process import Child, ChildState
from supervisor.config import Color, Config
from supervisor.errors import RedisUnavailable, Refused
from supervisor.handoff import carry, transfer
from supervisor.handoff.errors import HandoffFailed
from supervisor.handoff.journal import JOURNALED, EventJournal
from supervisor.handoff.record import HandoffRecord, Phase, Records
from supervisor.handoff.snapshot import Snapshot, from_reply
from supervisor.handoff.store import SnapshotStore
from supervisor.logs import get as get_logger
from supervisor.metrics import Metrics
from supervisor.rollout import Change, Rollout
from supervisor.tasks import Tasks

log = get_logger("handoff")

T = TypeVar("T")
# How often Redis is checked for the acknowledged snapshots (an HGET per color).
CHECK_REDIS_S = 5.0
Switch = Callable[[Color, str, float], Awaitable[Change]]


class Bus(Protocol):
    """What the handoff needs of the pipeline: to hear the events it journals."""

    def subscribe(
        self, msg_type: str, subscriber: Callable[[Child, dict[str, Any]], None]
    ) -> None: ...


class Steps:
    """Each step's duration, into the log, the metric and the operator's result."""

    def __init__(self, metrics: Metrics, handoff: str) -> None:
        self.metrics = metrics
        self.handoff = handoff
        self.done: list[tuple[str, float]] = []

    async def timed(self, step: str, work: Awaitable[T]) -> T:
        started = time.monotonic()
        try:
            return await work
        finally:
            seconds = time.monotonic() - started
            self.done.append((step, seconds))
            self.metrics.handoff_duration.labels(step).observe(seconds)
            log.info("handoff_step", handoff=self.handoff, step=step, ms=round(seconds * 1e3, 3))

    def as_list(self) -> list[dict[str, Any]]:
        return [{"step": step, "ms": round(s * 1000, 3)} for step, s in self.done]

    def line(self) -> str:
        return ", ".join(f"{step} {s * 1000:.1f} ms" for step, s in self.done)


class Handoffs:
    """Every handoff of one deployment: the store, the record, the journal, the holds.

    A color is *held* while it must not act: the source of a handoff from its quiesce on,
    stable after a rollback until it has the candidate's state, the color in charge after a
    restart until the stored state is back in it. A held color is sent ``quiesce`` (again at
    each hello) and the daemon refuses its permits (:meth:`holds`)."""

    def __init__(
        self,
        config: Config,
        *,
        redis: Redis,
        children: Mapping[Color, Child],
        rollout: Rollout,
        switch: Switch,
        metrics: Metrics,
        alerter: Alerter,
        tasks: Tasks,
    ) -> None:
        self.cfg = config.handoff
        self.name = config.supervisor.name
        sup = config.supervisor
        self.children = children
        self.rollout = rollout
        self._switch = switch
        self.metrics = metrics
        self.alerter = alerter
        self.tasks = tasks
        self.store = SnapshotStore(redis, sup.namespace, sup.state_dir)
        self.records = Records(redis, sup.namespace, sup.state_dir)
        self.journal = EventJournal(sup.state_dir)
        self.inbox = transfer.Inbox()
        self.record: HandoffRecord | None = None
        self.held: dict[Color, str] = {}  # color -> why it is held quiesced
        self.busy: str | None = None  # what is running: one handoff or snapshot at a time
        self.started = time.time()
        # The latest snapshot of the candidate that stable can read (after a handoff).
        self.carry_base: Snapshot | None = None
        self._hello = {c: asyncio.Event() for c in Color}
        self._checked = 0.0  # when Redis was last checked for the snapshots (wall clock)
        self._checking = False
        metrics.snapshot_interval.set(self.cfg.snapshot_interval_s)

    # -- wiring ----------------------------------------------------------------------------
    def attach(self, bus: Bus) -> None:
        for msg_type in JOURNALED:
            bus.subscribe(msg_type, lambda child, msg: self.journal.record(child.color, msg))

    def on_reply(self, child: Child, msg: dict[str, Any]) -> bool:
        """A reply from a child: True when it was a chunk, taken by the inbox."""
        return self.inbox.offer(child, msg)

    def on_hello(self, child: Child) -> None:
        """Before its role is pushed: a held color is quiesced first, so that it never acts
        on a role it must not use yet."""
        if child.color in self.held:
            child.send({"type": "quiesce", "request_id": uuid.uuid4().hex})
        self._hello[child.color].set()

    def holds(self, color: Color) -> bool:
        """True while ``color`` must not act (its permits are refused)."""
        return color in self.held

    def hold(self, color: Color, why: str) -> None:
        self.held[color] = why
        self.children[color].send({"type": "quiesce", "request_id": uuid.uuid4().hex})

    def release(self, color: Color) -> None:
        """Let ``color`` act again (as its role allows)."""
        self.held.pop(color, None)
        transfer.resume(self.children[color])

    def job(self, coro: Awaitable[Any], name: str) -> None:
        async def run() -> None:
            await coro

        self.tasks.job(run(), name)

    # -- the handoff ----------------------------------------------------------------------
    async def handoff(self, target: Color, *, dry_run: bool, by: str) -> dict[str, Any]:
        """Hand the state of the color in charge to ``target``, then flip to it (unless
        ``dry_run``). Returns the result (each step's duration); raises
        :class:`~supervisor.errors.Refused` when it cannot start or was aborted (the old
        color resumed, in charge). Runs as a job of its own: a client that goes away does
        not cut a handoff in half."""
        source = self._precheck(target)
        self.busy = f"handoff to {target}"
        task = self.tasks.job(self._run(source, target, dry_run, by), "handoff")
        outcome: dict[str, Any] | Refused = await asyncio.shield(task)
        if isinstance(outcome, Refused):
            raise outcome
        return outcome

    def _precheck(self, target: Color) -> Color:
        if self.busy is not None:
            raise Refused("handoff_in_progress", f"busy: {self.busy}")
        state = self.rollout.state
        source = state.active
        if source is None:
            raise Refused("no_color_active", "no color is in charge: nothing to hand over")
        if source is target:
            raise Refused("already_active", f"{target} is already in charge (epoch {state.epoch})")
        for color in (source, target):
            problem = self.capable(color)
            if problem is not None:
                self.metrics.handoffs.labels("refused").inc()
                log.warning("handoff_refused", source=source, target=target, reason=problem)
                code = "not_running" if "RUNNING" in problem else "no_snapshot_capability"
                raise Refused(code, problem)
        src_reads = transfer.reads(self.children[source])
        dst_reads = transfer.reads(self.children[target])
        if src_reads and dst_reads and not set(src_reads) & set(dst_reads):
            self.metrics.handoffs.labels("refused").inc()
            raise Refused(
                "no_common_schema",
                f"{target} reads {dst_reads} and {source} can write {src_reads}: no migration "
                "joins them",
            )
        return source

    def capable(self, color: Color) -> str | None:
        """Why ``color`` cannot take part in a handoff, or None."""
        child = self.children[color]
        version = child.cfg.version
        if child.state is not ChildState.RUNNING:
            return f"{color} is {child.state.value}, not RUNNING"
        if child.hello is None:
            return (
                f"{color} {version} does not speak the protocol (it never said hello): an "
                "agent written the seed's way has no snapshot hook to hand its state over"
            )
        caps = child.hello.get("capabilities") or []
        if "snapshot" not in caps:
            return (
                f"{color} {version} did not announce the 'snapshot' capability: it has no "
                "on_snapshot/on_restore hooks, so it can neither give nor take a state"
            )
        return None

    async def _run(
        self, source: Color, target: Color, dry_run: bool, by: str
    ) -> dict[str, Any] | Refused:
        try:
            return await self._steps(source, target, dry_run, by)
        finally:
            self.busy = None

    async def _steps(
        self, source: Color, target: Color, dry_run: bool, by: str
    ) -> dict[str, Any] | Refused:
        cfg = self.cfg
        rec = HandoffRecord(
            id=uuid.uuid4().hex[:12],
            source=source,
            target=target,
            epoch=self.rollout.state.epoch,
            by=by,
            dry_run=dry_run,
        )
        try:
            await self.records.write(rec, durable=True)  # before anything changes
        except DurableWriteError as exc:
            return Refused("state_write_failed", f"cannot record the handoff: {exc}")
        self.record = rec
        self.journal.follow(None)  # a new handoff: whatever was to be carried back is over
        self.carry_base = None
        steps = Steps(self.metrics, rec.id)
        src, dst = self.children[source], self.children[target]
        log.info("handoff_started", handoff=rec.id, source=source, target=target, dry_run=dry_run)
        window = time.monotonic()
        self.held[source] = "handoff"
        flipped = False
        try:
            await steps.timed("quiesce", transfer.quiesce(src, cfg.timeout_s))
            await self._phase(rec, Phase.SNAPSHOTTING)
            reply = await steps.timed(
                "snapshot",
                transfer.snapshot(
                    src,
                    self.inbox,
                    accept=transfer.reads(dst),
                    within_s=cfg.timeout_s,
                    max_bytes=cfg.max_bytes,
                ),
            )
            snap = from_reply(
                source,
                src.cfg.version,
                reply,
                max_bytes=cfg.max_bytes,
                max_age_s=cfg.max_age_s,
                handoff=rec.id,
            )
            await self._phase(rec, Phase.STORING)
            snap = await steps.timed("store", self._store(snap))
            rec.snapshot, rec.digest = snap.id, snap.digest
            await self._phase(rec, Phase.RESTORING)
            reported = await steps.timed(
                "restore", transfer.restore(dst, snap, within_s=cfg.timeout_s)
            )
            if reported != snap.digest:
                raise HandoffFailed(
                    "verify",
                    "digest_mismatch",
                    f"{target} reports digest {reported[:16]}… for the state it received; "
                    f"{snap.digest[:16]}… was sent: the state was not received as given",
                )
            if dry_run:
                return await self._finish_dry_run(rec, snap, steps, window)
            await self._phase(rec, Phase.FLIPPING)
            self.journal.follow(target)  # from the flip on, its events may have to go back
            change = await steps.timed("flip", self._flip(source, target, by))
            flipped = True
        except HandoffFailed as exc:
            return await self._abort(rec, exc, steps)
        finally:
            if not flipped:
                self.release(source)
                if rec.phase is not Phase.COMPLETED:
                    self.journal.follow(None)
        return await self._complete(rec, snap, change, steps, window)

    async def _phase(self, rec: HandoffRecord, phase: Phase) -> None:
        rec.phase = phase
        try:
            await self.records.write(rec)
        except DurableWriteError as exc:
            raise HandoffFailed("record", "state_write_failed", str(exc)) from None

    async def _store(self, snap: Snapshot) -> Snapshot:
        try:
            snap = await self.store.save(snap)
        except DurableWriteError as exc:
            raise HandoffFailed("store", "state_write_failed", str(exc)) from None
        except (RedisError, OSError) as exc:
            raise HandoffFailed(
                "store", "redis_unavailable", f"Redis did not take the snapshot: {exc}"
            ) from None
        self._export(snap.color)
        return snap

    async def _flip(self, source: Color, target: Color, by: str) -> Change:
        if self.rollout.state.active is not source:
            raise HandoffFailed(
                "flip", "who_acts_changed", f"{self.rollout.state.active} took charge meanwhile"
            )
        try:
            return await self._switch(target, f"{by} (handoff)", time.monotonic())
        except (Refused, RedisUnavailable, DurableWriteError) as exc:
            state = self.rollout.state
            if state.active is target:  # committed after all (a reply lost, then reconciled)
                return Change("flip", target, source, state.epoch, "switch", by)
            raise HandoffFailed("flip", getattr(exc, "code", "refused"), str(exc)) from None

    async def _complete(
        self, rec: HandoffRecord, snap: Snapshot, change: Change, steps: Steps, window: float
    ) -> dict[str, Any]:
        seconds = time.monotonic() - window
        self.metrics.handoff_duration.labels("window").observe(seconds)
        self.held.pop(rec.source, None)
        transfer.resume(self.children[rec.source])  # standby now, warm for the next one
        rec.phase = Phase.COMPLETED
        await self._write_quietly(rec)
        self.metrics.handoffs.labels("completed").inc()
        log.info(
            "handoff_completed",
            handoff=rec.id,
            source=rec.source,
            target=rec.target,
            epoch=change.epoch,
            digest=snap.digest,
            bytes=snap.size,
            window_ms=round(seconds * 1000, 3),
            steps=steps.line(),
        )
        return self._result(rec, snap, steps, seconds, epoch=change.epoch)

    async def _finish_dry_run(
        self, rec: HandoffRecord, snap: Snapshot, steps: Steps, window: float
    ) -> dict[str, Any]:
        seconds = time.monotonic() - window
        rec.phase = Phase.DRY_RUN
        await self._write_quietly(rec)
        self.metrics.handoffs.labels("dry_run").inc()
        log.info("handoff_dry_run", handoff=rec.id, target=rec.target, steps=steps.line())
        return self._result(rec, snap, steps, seconds, epoch=self.rollout.state.epoch)

    def _result(
        self, rec: HandoffRecord, snap: Snapshot, steps: Steps, window: float, *, epoch: int
    ) -> dict[str, Any]:
        return {
            "id": rec.id,
            "from": rec.source.value,
            "to": rec.target.value,
            "result": rec.phase.value,
            "dry_run": rec.dry_run,
            "epoch": epoch,
            "snapshot": snap.meta(),
            "steps": steps.as_list(),
            "window_ms": round(window * 1000, 3),
        }

    async def _abort(self, rec: HandoffRecord, exc: HandoffFailed, steps: Steps) -> Refused:
        rec.phase = Phase.ABORTED
        rec.reason = f"{exc.step}: {exc.reason}: {exc}"
        await self._write_quietly(rec)
        self.metrics.handoffs.labels("aborted").inc()
        log.warning(
            "handoff_aborted",
            handoff=rec.id,
            step=exc.step,
            reason=exc.reason,
            message=str(exc),
            steps=steps.line(),
            hint=f"{rec.source} was resumed and is still in charge; nothing flipped",
        )
        self._alert(
            "warning",
            f"handoff {rec.source} -> {rec.target} aborted at {exc.step} ({exc.reason}): {exc}; "
            f"{rec.source} resumed, still in charge",
            rec.source,
        )
        done = steps.line() or "none"
        return Refused(
            "handoff_aborted",
            f"aborted at {exc.step} ({exc.reason}): {exc}; {rec.source} resumed and still in "
            f"charge (steps: {done})",
        )

    async def _write_quietly(self, rec: HandoffRecord) -> None:
        try:
            await self.records.write(rec)
        except DurableWriteError as exc:
            log.error(
                "handoff_record_unwritten",
                handoff=rec.id,
                error=str(exc),
                hint="the outcome is in this log; the disk refuses writes",
            )

    def _alert(self, severity: str, message: str, color: Color) -> None:
        self.metrics.alerts_sent.labels("handoff").inc()
        self.alerter.send(
            {
                "trigger": "handoff",
                "severity": severity,
                "action": "alert",
                "color": color.value,
                "message": message,
                "epoch": self.rollout.state.epoch,
                "at": time.time(),
                "supervisor": self.name,
            }
        )

    # -- snapshots: on demand, periodic, at the stop ----------------------------------------
    async def take(self, color: Color, *, accept: Sequence[str] | None = None) -> Snapshot:
        """Ask ``color`` for its state now (no quiesce) and store it; the snapshot."""
        problem = self.capable(color)
        if problem is not None:
            raise HandoffFailed("snapshot", "incapable", problem)
        child = self.children[color]
        mark = self.journal.mark()
        reply = await transfer.snapshot(
            child,
            self.inbox,
            accept=accept,
            within_s=self.cfg.timeout_s,
            max_bytes=self.cfg.max_bytes,
        )
        snap = from_reply(
            color,
            child.cfg.version,
            reply,
            max_bytes=self.cfg.max_bytes,
            max_age_s=self.cfg.max_age_s,
        )
        try:
            snap = await self.store.save(snap, need_redis=False)
        except DurableWriteError as exc:
            raise HandoffFailed("store", "state_write_failed", str(exc)) from None
        self._export(color)
        if color is self.journal.color and (accept is None or snap.schema in accept):
            # The candidate's state as stable reads it: a rollback starts from here.
            self.carry_base = snap
            self.journal.start_over(keep_after=mark)
            if self.record is not None:
                self.record.base = snap.id
                await self._write_quietly(self.record)
        log.info(
            "snapshot_stored",
            color=color,
            snapshot=snap.id,
            digest=snap.digest,
            bytes=snap.size,
            schema=snap.schema,
        )
        return snap

    def _accept_for(self, color: Color) -> list[str] | None:
        """The schemas to ask ``color``'s state in: stable's, while ``color`` is a candidate
        that received a state (its snapshots are what a rollback would carry back)."""
        rec = self.record
        if rec is not None and rec.phase is Phase.COMPLETED and color is rec.target:
            return transfer.reads(self.children[rec.source])
        return None

    async def snapshot_now(self, color: Color | None) -> dict[str, Any]:
        """``agentsup snapshot [COLOR]``: the color in charge by default."""
        color = color or self.rollout.state.active
        if color is None:
            raise Refused("no_color_active", "no color is in charge; name one")
        if self.busy is not None:
            raise Refused("handoff_in_progress", f"busy: {self.busy}")
        self.busy = f"snapshot of {color}"
        try:
            snap = await self.take(color, accept=self._accept_for(color))
        except HandoffFailed as exc:
            code = "no_snapshot_capability" if exc.reason == "incapable" else "snapshot_failed"
            raise Refused(code, str(exc)) from None
        finally:
            self.busy = None
        return {**snap.meta(), "age_s": round(snap.age(), 3)}

    async def periodic(self) -> None:
        """Every ``snapshot_interval_s``, the acting color's state (so that a crashed color
        still leaves a recent one)."""
        while True:
            await asyncio.sleep(self.cfg.snapshot_interval_s)
            color = self.rollout.state.active
            if color is None or self.busy is not None or color in self.held:
                continue
            if self.capable(color) is not None:
                continue
            self.busy = f"periodic snapshot of {color}"
            try:
                await self.take(color, accept=self._accept_for(color))
            except HandoffFailed as exc:
                log.warning(
                    "snapshot_failed",
                    color=color,
                    reason=exc.reason,
                    error=str(exc),
                    hint="the previous snapshot stays the latest",
                )
            finally:
                self.busy = None

    async def before_stop(self) -> None:
        """SIGTERM (DESIGN.md invariant 7): quiesce the color in charge, snapshot it, then
        the children are stopped. Bounded by ``timeout_s`` per request."""
        color = self.rollout.state.active
        if color is None or self.busy is not None or self.capable(color) is not None:
            return
        self.busy = "snapshot at stop"
        try:
            await transfer.quiesce(self.children[color], self.cfg.timeout_s)
            snap = await self.take(color, accept=self._accept_for(color))
            log.info("snapshot_at_stop", color=color, snapshot=snap.id, digest=snap.digest)
        except HandoffFailed as exc:
            log.warning(
                "snapshot_at_stop_failed",
                color=color,
                reason=exc.reason,
                error=str(exc),
                hint="stopping anyway",
            )
        finally:
            self.busy = None

    # -- start, changes, Redis back --------------------------------------------------------
    def load(self) -> None:
        """At start (blocking, small files): the latest snapshots and handoff record."""
        self.store.load()
        self.record = self.records.load()

    def recover(self) -> None:
        """Once the rollout knows who acts, before the children start (see
        :func:`supervisor.handoff.carry.recover`)."""
        carry.recover(self)

    def on_change(self, change: Change) -> None:
        """A committed change of who acts, before the roles are pushed."""
        carry.on_change(self, change)

    async def redis_back(self) -> None:
        """Redis answers again, or was found to have gone back in time: put back what it
        lost (the snapshots, the record), from state_dir."""
        if self._checking:
            return
        self._checking = True
        try:
            if await self.store.put_back() and self.record is not None:
                await self.records.mirror(self.record)
        finally:
            self._checking = False

    # -- what is shown ------------------------------------------------------------------------
    def tick(self, now: float) -> None:
        """Housekeeping: the snapshot gauges; every few seconds, that Redis still holds the
        acknowledged snapshots (a restart too quick for the health check to see, a flush)."""
        self.export(now)
        if now - self._checked >= CHECK_REDIS_S:
            self._checked = now
            self.job(self.redis_back(), "snapshots-in-redis")

    def _export(self, color: Color) -> None:
        self.export(time.time(), only=color)

    def export(self, now: float, only: Color | None = None) -> None:
        for color, snap in self.store.latest.items():
            if only is not None and color is not only:
                continue
            age = snap.age(now) if snap is not None else now - self.started
            self.metrics.snapshot_age.labels(color.value).set(round(age, 3))
            self.metrics.snapshot_bytes.labels(color.value).set(snap.size if snap else 0)

    def describe(self) -> dict[str, Any]:
        now = time.time()
        rec = self.record
        handoff = None
        if rec is not None:
            handoff = {
                **rec.to_json(),
                "in_progress": rec.phase.in_progress,
                "age_s": round(now - rec.started_at, 3),
            }
        return {
            "snapshots": self.store.describe(now),
            "handoff": handoff,
            "held": {c.value: why for c, why in self.held.items()},
        }
