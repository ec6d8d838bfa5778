"""``agentsup run``: the process, from an ordered start to an ordered, bounded stop.

The daemon owns what is the process's: signals, the start and stop order, Redis's health
(and the embedded redis-server), the control and metrics servers, systemd's notifier, the
subreaper, the event loop's own stalls. Everything about the blue/green pair it runs is the
:class:`~supervisor.deployment.Deployment`'s.

Start: state_dir (locked: one daemon per state_dir) → the embedded Redis → Redis answers →
the deployment (lease, reconcile and bump the epoch, children) → control socket → metrics →
``READY=1``. Stop (SIGTERM, SIGINT, or the ``shutdown`` command, all the same path):
``STOPPING=1`` → stop taking commands → the last alerts → the loops → quiesce and stop the
children within their timeouts → what the children set apart → state and lease → Redis →
the embedded Redis last. A second SIGINT forces: SIGKILL to every child group, exit at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import signal
import time
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry
from tenacity import AsyncRetrying, retry_if_exception_type, wait_exponential, wait_random

from supervisor.alerts import Alerter
from supervisor.children.reaper import Reaper, kill_leftovers, read_records
from supervisor.config import Config
from supervisor.control.context import Context
from supervisor.control.server import ControlServer
from supervisor.deployment import Deployment
from supervisor.embedded_redis import EmbeddedRedis
from supervisor.errors import NamespaceHeld, SupervisorError
from supervisor.identity import keep_memory_private
from supervisor.logs import get as get_logger
from supervisor.metrics import Metrics
from supervisor.notify import Notifier
from supervisor.tasks import Tasks

log = get_logger("daemon")

HOUSEKEEPING_S = 0.25
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
        self.embedded = (
            EmbeddedRedis(sup.state_dir, config.redis.embedded_binary)
            if config.redis.embedded
            else None
        )
        # The embedded Redis's password is made by it, for this start; never the children's.
        password = self.embedded.password if self.embedded is not None else None
        password = password or config.redis_password()
        self.redis, self._sentinel = redis_client(config, password)
        self.alerter = Alerter.from_config(
            config.alerts, on_failure=self.metrics.webhook_failures.inc
        )
        self.tasks = Tasks(self._loop_failed, self._job_failed)
        self._redis_up = asyncio.Event()
        self._master: dict[str, str] = {}  # with Sentinel, the master last seen answering
        self.deployment = Deployment(
            config,
            redis=self.redis,
            redis_up=self._redis_up,
            metrics=self.metrics,
            alerter=self.alerter,
            tasks=self.tasks,
            daemon_password=password,
            embedded=self.embedded is not None,
            on_status=self._report_status,
            on_fatal=self._fatal,
        )
        self._records_path = sup.state_dir / "children.json"
        self._leftovers: list[dict[str, Any]] = []  # read at start: see _start
        self.reaper = Reaper(
            self.deployment.children.values(),
            self._records_path,
            ours=lambda: [self.embedded.pid if self.embedded is not None else None],
            on_killed=self.metrics.orphans_killed.inc,
            on_record_failed=self.metrics.state_write_failures.labels("children").inc,
        )
        self.control = ControlServer(
            self.context,
            self.metrics,
            sup.control_socket,
            sup.control_socket_mode,
            sup.allowed_uids,
        )
        self.stop_reason: str | None = None
        self.exit_code = 0
        self.started_at = time.monotonic()
        self.ready = asyncio.Event()
        self._stop = asyncio.Event()
        self._state_lock: int | None = None
        self._sigints = 0

    def context(self, by: str) -> Context:
        """What a control command sees: the deployment, and the way to ask us to stop."""
        return Context(self.deployment, self.request_shutdown, by)

    # life -------------------------------------------------------------------------------
    async def run(self) -> int:
        """Start, serve until asked to stop, stop in order. Returns the exit code."""
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.request_shutdown, "SIGTERM")
        loop.add_signal_handler(signal.SIGINT, self._sigint)
        if self.notifier.watchdog_s:
            self.tasks.loop(self._watchdog_loop(), "watchdog")
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

    def _fatal(self, why: str) -> None:
        """Something this daemon cannot go on from (its lease was taken): stop, exit 1."""
        self.exit_code = 1
        self.request_shutdown(why)

    def _sigint(self) -> None:
        self._sigints += 1
        if self._sigints == 1:
            self.request_shutdown("SIGINT")
            return
        log.warning("forced_exit", hint="second SIGINT: killing every child group now")
        self.deployment.kill_children()
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
        # What a daemon killed with -9 left, read before our reaper rewrites the file (it does
        # every half second, while the start may wait a lease's TTL); killed once the lease is
        # ours (deployment.start).
        self._leftovers = read_records(self._records_path)
        if self.embedded is not None:
            await self.embedded.start()
        await self._connect_redis()
        self.tasks.loop(self.alerter.run(), "alerts")
        self.tasks.loop(self._health_loop(), "redis-health")
        self.tasks.loop(self._housekeeping_loop(), "housekeeping")
        self.tasks.loop(self.reaper.run(), "reaper")  # before any child can orphan one
        await self.deployment.start(self.reaper, self._kill_leftovers)
        await self.control.start()
        address = self.config.metrics.address
        if address is not None:
            port = self.metrics.serve(*address)
            log.info("metrics_listening", address=f"{address[0]}:{port}")
        self.ready.set()
        self.notifier.ready(self.deployment.status_line())
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
                await self.tasks.cancel_loops()
                await self.deployment.stop_children()
                await self.control.drain()
                await self.tasks.cancel_jobs()
        except TimeoutError:
            log.error(
                "shutdown_timeout",
                timeout_s=self.config.supervisor.shutdown_timeout_s,
                hint="killing what is left",
            )
            self.deployment.kill_children()
            self.exit_code = self.exit_code or 1
        await self.reaper.stop()  # whatever the children set apart (setsid) goes too
        self.metrics.close()
        if self._state_lock is not None:  # else another daemon's state: not ours to touch
            await self.deployment.close()
        with contextlib.suppress(Exception):
            await self.redis.aclose()
        if self._sentinel is not None:
            with contextlib.suppress(Exception):
                await self._sentinel.aclose()
        if self.embedded is not None:
            await self.embedded.stop()
        if self._state_lock is not None:
            self.reaper.forget()
            os.close(self._state_lock)
        self.notifier.close()
        log.info("stopped", exit_code=self.exit_code)

    # tasks ------------------------------------------------------------------------------
    def _loop_failed(self, task: asyncio.Task[Any], exc: BaseException) -> None:
        log.error("internal_task_failed", task=task.get_name(), exc_info=exc)
        self._fatal("internal error")

    def _job_failed(self, task: asyncio.Task[Any], exc: BaseException) -> None:
        if not self.deployment.job_failed(task, exc):
            log.error("task_failed", task=task.get_name(), exc_info=exc)

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
            log.info("redis_up", **master_of(self.redis))
        else:
            self._redis_up.clear()
            log.error("redis_down", hint="permits are refused until it answers again")
        self._report_status()

    async def _health_loop(self) -> None:
        cfg = self.config.redis
        while True:
            try:
                await asyncio.wait_for(self.redis.ping(), cfg.socket_timeout_s)
                up = True
            except (RedisError, OSError, TimeoutError):
                up = False
            if up and not self._redis_up.is_set():
                self._set_redis_up(True)
                self.deployment.redis_back()
            elif up and self._master and master_of(self.redis) != self._master:
                # Sentinel moved the master while every PING was answered (an operator's
                # SENTINEL FAILOVER: the old master answers until it is demoted): what a
                # reconnect does, on the new master (notifications, replicas, the truth).
                previous = self._master.get("master")
                log.warning("redis_master_changed", previous=previous, **master_of(self.redis))
                self.deployment.redis_back()
            elif not up:
                self._set_redis_up(False)
            if up:
                self._master = master_of(self.redis)
            await asyncio.sleep(cfg.health_interval_s)

    async def _housekeeping_loop(self) -> None:
        while True:
            await self.deployment.housekeeping(time.monotonic())
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
        self.deployment.loop_stalled(late)
        await asyncio.sleep(0.01)

    # reporting --------------------------------------------------------------------------
    def _report_status(self) -> None:
        self.notifier.status(self.deployment.status_line())

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
        killed = kill_leftovers(self._leftovers)
        if killed:
            log.warning("killed_leftover_children", pids=killed)


def redis_client(config: Config, password: str | None) -> tuple[Redis, Sentinel | None]:
    """The daemon's client: from ``redis.url`` (or the embedded socket), or, with
    ``redis.sentinels``, one that asks the sentinels for the master of ``redis.service_name``
    at every (re)connect and so follows it across a failover. Same timeouts and retries."""
    options: dict[str, Any] = {
        "password": password,
        "socket_timeout": config.redis.socket_timeout_s,
        "socket_connect_timeout": config.redis.socket_timeout_s,
        # One immediate retry (a connection gone stale across a Redis restart, or to a master
        # that failed over), then fail fast: a permit that waits is worse than one refused.
        "retry": Retry(NoBackoff(), 1),
        "health_check_interval": 0,
    }
    if not config.redis.sentinels:
        return Redis.from_url(config.redis_url(), **options), None
    timeout = config.redis.socket_timeout_s
    # The sentinels answer without the master's password (Sentinel's own default).
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        config.redis.sentinel_addresses,
        sentinel_kwargs={"socket_timeout": timeout, "socket_connect_timeout": timeout},
    )
    assert config.redis.service_name is not None  # validated with sentinels
    return sentinel.master_for(config.redis.service_name, **options), sentinel


def master_of(redis: Redis) -> dict[str, str]:
    """``{"master": "host:port"}``: the master a Sentinel client last found; else nothing."""
    address = getattr(redis.connection_pool, "master_address", None)
    return {"master": f"{address[0]}:{address[1]}"} if address else {}


def run(config: Config) -> int:
    """Run the daemon on uvloop until it stops; returns the process exit code."""
    import uvloop

    return int(uvloop.run(Daemon(config).run()))
