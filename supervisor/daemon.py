"""``agentsup run``: the daemon, from an ordered start to an ordered, bounded stop.

Start: state_dir → leftovers of a killed predecessor → Redis (embedded or not) → reconcile the
active key and bump the epoch → children → control socket → metrics → ``READY=1``.
Stop (SIGTERM, SIGINT, or the ``shutdown`` command, all the same path): ``STOPPING=1`` → stop
taking commands → quiesce the children → stop them within their timeouts → metrics, Redis,
the embedded Redis last. A second SIGINT forces: SIGKILL to every child group, exit at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import signal
import time
import uuid
from collections.abc import Coroutine
from typing import Any

from redis.asyncio import Redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry
from tenacity import AsyncRetrying, retry_if_exception_type, wait_exponential, wait_random

from supervisor.alerts import Alerter
from supervisor.arbiter.arbiter import Arbiter
from supervisor.arbiter.durable import SYNC_INTERVAL_S, DurableWriteError
from supervisor.arbiter.scripts import Keys
from supervisor.arbiter.watch import watch_active_key
from supervisor.children.process import Child, ChildState
from supervisor.children.reaper import Reaper, kill_leftovers, read_records
from supervisor.config import Color, Config
from supervisor.control.server import ControlServer
from supervisor.embedded_redis import EmbeddedRedis
from supervisor.errors import (
    LeaseLost,
    NamespaceHeld,
    RedisUnavailable,
    Refused,
    SupervisorError,
)
from supervisor.guard.respond import Responder
from supervisor.identity import ChildAccess, keep_memory_private
from supervisor.logs import get as get_logger
from supervisor.metrics import Metrics
from supervisor.notify import CHILD_ENV_STRIP, Notifier
from supervisor.pipeline import Pipeline
from supervisor.rollout import Change, Rollout

log = get_logger("daemon")

HOUSEKEEPING_S = 0.25
PERMIT_STATS_S = 1.0
# A timer this late means the loop itself stood still (a VM freeze, SIGSTOP, a blocking call):
# long enough to matter against heartbeat timeouts of seconds, far above a busy loop's lag.
STALL_S = 1.0


class Daemon:
    def __init__(self, config: Config, *, notifier: Notifier | None = None) -> None:
        self.config = config
        self.metrics = Metrics()
        self.metrics.probation_window.set(config.rollout.probation_s)
        self.notifier = notifier or Notifier()
        sup = config.supervisor
        self.keys = Keys(sup.namespace, config.redis.active_key)
        self.embedded = (
            EmbeddedRedis(sup.state_dir, config.redis.embedded_binary)
            if config.redis.embedded
            else None
        )
        # The embedded Redis's password is made by it, for this start; never the children's.
        password = self.embedded.password if self.embedded is not None else None
        password = password or config.redis_password()
        self.redis = Redis.from_url(
            config.redis_url(),
            password=password,
            socket_timeout=config.redis.socket_timeout_s,
            socket_connect_timeout=config.redis.socket_timeout_s,
            # One immediate retry (a connection gone stale across a Redis restart), then fail
            # fast: a permit that waits is worse than a permit refused.
            retry=Retry(NoBackoff(), 1),
            health_check_interval=0,
        )
        self.access = ChildAccess(
            config, self.keys, embedded=self.embedded is not None, daemon_password=password
        )
        self.arbiter = Arbiter(self.redis, self.keys, sup.state_dir, config.redis.permit_ttl_s)
        self.arbiter.on_write_failure = self._state_write_failed
        versions = {c: config.agents[c].version for c in Color}
        self.rollout = Rollout(self.arbiter, versions, self._on_change)
        self.pipeline = Pipeline(
            config,
            self.metrics,
            self.rollout,
            on_verdict=lambda verdict: self.respond(verdict),
            on_hello=self._on_hello,
            on_permit=self._on_permit,
            on_reply=self._on_reply,
            on_lookup=self._on_lookup,
        )
        self.alerter = Alerter.from_config(
            config.alerts, on_failure=self.metrics.webhook_failures.inc
        )
        self.respond = Responder(
            config,
            self.metrics,
            self.rollout,
            self.alerter,
            self._spawn,
            overdue=self.pipeline.escrow.overdue,
        )
        # Executions whose key memory may have forgotten: checked against Redis's permits.
        self._lookups: asyncio.Queue[tuple[Color, str, int]] = asyncio.Queue(maxsize=10_000)
        env = self._child_env()
        # Each Child copies its env at every spawn: the Redis credentials, known once the
        # users are made at start, are added to these before the first one.
        self._child_envs = {
            c: {
                **env,
                **config.agents[c].env,
                "AGENTSUP_COLOR": c.value,
                "AGENTSUP_VERSION": config.agents[c].version,
            }
            for c in Color
        }
        self.children = {
            c: Child(
                c,
                config.agents[c],
                self._child_envs[c],
                on_message=self.pipeline.handle,
                on_protocol_error=self.pipeline.protocol_error,
                on_state=self._on_child_state,
                on_exit=self._on_child_exit,
                on_orphan_killed=self.metrics.orphans_killed.inc,
            )
            for c in Color
        }
        self.told: dict[Color, tuple[str, int] | None] = dict.fromkeys(Color)
        self.control = ControlServer(
            self, sup.control_socket, sup.control_socket_mode, sup.allowed_uids
        )
        self.stop_reason: str | None = None
        self.exit_code = 0
        self.started_at = time.monotonic()
        self._records_path = sup.state_dir / "children.json"
        self.reaper = Reaper(
            self.children.values(),
            self._records_path,
            ours=lambda: [self.embedded.pid if self.embedded is not None else None],
            on_killed=self.metrics.orphans_killed.inc,
            on_record_failed=self.metrics.state_write_failures.labels("children").inc,
        )
        self.ready = asyncio.Event()
        self._stop = asyncio.Event()
        self._redis_up = asyncio.Event()
        self._hint = asyncio.Event()
        self._state_dirty = asyncio.Event()
        self._state_lock: int | None = None
        self.state_write_error: str | None = None  # the last failed write of state_dir, if any
        self._lease_renewed = time.monotonic()
        self._fenced_self = False  # children told standby: we may have lost the lease
        self._loops: list[asyncio.Task[None]] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._supervisors: list[asyncio.Task[None]] = []
        self._permit_seen: dict[str, int] = {}
        self._sigints = 0

    # life -------------------------------------------------------------------------------
    async def run(self) -> int:
        """Start, serve until asked to stop, stop in order. Returns the exit code."""
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.request_shutdown, "SIGTERM")
        loop.add_signal_handler(signal.SIGINT, self._sigint)
        if self.notifier.watchdog_s:
            self._loop(self._watchdog_loop())
        starting = asyncio.create_task(self._start())
        stop = asyncio.create_task(self._stop.wait())
        try:
            await asyncio.wait({starting, stop}, return_when=asyncio.FIRST_COMPLETED)
            if not starting.done():
                starting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await starting
            elif starting.exception() is not None:
                raise starting.exception()  # type: ignore[misc]
            else:
                await stop
        finally:
            stop.cancel()
            await self._shutdown()
            loop.remove_signal_handler(signal.SIGTERM)
            loop.remove_signal_handler(signal.SIGINT)
        return self.exit_code

    def request_shutdown(self, why: str) -> None:
        """Signal handlers and the ``shutdown`` command only record the request."""
        if self.stop_reason is None:
            self.stop_reason = why
            log.info("shutdown_requested", reason=why)
        self._stop.set()

    def _sigint(self) -> None:
        self._sigints += 1
        if self._sigints == 1:
            self.request_shutdown("SIGINT")
            return
        log.warning("forced_exit", hint="second SIGINT: killing every child group now")
        for child in self.children.values():
            child.kill_now()
        os._exit(130)

    async def _start(self) -> None:
        keep_memory_private()  # before any child exists: none may read our memory or environ
        sup = self.config.supervisor
        try:
            sup.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise SupervisorError(
                f"supervisor.state_dir: cannot create {sup.state_dir}: {exc.strerror}"
            ) from None
        self._lock_state_dir()
        if self.embedded is not None:
            await self.embedded.start()
        await self._connect_redis()
        await asyncio.to_thread(self.arbiter.load_journal)
        await self._take_lease()
        self._kill_leftovers()  # only once the namespace is ours: they may be another's
        self.arbiter.replica_count = await self.arbiter.replicas()
        if not await self.arbiter.enable_notifications():
            log.warning(
                "keyspace_notifications_unavailable",
                hint="operator SETs are picked up by the timer instead",
            )
        while True:
            try:
                change = await self.rollout.start(sup.initial_active)
                break
            except DurableWriteError:
                # The start's epoch bump cannot be reserved on disk (it is full): no child
                # starts, so nobody acts, until it can. Logged and counted by the arbiter.
                self.notifier.status("waiting for state_dir to take writes")
                await asyncio.sleep(1.0)
        log.info(
            "reconciled",
            active=change.active,
            epoch=change.epoch,
            stable=self.rollout.state.stable,
            candidate=self.rollout.state.candidate,
        )
        self._loop(self.alerter.run())
        self._loop(self._lookup_loop())
        self._loop(self._health_loop())
        self._loop(self._reconcile_loop())
        self._loop(self._state_loop())
        self._loop(self._journal_loop())
        if self._child_env()["AGENTSUP_PERMITS"] == "direct":
            self._loop(self.arbiter.tail_grants())
        self._loop(self._lease_loop())
        self._loop(self._housekeeping_loop())
        self._loop(
            watch_active_key(
                self.redis,
                self.keys.active,
                self._hint.set,
                self._redis_up,
                self.arbiter.enable_notifications,
            )
        )
        self._loop(self.reaper.run())  # the subreaper first: before any child can orphan one
        await self.access.grant(self.redis)  # after the lease: it resets the colors' users
        self._loop(self.access.keep(self.redis, self._redis_up))
        for color, child_env in self._child_envs.items():
            child_env.update(self.access.env(color))
        self._supervisors = [
            asyncio.create_task(c.supervise(), name=f"child-{c.color}")
            for c in self.children.values()
        ]
        await asyncio.gather(*(c.spawned.wait() for c in self.children.values()))
        await self.control.start()
        address = self.config.metrics.address
        if address is not None:
            port = self.metrics.serve(*address)
            log.info("metrics_listening", address=f"{address[0]}:{port}")
        self.ready.set()
        self.notifier.ready(self._status_line())
        log.info(
            "ready",
            pid=os.getpid(),
            control_socket=str(sup.control_socket),
            startup_s=round(time.monotonic() - self.started_at, 3),
        )

    async def _connect_redis(self) -> None:
        def waiting(state: Any) -> None:
            log.warning(
                "redis_unreachable",
                url=self.config.redis_url(),
                attempt=state.attempt_number,
                hint="retrying; not READY until it answers",
            )

        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type((RedisError, OSError)),
            wait=wait_exponential(multiplier=0.1, max=5.0) + wait_random(0, 0.1),
            before_sleep=waiting,
        ):
            with attempt:
                await self.redis.ping()
        self._set_redis_up(True)

    async def _shutdown(self) -> None:
        self.notifier.stopping()
        log.info("stopping", reason=self.stop_reason)
        try:
            async with asyncio.timeout(self.config.supervisor.shutdown_timeout_s):
                await self.control.close()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(2.0):  # the last alerts (a rollback's) go out
                        await self.alerter.drain()
                await _cancel_all(self._loops)
                for child in self.children.values():
                    child.send({"type": "quiesce", "request_id": uuid.uuid4().hex})
                await asyncio.gather(*(c.stop() for c in self.children.values()))
                await asyncio.gather(*self._supervisors, return_exceptions=True)
                await self.control.drain()
                for task in list(self._tasks):
                    task.cancel()
                await asyncio.gather(*self._tasks, return_exceptions=True)
        except TimeoutError:
            log.error(
                "shutdown_timeout",
                timeout_s=self.config.supervisor.shutdown_timeout_s,
                hint="killing what is left",
            )
            for child in self.children.values():
                child.kill_now()
            self.exit_code = self.exit_code or 1
        await self.reaper.stop()  # whatever the children set apart (setsid) goes too
        self.metrics.close()
        if self._state_dirty.is_set():
            with contextlib.suppress(DurableWriteError):
                s = self.rollout.state
                await self.arbiter.save_known(s.active.value if s.active else None, s.fields())
        self.arbiter.journal.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2.0):
                await self.arbiter.release_lease()  # our children are stopped: hand over now
        with contextlib.suppress(Exception):
            await self.redis.aclose()
        if self.embedded is not None:
            await self.embedded.stop()
        if self._state_lock is not None:
            self.reaper.forget()
            os.close(self._state_lock)
        self.notifier.close()
        log.info("stopped", exit_code=self.exit_code)

    # tasks ------------------------------------------------------------------------------
    def _loop(self, coro: Coroutine[Any, Any, None]) -> None:
        """A long-lived task; if it ever fails, the failure surfaces and the daemon stops."""
        task = asyncio.create_task(coro)
        task.add_done_callback(self._loop_done)
        self._loops.append(task)

    def _loop_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("internal_task_failed", task=task.get_name(), exc_info=task.exception())
            self.exit_code = 1
            self.request_shutdown("internal error")

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """A short task (a rollback, a permit): tracked, its failure logged."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and isinstance(task.exception(), LeaseLost):
            self._lease_lost(str(task.exception()))
        elif not task.cancelled() and task.exception() is not None:
            log.error("task_failed", task=task.get_name(), exc_info=task.exception())

    async def _watchdog_loop(self) -> None:
        assert self.notifier.watchdog_s is not None
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(self.notifier.watchdog_s / 2)

    def _set_redis_up(self, up: bool) -> None:
        if up == self._redis_up.is_set():
            return
        self.metrics.redis_up.set(1 if up else 0)
        if up:
            self._redis_up.set()
            log.info("redis_up")
        else:
            self._redis_up.clear()
            log.error("redis_down", hint="permits are refused until it answers again")
        self.notifier.status(self._status_line())

    async def _health_loop(self) -> None:
        cfg = self.config.redis
        while True:
            try:
                await asyncio.wait_for(self.redis.ping(), cfg.socket_timeout_s)
                up = True
            except (RedisError, OSError, TimeoutError):
                up = False
            if up and not self._redis_up.is_set():
                await self.arbiter.enable_notifications()  # a restarted Redis forgot them
                self.arbiter.replica_count = await self.arbiter.replicas()
                self._set_redis_up(True)
                self._hint.set()  # re-read the truth now: notifications were lost meanwhile
            elif not up:
                self._set_redis_up(False)
            await asyncio.sleep(cfg.health_interval_s)

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
                self._lease_lost(str(exc))
                return
            except DurableWriteError:
                # An epoch we cannot reserve is not pushed: children keep the old one, whose
                # permits are refused as stale (fail closed). Tried again on the next tick.
                pass

    async def _take_lease(self) -> None:
        """One daemon per namespace: take its lease, or refuse to start (or wait, with
        ``supervisor.on_lease_held = "wait"``) while another live daemon holds it. A holder
        that ran on this host and is gone (killed with -9) is replaced at once."""
        sup = self.config.supervisor
        replace = ""
        waiting_logged = 0.0
        while True:
            holder = await self.arbiter.take_lease(sup.lease_ttl_s, replace)
            if holder is None:
                self._lease_renewed = time.monotonic()
                self.metrics.lease_held.set(1)
                log.info("lease_taken", namespace=sup.namespace, ttl_s=sup.lease_ttl_s)
                return
            if holder.is_dead_here() and holder.raw != replace:
                log.warning("lease_taken_over", previous=holder.describe(), hint="it is gone")
                replace = holder.raw
                continue
            if sup.on_lease_held == "refuse":
                raise NamespaceHeld(
                    f"namespace {sup.namespace!r} is supervised by another daemon "
                    f"({holder.describe()}); refusing to start "
                    '(supervisor.on_lease_held = "wait" waits for it instead)'
                )
            if time.monotonic() - waiting_logged > 30.0:
                waiting_logged = time.monotonic()
                log.warning(
                    "lease_waiting",
                    holder=holder.describe(),
                    hint="no child starts until the holder lets go",
                )
                self.notifier.status(f"waiting for the lease: {holder.describe()}")
            await asyncio.sleep(min(1.0, sup.lease_ttl_s / 3))

    async def _lease_loop(self) -> None:
        """Renew the lease every third of its TTL. Another daemon holding it: fence our
        children and stop (exit 1). Unable to renew for two thirds of it (Redis out of reach):
        tell the children to stand by *before* it can expire and someone else take over;
        back to their roles once renewed."""
        ttl = self.config.supervisor.lease_ttl_s
        while True:
            await asyncio.sleep(ttl / 3)
            try:
                holder = await self.arbiter.take_lease(ttl)
            except RedisUnavailable:
                if not self._fenced_self and time.monotonic() - self._lease_renewed > ttl * 2 / 3:
                    log.error(
                        "lease_unrenewed",
                        seconds=round(time.monotonic() - self._lease_renewed, 3),
                        hint="children told to stand by until the lease is renewed",
                    )
                    self._fenced_self = True
                    self.metrics.lease_held.set(0)
                    self.push_roles()
                continue
            if holder is not None:
                self._lease_lost(holder.describe())
                return
            self._lease_renewed = time.monotonic()
            if self._fenced_self:
                self._fenced_self = False
                self.metrics.lease_held.set(1)
                log.info("lease_renewed", hint="children back to their roles")
                self.push_roles()

    def _lease_lost(self, holder: str) -> None:
        log.error(
            "lease_lost",
            holder=holder,
            hint="another daemon supervises this namespace now; stopping ours",
        )
        self._fenced_self = True
        self.metrics.lease_held.set(0)
        self.push_roles()
        self.exit_code = 1
        self.request_shutdown("lease lost")

    async def _state_loop(self) -> None:
        """Write state.json after every change of who acts or who is stable; a failed write
        is alerted on, retried every second, and never stops the daemon."""
        while True:
            await self._state_dirty.wait()
            self._state_dirty.clear()
            s = self.rollout.state
            try:
                await self.arbiter.save_known(s.active.value if s.active else None, s.fields())
            except DurableWriteError as exc:
                self._state_write_failed("state", exc)
                await asyncio.sleep(1.0)
                self._state_dirty.set()
                continue
            if self.state_write_error is not None:
                log.info("state_write_recovered")
                self.state_write_error = None

    async def _journal_loop(self) -> None:
        """fdatasync the permit journal every SYNC_INTERVAL_S when it grew (a group commit:
        appends never wait for the disk)."""
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
                self._state_write_failed("journal", exc)

    def _state_write_failed(self, what: str, exc: Exception) -> None:
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

    async def _housekeeping_loop(self) -> None:
        last_stats = 0.0
        while True:
            now = time.monotonic()
            self.pipeline.tick(self.children, now)
            self._check_probation()
            if now - last_stats >= PERMIT_STATS_S:
                last_stats = now
                self._export_trigger_values()
                if self._redis_up.is_set():
                    await self._read_permit_stats()
            asked = time.monotonic()
            await asyncio.sleep(HOUSEKEEPING_S)
            await self._after_sleep(time.monotonic() - asked - HOUSEKEEPING_S)

    async def _after_sleep(self, late: float) -> None:
        """Measure how late the housekeeping timer woke; after a stall of the loop itself,
        never judge the children on the daemon's own pause.

        After a pause the loop runs its due timers before it polls the sockets, so the next
        tick would come before the heartbeats that waited in the channels all along, and roll
        back a healthy candidate for silence. So: move every child's clocks on by the stall,
        then let the loop poll (a timer sleep, unlike ``sleep(0)``, always waits for one poll
        on either loop) so that the channels deliver what they hold before the tick judges."""
        late = max(0.0, late)
        self.metrics.loop_stall.observe(late)
        if late < STALL_S:
            return
        self.metrics.loop_stalls.inc()
        log.warning(
            "loop_stalled",
            seconds=round(late, 3),
            hint="the daemon itself stood still; the children's clocks were moved on by as much",
        )
        self.pipeline.loop_stalled(self.children, late, time.monotonic())
        await asyncio.sleep(0.01)

    def _export_trigger_values(self) -> None:
        for name, trig in self.pipeline.trigger_states(self.children, self.respond.fired).items():
            if trig["threshold"] is not None:
                self.metrics.trigger_threshold.labels(name).set(trig["threshold"])
            for color, st in trig["colors"].items():
                value = st.get("value")
                if isinstance(value, int | float):
                    self.metrics.trigger_value.labels(name, color).set(value)

    def _on_lookup(self, color: Color, key: str, epoch: int) -> None:
        try:
            self._lookups.put_nowait((color, key, epoch))
        except asyncio.QueueFull:
            log.warning("double_spend_lookup_dropped", key=key, hint="Redis is too slow")

    async def _lookup_loop(self) -> None:
        """Keys memory may have forgotten: one MGET of their permits per batch."""
        while True:
            batch = [await self._lookups.get()]
            while not self._lookups.empty() and len(batch) < 500:
                batch.append(self._lookups.get_nowait())
            try:
                records = await self.redis.mget([self.keys.permit(k) for _, k, _ in batch])
            except (RedisError, OSError):
                continue  # Redis down: the permit script refuses duplicates meanwhile anyway
            now = time.monotonic()
            for (color, key, epoch), record in zip(batch, records, strict=True):
                verdict = self.pipeline.double_spend.from_permit_record(
                    color, key, record, epoch, now=now
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
            and s.active is s.candidate
            and time.time() - since >= window
            and self.rollout.may_promote_automatically(s.candidate)
            and not self.rollout.lock.locked()
        ):
            self._spawn(self._auto_confirm())

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

    # callbacks from the parts -----------------------------------------------------------
    def _on_change(self, change: Change) -> None:
        if change.kind == "flip":
            self.push_roles()
            label = change.reason.split(":", 1)[0]
            self.metrics.flips.labels(label).inc()
            if change.trigger:
                self.metrics.rollbacks.labels(change.trigger).inc()
            self.metrics.set_active(change.active, change.epoch)
            if change.started is not None:
                self.metrics.flip_duration.observe(time.monotonic() - change.started)
            if change.active is not change.previous:
                self.pipeline.new_active(change.active)
        else:
            self.pipeline.new_stable()
        self._state_dirty.set()
        self.notifier.status(self._status_line())

    def push_roles(self) -> None:
        """Tell both children who they are now (role, epoch, allocation). Every child stands
        by while this daemon may have lost its lease (it fences itself first)."""
        s = self.rollout.state
        for color, child in self.children.items():
            role = "active" if color is s.active and not self._fenced_self else "standby"
            sent = child.send(
                {
                    "type": "role",
                    "role": role,
                    "epoch": s.epoch,
                    "allocation": 1.0 if role == "active" else 0.0,
                }
            )
            if sent:
                self.told[color] = (role, s.epoch)
            told = self.told[color]
            self.metrics.child_role_active.labels(color.value).set(
                1 if told is not None and told[0] == "active" else 0
            )

    def _on_hello(self, child: Child) -> None:
        self.push_roles()
        child.send({"type": "flags", "values": {}})

    def _on_child_state(self, child: Child) -> None:
        self.metrics.set_child_state(child.color, child.state.value)
        if child.state is ChildState.STARTING and child.pid is not None:
            self._write_children_record()
        elif child.state in (ChildState.EXITED, ChildState.STOPPED):
            self.reaper.wake()  # what it set apart is orphaned now
        self.notifier.status(self._status_line())

    def _on_child_exit(self, child: Child, returncode: int) -> None:
        color = child.color
        self.told[color] = None
        self.metrics.child_role_active.labels(color.value).set(0)
        self.metrics.child_restarts.labels(color.value).inc()
        s = self.rollout.state
        if s.active is color and s.candidate is color:
            self.pipeline.child_exited(child, returncode)
        elif s.active is color:
            # The acting stable color died: whatever it left running is fenced off at once.
            self._spawn(self._bump("restart"))

    async def _bump(self, reason: str) -> None:
        with contextlib.suppress(RedisUnavailable, Refused):
            await self.rollout.bump(reason)

    def _on_permit(self, child: Child, msg: dict[str, Any]) -> None:
        self._spawn(self._permit(child, msg))

    async def _permit(self, child: Child, msg: dict[str, Any]) -> None:
        told = self.told[child.color]
        epoch = told[1] if told else self.rollout.state.epoch
        if told is None or self._fenced_self:
            reason = "not_active"
        elif self.rollout.restoring:
            reason = "unavailable"  # executed keys are being put back into Redis
        else:
            # The color is the channel's: a child cannot ask as the other one.
            reason = await self.arbiter.permit(
                child.color.value, epoch, msg["key"], f"{child.pid}:{msg['request_id']}"
            )
            if reason == "regressed":
                self._hint.set()  # Redis went back in time: the reconciler sets it right
                reason = "unavailable"
            elif reason == "ok":
                self.pipeline.granted(child.color, msg["key"], epoch)
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
        child.log.debug("unsolicited_reply", type=msg["type"], request_id=msg.get("request_id"))

    # reporting --------------------------------------------------------------------------
    def _status_line(self) -> str:
        s = self.rollout.state
        return (
            f"active={s.active or 'none'} epoch={s.epoch} mode={s.mode} stable={s.stable} "
            f"candidate={s.candidate or 'none'} "
            f"redis={'up' if self._redis_up.is_set() else 'down'}"
        )

    @property
    def fenced_self(self) -> bool:
        """True while every child is told to stand by: the lease may be lost."""
        return self._fenced_self

    @property
    def redis_is_up(self) -> bool:
        return self._redis_up.is_set()

    def _lock_state_dir(self) -> None:
        """One daemon per state_dir (flock on ``state_dir/lock``, let go by the kernel when
        this process dies however it dies)."""
        path = self.config.supervisor.state_dir / "lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise NamespaceHeld(
                f"another daemon uses {self.config.supervisor.state_dir}; refusing to start"
            ) from None
        self._state_lock = fd

    def _kill_leftovers(self) -> None:
        killed = kill_leftovers(read_records(self._records_path))
        if killed:
            log.warning("killed_leftover_children", pids=killed)

    def _write_children_record(self) -> None:
        self.reaper.record()

    async def status(self, flips: int = 10) -> dict[str, Any]:
        """The ``status`` object (see :mod:`supervisor.control.commands.status`)."""
        from supervisor.control.commands.status import build

        return await build(self, flips)

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
        env.update(
            {
                "AGENTSUP_REDIS_URL": self.config.redis_url(),
                "AGENTSUP_NAMESPACE": self.config.supervisor.namespace,
                "AGENTSUP_ACTIVE_KEY": self.config.redis.active_key,
                "AGENTSUP_PERMIT_TTL_MS": str(self.config.redis.permit_ttl_s * 1000),
                "AGENTSUP_PERMIT_VALID_MS": str(self.config.redis.permit_valid_ms),
                # Permits go through the channel (the color is the channel's) unless the
                # children were given the Redis access a direct permit needs.
                "AGENTSUP_PERMITS": "direct"
                if getattr(self.config.redis, "child_access", "read") in ("permit", "full")
                else "channel",
            }
        )
        return env


async def _cancel_all(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel and wait; a task whose library swallowed the cancellation is asked again."""
    pending = {t for t in tasks if not t.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=1.0)
        for task in pending:
            log.warning("task_ignored_cancel", task=task.get_name())


def run(config: Config) -> int:
    """Run the daemon on uvloop until it stops; returns the process exit code."""
    import uvloop

    return int(uvloop.run(Daemon(config).run()))
