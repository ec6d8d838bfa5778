"""One deployment: a blue/green pair of one agent, fenced in one Redis namespace.

The :class:`Deployment` owns everything about the pair: its children, the pipeline their
lines go through, the rollout (who acts, and its one writer), the responder (verdicts into
rollbacks), the roles pushed, the permits asked on the channels, probation, the namespace's
lease, and what it keeps on disk. The :class:`~supervisor.daemon.Daemon` owns the process
(signals, the ordered start and stop, Redis's health, the servers) and, today, one
deployment; nothing here assumes it is the only one.

The path of an event, from a child's line to a flip and back::

    child ─line─► Channel ─msg─► Pipeline (bus) ─► evaluator ─Verdict─► Responder
        ◄─role── push_roles ◄─Change── Rollout ◄─rollback()─────────────────┘
                                        │ one Lua call
                                        ▼
                                      Redis
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import Callable, Coroutine
from typing import Any, Literal

from redis.asyncio import Redis
from redis.exceptions import RedisError

from supervisor import __version__
from supervisor.ab.ab import AbTest
from supervisor.alerts import Alerter
from supervisor.arbiter.arbiter import Arbiter
from supervisor.arbiter.durable import SYNC_INTERVAL_S, DurableWriteError
from supervisor.arbiter.lane import Lane
from supervisor.arbiter.lease import Lease
from supervisor.arbiter.scripts import Keys
from supervisor.arbiter.watch import watch_active_key
from supervisor.children.cgroup import color_cgroups
from supervisor.children.process import Child, ChildState
from supervisor.children.reaper import Reaper
from supervisor.config import Color, Config
from supervisor.decisions import DecisionLog
from supervisor.decisions.lookup import Earlier, Query
from supervisor.errors import LeaseLost, RedisUnavailable, Refused
from supervisor.flags import FlagBook
from supervisor.flags.watch import watch_flag_keys
from supervisor.gates.deploy import Deployer, Strategy
from supervisor.gates.gates import Gates
from supervisor.gates.world import DeploymentWorld
from supervisor.guard.verdict import Action, Severity, Verdict
from supervisor.handoff import Handoffs
from supervisor.identity import ChildAccess
from supervisor.logs import get as get_logger
from supervisor.metrics import Metrics
from supervisor.notify import CHILD_ENV_STRIP
from supervisor.pipeline import Pipeline
from supervisor.rollout import Change, Rollout
from supervisor.rollout.responder import Responder, alert_from_verdict
from supervisor.rollout.state import Mode
from supervisor.rollout.stepper import Stepper
from supervisor.shadow import Shadow
from supervisor.tasks import Tasks

log = get_logger("deployment")

PERMIT_STATS_S = 1.0


class Deployment:
    """One pair. Built by the daemon once Redis's client exists; :meth:`start` runs once
    Redis answers, :meth:`stop` in the daemon's ordered stop."""

    def __init__(
        self,
        config: Config,
        *,
        redis: Redis,
        redis_up: asyncio.Event,
        metrics: Metrics,
        alerter: Alerter,
        tasks: Tasks,
        daemon_password: str | None,
        embedded: bool,
        on_status: Callable[[], None],
        on_fatal: Callable[[str], None],
    ) -> None:
        self.config = config
        self.redis = redis
        self.metrics = metrics
        self.alerter = alerter
        self._tasks = tasks
        self._redis_up = redis_up
        self._on_status = on_status
        sup = config.supervisor
        self.keys = Keys(sup.namespace, config.redis.active_key)
        self.access = ChildAccess(
            config, self.keys, embedded=embedded, daemon_password=daemon_password
        )
        # What a flip waits on takes a raw connection when Redis is a plain one (lane.py).
        self.lane = Lane.for_client(redis)
        self.arbiter = Arbiter(
            redis, self.keys, sup.state_dir, config.redis.permit_ttl_s, lane=self.lane
        )
        self.arbiter.on_write_failure = self.state_write_failed
        self.rollout = Rollout(self.arbiter, self.versions, self._on_change)
        self.lease = Lease(
            self.arbiter,
            sup,
            metrics,
            on_fenced=lambda fenced: self.push_roles(),
            on_lost=on_fatal,
            embedded=embedded,
        )
        # The children are filled in below: each child's on_message is the pipeline's handle.
        self.children: dict[Color, Child] = {}
        self.pipeline = Pipeline(
            config.triggers,
            metrics,
            self.rollout,
            self.children,
            heartbeat_timeouts={c: config.agents[c].heartbeat_timeout_s for c in Color},
            on_verdict=lambda verdict: self.respond(verdict),
            on_hello=self._on_hello,
            on_permit=self._on_permit,
            on_reply=self._on_reply,
            on_lookup=self._on_lookup,
        )
        # State handoff (supervisor/handoff): snapshots, the handoff's steps, the state going
        # back on a rollback; it hears the candidate's executions, outcomes and escrows.
        self.handoff = Handoffs(
            config,
            redis=redis,
            children=self.children,
            rollout=self.rollout,
            switch=self.switch,
            metrics=metrics,
            alerter=alerter,
            tasks=tasks,
        )
        self.handoff.attach(self.pipeline)
        self.respond = Responder(
            config,
            metrics,
            self.rollout,
            alerter,
            lambda coro: self._job(coro, "rollback"),
            overdue=self.pipeline.escrow.overdue,
        )
        # The canary's steps (supervisor/rollout/stepper.py): its judge hears both colors.
        self.canary = Stepper(
            config,
            self.rollout,
            metrics,
            alerter,
            lambda coro: self._job(coro, "canary"),
            children=self.children,
            stakes_from_permits=config.redis.child_access not in ("permit", "full"),
        )
        self.canary.attach(self.pipeline)
        # Shadow mode (supervisor/shadow): the standby decides on the live inputs, never acts.
        self.shadow = Shadow(
            config.shadow,
            pnl=config.triggers.pnl_sigma,
            rollout=self.rollout,
            children=self.children,
            metrics=metrics,
            alerter=alerter,
            spawn=self._tasks.job,
            push_roles=lambda: self.push_roles(),
            supervisor_name=config.supervisor.name,
        )
        self.shadow.attach(self.pipeline)
        # Each Child copies its env at every spawn: the Redis credentials, known once the
        # users are made at start, are added to these before the first one.
        env = self._child_env()
        self._child_envs = {
            c: {
                **env,
                **config.agents[c].env,
                "AGENTSUP_COLOR": c.value,
                "AGENTSUP_VERSION": config.agents[c].version,
            }
            for c in Color
        }
        # Each color in a cgroup of its own, when the daemon's is delegated (children/cgroup.py).
        self.cgroups = color_cgroups([c.value for c in Color], config.supervisor.cgroups)
        self.children.update(
            (
                c,
                Child(
                    c,
                    config.agents[c],
                    self._child_envs[c],
                    on_message=self.pipeline.handle,
                    on_protocol_error=self.pipeline.protocol_error,
                    on_state=self._on_child_state,
                    on_exit=self._on_child_exit,
                    on_orphan_killed=metrics.orphans_killed.inc,
                    cgroup=self.cgroups.get(c.value),
                ),
            )
            for c in Color
        )
        self.reaper: Reaper | None = None  # the daemon's, for children's records
        self.told: dict[Color, tuple[str, int] | None] = dict.fromkeys(Color)
        # The decision log (supervisor/decisions): the first subscriber of each event it
        # records; other features record theirs with self.decisions.record(kind, fields).
        self.decisions = DecisionLog.for_config(config, metrics, self.told, alerter.send)
        if self.decisions.enabled:
            for msg_type, subscriber in self.decisions.subscribers().items():
                self.pipeline.subscribe(msg_type, subscriber, first=True)
        # Feature flags (supervisor/flags): every change pushed to both children.
        self.flags = FlagBook(
            config,
            redis,
            metrics,
            on_change=self.push_flags,
            record=lambda kind, fields, color: self.decisions.record(kind, fields, color=color),
            alert=alerter.send,
            lane=self.lane,
        )
        # Deploy gates (supervisor/gates): the agents' context and the daemon's own state
        # judged before a deploy and before every canary step.
        world = DeploymentWorld(
            children=self.children,
            rollout=self.rollout,
            handoff=self.handoff,
            escrow=self.pipeline.escrow,
            arbiter=self.arbiter,
            redis_up=redis_up,
            switch=self.switch,
            canary_start=self.canary_start,
            record=lambda kind, fields, color: self.decisions.record(kind, fields, color=color),
        )
        # A/B tests (supervisor/ab): two values of one flag, both colors within their share.
        self.ab = AbTest(
            config,
            rollout=self.rollout,
            children=self.children,
            flags=self.flags,
            redis=redis,
            metrics=metrics,
            busy=self._ab_busy,
        )
        self.ab.attach(self.pipeline)
        self.gates = Gates(config, metrics, world)
        self.gates.attach(self.pipeline)
        self.deployer = Deployer(self.gates, world, metrics, self._deploy_alert)
        self.canary.gates_closed = self._canary_gates_closed
        self.started_at = time.monotonic()
        self.state_write_error: str | None = None  # the last failed write of state_dir
        # Executions whose key memory may have forgotten: checked against Redis's permits.
        self._lookups: asyncio.Queue[tuple[Color, str, int, tuple[int | None, int] | None]] = (
            asyncio.Queue(maxsize=10_000)
        )
        self._hint = asyncio.Event()
        self._state_dirty = asyncio.Event()
        self._supervisors: list[asyncio.Task[None]] = []
        self._permit_seen: dict[str, int] = {}
        self._last_stats = 0.0

    # the view commands get (supervisor.control.context.DeploymentView) --------------------
    @property
    def name(self) -> str:
        return self.config.supervisor.name

    @property
    def versions(self) -> dict[Color, str]:
        return {c: self.config.agents[c].version for c in Color}

    async def switch(self, color: Color, by: str, started: float) -> Change:
        child = self.children[color]
        if child.state is not ChildState.RUNNING:
            raise Refused("not_running", f"{color} is {child.state.value}, not RUNNING")
        return await self.rollout.switch(color, by, started)

    async def confirm(self, by: str) -> Change:
        return await self.rollout.confirm(by)

    async def rollback(self, reason: str, by: str, started: float) -> Change:
        change = await self.rollout.rollback(reason, by, trigger="manual", started=started)
        assert change is not None  # only automatic rollbacks can be a no-op
        return change

    async def handoff_to(self, color: Color, dry_run: bool, by: str) -> dict[str, Any]:
        return await self.handoff.handoff(color, dry_run=dry_run, by=by)

    async def snapshot(self, color: Color | None) -> dict[str, Any]:
        return await self.handoff.snapshot_now(color)

    async def canary_start(self, color: Color, steps: list[float] | None, by: str) -> Change:
        return await self.canary.start(color, steps, by)

    async def canary_set(self, percent: float, by: str) -> Change:
        return await self.canary.set(percent, by)

    async def canary_promote(self, full: bool, by: str) -> Change:
        return await self.canary.promote(full, by)

    async def canary_abort(self, reason: str, by: str, started: float) -> Change:
        return await self.canary.abort(reason, by, started)

    async def canary_status(self) -> dict[str, Any]:
        return await self.canary.status()

    async def shadow_start(self, color: Color, by: str) -> dict[str, Any]:
        return await self.shadow.start(color, by)

    async def shadow_stop(self, by: str) -> dict[str, Any]:
        return await self.shadow.stop(by)

    def shadow_report(self) -> dict[str, Any]:
        return self.shadow.report()

    async def ab_start(
        self, flag: str, a: str, b: str, split: float | None, min_rounds: int | None, by: str
    ) -> dict[str, Any]:
        return await self.ab.start(flag, a, b, split, min_rounds, by)

    async def ab_stop(self, winner: Literal["a", "b"] | None, by: str) -> dict[str, Any]:
        return await self.ab.stop(winner, by)

    async def ab_report(self) -> dict[str, Any]:
        return await self.ab.report()

    def _ab_busy(self) -> str | None:
        session = self.shadow.session
        return f"shadow {session.color}" if session is not None else self.handoff.busy

    def flags_list(self) -> list[dict[str, Any]]:
        return self.flags.listing()

    def flags_get(self, name: str) -> dict[str, Any]:
        return self.flags.get(name)

    async def flags_set(
        self, name: str, value: str, color: Color | None, reason: str, by: str
    ) -> dict[str, Any]:
        return await self.flags.set(name, value, color, by, reason)

    async def flags_unset(
        self, name: str, color: Color | None, reason: str, by: str
    ) -> dict[str, Any]:
        return await self.flags.unset(name, color, by, reason)

    async def flags_history(self, name: str | None, count: int) -> list[dict[str, Any]]:
        return await self.flags.history(name, count)

    def gates_list(self, target: Color | None) -> list[dict[str, Any]]:
        return self.gates.describe(target)

    async def deploy(
        self, color: Color, strategy: Strategy, force: bool, reason: str | None, by: str
    ) -> dict[str, Any]:
        return await self.deployer.deploy(color, strategy, force, reason, by)

    def _canary_gates_closed(self) -> list[str]:
        # A canary step hands no state over: the snapshot's age is not its business.
        candidate = self.rollout.state.candidate
        return [
            f"{s.gate}: {s.reason}" for s in self.gates.closed(candidate) if s.gate != "snapshot"
        ]

    def _deploy_alert(self, message: str, color: Color, extra: dict[str, Any]) -> None:
        self.metrics.alerts_sent.labels("deploy_forced").inc()
        verdict = Verdict("deploy_forced", Severity.HIGH, Action.ALERT, color, message)
        self.alerter.send(
            alert_from_verdict(
                verdict,
                supervisor_name=self.name,
                version=self.versions[color],
                epoch=self.rollout.state.epoch,
                extra=extra,
            )
        )

    def restart(self, color: Color) -> None:
        child = self.children[color]
        if not child.revive():
            raise Refused("not_fatal", f"{color} is {child.state.value}; only FATAL restarts")

    def triggers(self) -> dict[str, Any]:
        return self.pipeline.trigger_states(self.respond.fired)

    async def status(self, flips: int = 10) -> dict[str, Any]:
        """The status object: the rollout, both children, the latest flips, the triggers."""
        now = time.monotonic()
        children = {}
        for color, child in self.children.items():
            told = self.told[color]
            hb = child.last_heartbeat
            children[color.value] = {
                "state": child.state.value,
                "pid": child.pid,
                "version": child.cfg.version,
                "role": told[0] if told else self.rollout.role_of(color),
                "told_epoch": told[1] if told else None,
                "uptime_s": round(child.uptime, 3) if child.uptime is not None else None,
                "restarts": child.restarts,
                "last_exit": child.last_exit,
                "protocol": child.speaks_protocol,
                "heartbeat_age_s": round(now - hb, 3) if hb is not None else None,
                **self.pipeline.tally[color].as_dict(),
            }
        recent: list[dict[str, str]] = []
        if self._redis_up.is_set() and flips:
            with contextlib.suppress(RedisError, OSError):
                recent = await self.arbiter.flips(flips)
        return {
            **self.rollout.describe(),
            "name": self.name,
            "namespace": self.config.supervisor.namespace,
            "redis": "up" if self._redis_up.is_set() else "down",
            "children": children,
            "flips": recent,
            "events": self.pipeline.events,
            "pid": os.getpid(),
            "version": __version__,
            "uptime_s": round(now - self.started_at, 3),
            "probation_s": self.config.rollout.probation_s,
            # None while state_dir takes writes; else what failed (flips past the reservation
            # and permits that cannot be journaled are refused meanwhile).
            "state_write_error": self.state_write_error,
            "lease": "held" if self.arbiter.holds_lease and not self.lease.fenced else "lost",
            "triggers": self.triggers(),
            "decision_log": self.decisions.describe(),
            "canary": self.canary.describe(None),
            "shadow": self.shadow.describe(),
            "ab": self.ab.describe(),
            "flags": self.flags.describe(),
            "gates": {g["gate"]: g["open"] for g in self.gates.describe(None)},
            **self.handoff.describe(),  # snapshots, handoff, held
        }

    def status_line(self) -> str:
        s = self.rollout.state
        return (
            f"active={s.active or 'none'} epoch={s.epoch} mode={s.mode} stable={s.stable} "
            f"candidate={s.candidate or 'none'} "
            f"redis={'up' if self._redis_up.is_set() else 'down'}"
        )

    # life ---------------------------------------------------------------------------------
    async def start(self, reaper: Reaper, kill_leftovers: Callable[[], None]) -> None:
        """Once Redis answers: the namespace's lease, the truth reconciled (and the epoch
        bumped), the loops, the colors' Redis users, then the children."""
        self.reaper = reaper
        await asyncio.to_thread(self.arbiter.load_journal)
        await asyncio.to_thread(self.handoff.load)
        await self.lease.take()
        kill_leftovers()  # only once the namespace is ours: they may be another's
        for color, group in self.cgroups.items():
            if killed := group.kill():  # what a daemon killed with -9 left, known or not
                log.warning("killed_leftover_children", color=color, pids=killed, found_by="cgroup")
        await self.decisions.open()  # before the start's flip, which it records
        self.arbiter.replica_count = await self.arbiter.replicas()
        if not await self.arbiter.enable_notifications():
            log.warning(
                "keyspace_notifications_unavailable",
                hint="operator SETs are picked up by the timer instead",
            )
        while True:
            try:
                change = await self.rollout.start(self.config.supervisor.initial_active)
                break
            except (DurableWriteError, RedisUnavailable):
                # The start's epoch bump cannot be reserved on disk (it is full), or Redis
                # went away mid-way (a restore of executed keys is started over): no child
                # starts, so nobody acts, until it can.
                await asyncio.sleep(1.0)
        self.handoff.recover()  # a handoff the last daemon left half done: finish or undo it
        with contextlib.suppress(RedisError, OSError):
            await self.flags.refresh()  # before the children: their hello gets the values
        with contextlib.suppress(RedisError, OSError):
            self.gates.load_flips(await self.arbiter.flips(100))  # the cool-down's start
        await self.ab.restore()  # an A/B test that runs on: its arms' sums
        log.info(
            "reconciled",
            active=change.active,
            epoch=change.epoch,
            stable=self.rollout.state.stable,
            candidate=self.rollout.state.candidate,
        )
        loop = self._tasks.loop
        loop(self._lookup_loop(), "double-spend-lookups")
        if self.decisions.enabled:
            loop(self.decisions.run(), "decision-log")
            horizon = float(self.config.redis.permit_ttl_s)
            loop(self.decisions.lookups.run(self._found_in_log, horizon_s=horizon), "log-lookups")
        loop(self._reconcile_loop(), "reconcile")
        loop(self._state_loop(), "state-writer")
        loop(self._journal_loop(), "journal-sync")
        loop(self.ab.run(), "ab-save")
        if self._child_envs[Color.BLUE]["AGENTSUP_PERMITS"] == "direct":
            loop(self.arbiter.tail_grants(), "grant-log-tail")
        loop(self.lease.keep(), "lease")
        if self.config.handoff.snapshot_interval_s > 0:
            loop(self.handoff.periodic(), "snapshots")
        if self.flags.schema:  # no [flags]: nothing to read, watch or push
            loop(self.flags.run(), "flags")
            loop(
                watch_flag_keys(
                    self.redis,
                    self.flags.keys.patterns(),
                    self.flags.hint,
                    self._redis_up,
                    self.arbiter.enable_notifications,
                ),
                "watch-flag-keys",
            )
        loop(
            watch_active_key(
                self.redis,
                self.keys.active,
                self._hint.set,
                self._redis_up,
                self.arbiter.enable_notifications,
            ),
            "watch-active-key",
        )
        await self.access.grant(self.redis)  # after the lease: it resets the colors' users
        loop(self.access.keep(self.redis, self._redis_up), "redis-users")
        for color, child_env in self._child_envs.items():
            child_env.update(self.access.env(color))
        self._supervisors = [
            asyncio.create_task(c.supervise(), name=f"child-{c.color}")
            for c in self.children.values()
        ]
        await asyncio.gather(*(c.spawned.wait() for c in self.children.values()))

    async def stop_children(self) -> None:
        """Quiesce and snapshot the color in charge, quiesce both, then stop both within
        their timeouts (the daemon bounds the whole)."""
        await self.handoff.before_stop()
        for child in self.children.values():
            child.send({"type": "quiesce", "request_id": uuid.uuid4().hex})
        await asyncio.gather(*(c.stop() for c in self.children.values()))
        await asyncio.gather(*self._supervisors, return_exceptions=True)

    def kill_children(self) -> None:
        for child in self.children.values():
            child.kill_now()

    async def close(self) -> None:
        """After the children are stopped: the last state written, the lease handed over."""
        await self.decisions.close()  # every record the children sent, written and synced
        await self.ab.close()  # the A/B arms' last sums
        if self._state_dirty.is_set():
            with contextlib.suppress(DurableWriteError):
                await self._save_state()
        self.arbiter.journal.close()
        self.arbiter.told.close()
        for group in self.cgroups.values():
            group.remove()  # empty by now: every child was stopped and its group emptied
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2.0):
                await self.arbiter.release_lease()  # our children are stopped: hand over now
        if self.lane is not None:
            self.lane.close()

    def redis_back(self) -> None:
        """Redis answers again: re-read the truth now (notifications were lost meanwhile)."""
        self._hint.set()
        self.flags.hint()
        self._tasks.job(self._after_reconnect(), "after-reconnect")

    async def _after_reconnect(self) -> None:
        await self.arbiter.enable_notifications()  # a restarted Redis forgot them
        self.arbiter.replica_count = await self.arbiter.replicas()
        await self.handoff.redis_back()  # the snapshots it lost, from state_dir

    def _job(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
        self._tasks.job(coro, name)

    def job_failed(self, task: asyncio.Task[Any], exc: BaseException) -> bool:
        """A job of ours failed; True when it was handled here (the lease was lost)."""
        if isinstance(exc, LeaseLost):
            self.lease.lost(str(exc))
            return True
        return False

    # the loops ----------------------------------------------------------------------------
    async def housekeeping(self, now: float) -> None:
        """The daemon's housekeeping tick: what is judged by time, probation, the stats."""
        self.pipeline.tick(now)
        self.handoff.tick(time.time())
        self.canary.tick(time.time())
        self._check_probation()
        if now - self._last_stats >= PERMIT_STATS_S:
            self._last_stats = now
            self.pipeline.export_trigger_values()
            self.gates.export()
            if self._redis_up.is_set():
                await self._read_permit_stats()

    def loop_stalled(self, seconds: float) -> None:
        """The event loop stood still: the children's clocks move on by as much."""
        self.pipeline.loop_stalled(seconds, time.monotonic())

    async def _reconcile_loop(self) -> None:
        while True:
            # asyncio.timeout, not wait_for: no inner task, so a hint wakes this loop in one
            # step of the event loop (an operator's SET is on the clock).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.redis.reconcile_interval_s):
                    await self._hint.wait()
            self._hint.clear()
            if not self._redis_up.is_set():
                continue
            try:
                await self.rollout.reconcile()
            except RedisUnavailable:
                pass  # the health loop reports it
            except Refused:
                self._hint.set()  # the key moved while we looked: look again
            except LeaseLost as exc:
                self.lease.lost(str(exc))
                return
            except DurableWriteError:
                # An epoch we cannot reserve is not pushed: children keep the old one, whose
                # permits are refused as stale (fail closed). Tried again on the next tick.
                pass

    async def _save_state(self) -> None:
        s = self.rollout.state
        await self.arbiter.save_known(s.active.value if s.active else None, s.fields())

    async def _state_loop(self) -> None:
        """Write state.json after every change of who acts or who is stable; a failed write
        is alerted on, retried every second, and never stops the daemon."""
        while True:
            await self._state_dirty.wait()
            self._state_dirty.clear()
            try:
                await self._save_state()
            except DurableWriteError as exc:
                self.state_write_failed("state", exc)
                await asyncio.sleep(1.0)
                self._state_dirty.set()
                continue
            if self.state_write_error is not None:
                log.info("state_write_recovered")
                self.state_write_error = None

    async def _journal_loop(self) -> None:
        """fdatasync the permit journal every SYNC_INTERVAL_S when it grew (a group commit:
        appends never wait for the disk), and compact it when it is large."""
        journal = self.arbiter.journal
        while True:
            await asyncio.sleep(SYNC_INTERVAL_S)
            try:
                if journal.dirty:
                    await asyncio.to_thread(journal.sync)
                if journal.needs_compaction():
                    started = time.monotonic()
                    begun = await asyncio.to_thread(journal.compact_begin)
                    kept = journal.compact_finish(*begun)
                    log.info(
                        "journal_compacted",
                        kept=kept,
                        seconds=round(time.monotonic() - started, 3),
                    )
            except DurableWriteError as exc:
                self.state_write_failed("journal", exc)

    def state_write_failed(self, what: str, exc: Exception) -> None:
        self.metrics.state_write_failures.labels(what).inc()
        if self.state_write_error is None:
            log.error(
                "state_write_failed",
                file=what,
                error=str(exc),
                hint="flips past the epoch reservation and permits that cannot be journaled "
                "are refused until the disk takes writes again",
            )
        self.state_write_error = f"{what}: {exc}"

    def _on_lookup(self, color: Color, key: str, epoch: int) -> None:
        try:
            # Where the log stands as this execution is judged: its lookup must not find it.
            self._lookups.put_nowait((color, key, epoch, self.decisions.mark(key)))
        except asyncio.QueueFull:
            log.warning("double_spend_lookup_dropped", key=key, hint="Redis is too slow")

    async def _lookup_loop(self) -> None:
        """Keys memory may have forgotten: one MGET of their permits per batch."""
        while True:
            batch = [await self._lookups.get()]
            while not self._lookups.empty() and len(batch) < 500:
                batch.append(self._lookups.get_nowait())
            try:
                records = await self.redis.mget([self.keys.permit(k) for _, k, _, _ in batch])
            except (RedisError, OSError):
                continue  # Redis down: the permit script refuses duplicates meanwhile anyway
            now = time.monotonic()
            for (color, key, epoch, mark), record in zip(batch, records, strict=True):
                if record is None and mark is not None:
                    # No permit in Redis either: the decision log is the last memory.
                    self.decisions.lookups.ask(Query(key, color, epoch, *mark))
                    continue
                verdict = self.pipeline.double_spend.from_permit_record(
                    color, key, record, epoch, now=now
                )
                if verdict is not None:
                    self.respond(verdict)

    def _found_in_log(self, query: Query, earlier: Earlier) -> None:
        """The decision log says the key judged was executed before (see _lookup_loop)."""
        verdict = self.pipeline.double_spend.from_log_record(
            query.color, query.key, earlier.color, earlier.epoch, query.epoch, now=time.monotonic()
        )
        if verdict is not None:
            self.respond(verdict)

    def _check_probation(self) -> None:
        s = self.rollout.state
        window = self.config.rollout.probation_s
        since = s.probation_since
        self.metrics.probation_seconds.set(0 if since is None else max(0.0, time.time() - since))
        if (
            window > 0
            and since is not None
            and s.candidate is not None
            and self.rollout.on_trial(s.candidate)
            and time.time() - since >= window
            and self.rollout.may_promote_automatically(s.candidate)
            and not self.rollout.lock.locked()
        ):
            self._job(self._auto_confirm(), "probation-confirm")

    async def _auto_confirm(self) -> None:
        with contextlib.suppress(Refused, RedisUnavailable):
            await self.rollout.confirm("probation")

    async def _read_permit_stats(self) -> None:
        try:
            stats = await self.arbiter.permit_stats()
        except (RedisError, OSError):
            return
        for reason, count in stats.items():
            delta = count - self._permit_seen.get(reason, 0)
            if delta < 0:  # Redis came back empty: start counting again
                delta = count
            if delta:
                if reason == "ok":
                    self.metrics.permits_granted.inc(delta)
                else:
                    self.metrics.permits_denied.labels(reason).inc(delta)
        self._permit_seen = stats

    # callbacks from the parts -------------------------------------------------------------
    def _on_change(self, change: Change) -> None:
        # Before the roles go out: a flip may end the shadow, and after a handoff a rollback
        # holds stable first. The rest comes after the push: it is not on the flip's clock.
        self.shadow.on_change(change)
        self.handoff.on_change(change)
        if change.kind == "flip":
            self.push_roles()
        self.ab.on_change(change)
        self.decisions.change(change)
        if change.kind == "flip":
            label = change.reason.split(":", 1)[0]
            self.metrics.flips.labels(label).inc()
            if change.trigger:
                self.metrics.rollbacks.labels(change.trigger).inc()
                if change.trigger != "manual":  # automatic: the gates' cool-down starts
                    self.gates.rolled_back(time.time())
            self.metrics.set_active(change.active, change.epoch)
            self.canary.on_change(change)
            if change.started is not None:
                self.metrics.flip_duration.observe(time.monotonic() - change.started)
            if change.active is not change.previous:
                self.pipeline.new_active(change.active)
        else:
            self.pipeline.new_stable()
        self._state_dirty.set()
        self._on_status()

    def push_roles(self) -> None:
        """Tell both children who they are now (role, epoch, allocation), as the strategy of
        the current mode says. Every child stands by while this daemon may have lost its lease
        (it fences itself first)."""
        s = self.rollout.state
        self.arbiter.telling(s.epoch)
        for color, child in self.children.items():
            given = self.rollout.assignment(color)
            role, allocation = given.role, given.allocation
            if self.shadow.overrides(color, role):
                role, allocation = "shadow", 0.0
            if self.lease.fenced:
                role, allocation = "standby", 0.0
            sent = child.send(
                {"type": "role", "role": role, "epoch": s.epoch, "allocation": allocation}
            )
            if sent:
                self.told[color] = (role, s.epoch)
            told = self.told[color]
            self.metrics.child_role_active.labels(color.value).set(
                1 if told is not None and told[0] == "active" else 0
            )
        # A child woken by the push may be waiting for this very CPU: let it read its role
        # now rather than after the bookkeeping of the flip (one syscall; on two cores this
        # is a third of an idle operator SET's latency, see the README's benchmarks).
        os.sched_yield()

    def push_flags(self) -> None:
        """Tell both children their effective flags (each its own: per-color values over the
        global ones), and the decision log which flags its records run under."""
        for color, child in self.children.items():
            if child.speaks_protocol:
                child.send(self.flags.message(color))
        os.sched_yield()  # as after a push of roles: a woken child may be waiting for this CPU
        for color in self.children:
            self.decisions.set_flags(color, self.flags.values(color))

    def _on_hello(self, child: Child) -> None:
        self.handoff.on_hello(child)  # a held color is quiesced before its role comes
        self.push_roles()
        child.send(self.flags.message(child.color))

    def _on_child_state(self, child: Child) -> None:
        self.metrics.set_child_state(child.color, child.state.value)
        if self.reaper is not None:
            if child.state is ChildState.STARTING and child.pid is not None:
                self.reaper.record()
            elif child.state in (ChildState.EXITED, ChildState.STOPPED):
                self.reaper.wake()  # what it set apart is orphaned now
        self._on_status()

    def _on_child_exit(self, child: Child, returncode: int) -> None:
        color = child.color
        self.told[color] = None
        self.shadow.child_exited(color)
        self.metrics.child_role_active.labels(color.value).set(0)
        self.metrics.child_restarts.labels(color.value).inc()
        if self.rollout.state.mode is Mode.AB:
            self._job(self.ab.arm_exited(color, returncode), "ab-arm-exited")
        if self.rollout.on_trial(color):
            self.pipeline.child_exited(child, returncode)
        elif self.rollout.state.active is color:
            # The acting stable color died: whatever it left running is fenced off at once.
            self._job(self._bump("restart"), "restart-bump")

    async def _bump(self, reason: str) -> None:
        with contextlib.suppress(RedisUnavailable, Refused):
            await self.rollout.bump(reason)

    def _on_permit(self, child: Child, msg: dict[str, Any]) -> None:
        self._job(self._permit(child, msg), "permit")

    async def _permit(self, child: Child, msg: dict[str, Any]) -> None:
        told = self.told[child.color]
        epoch = told[1] if told else self.rollout.state.epoch
        if told is None or self.lease.fenced or self.handoff.holds(child.color):
            reason = "not_active"  # (held: quiesced for a handoff, or until its state is back)
        elif self.rollout.restoring:
            reason = "unavailable"  # executed keys are being put back into Redis
        else:
            # The color is the channel's: a child cannot ask as the other one.
            amount = msg.get("amount")
            if amount is not None:
                self.canary.asked(child.color, amount)
            reason = await self.arbiter.permit(
                child.color.value, epoch, msg["key"], f"{child.pid}:{msg['request_id']}", amount
            )
            if reason == "regressed":
                self._hint.set()  # Redis went back in time: the reconciler sets it right
                reason = "unavailable"
            elif reason == "ok":
                self.pipeline.granted(child.color, msg["key"], epoch)
                if amount is not None:
                    self.metrics.stake.labels(child.color.value).inc(abs(amount))
        if reason == "unavailable":
            self.metrics.permits_denied.labels("unavailable").inc()
        child.send(
            {
                "type": "permit_result",
                "request_id": msg["request_id"],
                "granted": reason == "ok",
                "reason": reason,
                "epoch": epoch,
                "valid_ms": self.config.redis.permit_valid_ms,
            }
        )

    def _on_reply(self, child: Child, msg: dict[str, Any]) -> None:
        if self.handoff.on_reply(child, msg):
            return  # a chunk of a snapshot: put together before it resolves its request
        if not child.resolve(msg):
            child.log.debug("unsolicited_reply", type=msg["type"], request_id=msg.get("request_id"))

    def _child_env(self) -> dict[str, str]:
        # Never the daemon's own Redis credentials (its password_env, any AGENTSUP_REDIS_*
        # it was given): each color gets its own, from self.access, at start.
        secret = self.config.redis.password_env
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in CHILD_ENV_STRIP
            and not k.startswith(("WATCHDOG_", "AGENTSUP_REDIS_"))
            and k != secret
        }
        direct = self.config.redis.child_access in ("permit", "full")
        env.update(
            {
                "AGENTSUP_REDIS_URL": self.config.redis_url(),
                "AGENTSUP_NAMESPACE": self.config.supervisor.namespace,
                "AGENTSUP_ACTIVE_KEY": self.config.redis.active_key,
                "AGENTSUP_PERMIT_TTL_MS": str(self.config.redis.permit_ttl_s * 1000),
                "AGENTSUP_PERMIT_VALID_MS": str(self.config.redis.permit_valid_ms),
                # The largest state the SDK sends or takes (chunked past one line).
                "AGENTSUP_HANDOFF_MAX_BYTES": str(self.config.handoff.max_bytes),
                # Permits go through the channel (the color is the channel's) unless the
                # children were given the Redis access a direct permit needs.
                "AGENTSUP_PERMITS": "direct" if direct else "channel",
            }
        )
        return env
