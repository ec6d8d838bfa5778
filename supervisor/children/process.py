"""One color's child process: spawn, watch, restart with backoff, stop in order, always reap.

States (a state changes only in :meth:`Child._set_state`)::

    STOPPED ─start─► STARTING ─hello / start_seconds─► RUNNING
                        │                                 │ exits
                        ▼                                 ▼
                      EXITED ─► BACKOFF ─► STARTING      EXITED ─► ... ─► FATAL (too many)
    any ─stop()─► STOPPING ─► STOPPED

Each child runs in its own process group with a parent-death signal, so that a daemon
killed with -9 leaves nothing behind that could still move money; its pid, group and start
time are also written to ``state_dir/children.json`` so that the next daemon can kill anything
the signal missed (grandchildren keep the group). What a child starts that leaves its group
(``setsid()``) is remembered as its tree and killed once the child is gone: see
:mod:`supervisor.children.reaper`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import socket
import time
import uuid
from collections import deque
from collections.abc import Callable
from enum import StrEnum
from typing import Any

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    wait_exponential,
    wait_random,
)

from supervisor.children.cgroup import ColorCgroup
from supervisor.children.channel import ChannelProtocol
from supervisor.children.proctable import ProcessTable, kill_all
from supervisor.children.proctable import start_time_of as start_time_of
from supervisor.children.reaper import spawning
from supervisor.config import AgentSection, Color
from supervisor.errors import SupervisorError
from supervisor.logs import get as get_logger

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)
_prctl = _libc.prctl


def _die_with_parent() -> None:
    # Runs in the forked child before exec: only an already-resolved C call, nothing that
    # takes a lock. SIGKILL, because a child that outlives its supervisor has lost its fence.
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class ChildState(StrEnum):
    STOPPED = "STOPPED"  # not running, on purpose
    STARTING = "STARTING"  # spawned; waiting for hello or start_seconds
    RUNNING = "RUNNING"  # said hello, or stayed up start_seconds
    BACKOFF = "BACKOFF"  # exited unexpectedly; waiting before the next start
    STOPPING = "STOPPING"  # SIGTERM sent to the group; waiting for it to exit
    EXITED = "EXITED"  # just exited (passes on to BACKOFF, FATAL or STOPPED)
    FATAL = "FATAL"  # restarted too often; left down until an operator acts


class ChildUnavailable(SupervisorError):
    """A request to a child that cannot be answered: it does not speak the protocol, or its
    channel closed (it exited) first."""

    code = "child_unavailable"


class _Exited(Exception):
    """The child exited without being asked to (tenacity retries these)."""

    def __init__(self, returncode: int) -> None:
        self.returncode = returncode
        super().__init__(f"exited with {returncode}")


class _ExitedAfterStableRun(Exception):
    """The child exited after running long enough that its backoff starts over."""


class Child:
    """One color: the configured command run as a supervised child process."""

    def __init__(
        self,
        color: Color,
        cfg: AgentSection,
        env: dict[str, str],
        *,
        on_message: Callable[[Child, dict[str, Any]], None],
        on_protocol_error: Callable[[Child, str, str], None],
        on_state: Callable[[Child], None],
        on_exit: Callable[[Child, int], None],
        on_orphan_killed: Callable[[], None],
        cgroup: ColorCgroup | None = None,
    ) -> None:
        self.color = color
        self.cfg = cfg
        self._env = env
        self._on_message = on_message
        self._on_protocol_error = on_protocol_error
        self._on_state = on_state
        self._on_exit = on_exit
        self._on_orphan_killed = on_orphan_killed
        self.cgroup = cgroup  # the color's cgroup, when the daemon has a delegated one
        self.state = ChildState.STOPPED
        self.pid: int | None = None
        self.start_time: int | None = None  # /proc start time of the current process
        # What the current process started (its tree), pid → start time: killed once it is gone.
        self.descendants: dict[int, int] = {}
        self.started_at: float | None = None  # monotonic, when the current process started
        self.restarts = 0
        self.last_exit: int | None = None
        self.hello: dict[str, Any] | None = None  # the hello message, once it came
        self.last_heartbeat: float | None = None  # monotonic
        self.channel: ChannelProtocol | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._stopping = asyncio.Event()
        self.spawned = asyncio.Event()  # set once the first start has been tried
        self._revive = asyncio.Event()
        self._exits: deque[float] = deque()
        self._pumps: list[asyncio.Task[None]] = []
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}  # request_id -> reply
        self.log = get_logger("child", color=color.value, version=cfg.version)

    # state ------------------------------------------------------------------------------
    def _set_state(self, state: ChildState) -> None:
        if state is self.state:
            return
        self.log.info("child_state", state=state.value, previous=self.state.value, pid=self.pid)
        self.state = state
        self._on_state(self)

    @property
    def speaks_protocol(self) -> bool:
        return self.hello is not None

    @property
    def uptime(self) -> float | None:
        return None if self.started_at is None else time.monotonic() - self.started_at

    def send(self, msg: dict[str, Any]) -> bool:
        """Write a message to the child if it speaks the protocol; False otherwise."""
        channel = self.channel
        if channel is None or self.hello is None:
            return False
        return channel.send(msg)

    async def request(self, msg: dict[str, Any], timeout: float) -> dict[str, Any]:  # noqa: ASYNC109
        """Send ``msg`` and wait for the child's reply carrying the same ``request_id`` (one
        is made when ``msg`` has none): a ``snapshot`` for a ``snapshot_request``, a
        ``restored`` for a ``restore``, a ``mirror_result`` for a ``mirror``.

        Raises :class:`ChildUnavailable` when the child does not speak the protocol, its
        channel closes or it exits before answering, and ``TimeoutError`` after ``timeout``::

            reply = await child.request({"type": "snapshot_request"}, timeout=5.0)
        """
        request_id = msg.setdefault("request_id", uuid.uuid4().hex)
        waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = waiter
        try:
            if not self.send(msg):
                raise ChildUnavailable(f"{self.color} does not take requests now")
            async with asyncio.timeout(timeout):
                return await waiter
        finally:
            self._waiting.pop(request_id, None)

    def resolve(self, reply: dict[str, Any]) -> bool:
        """Hand a reply to the request waiting for it; False when none is (unsolicited)."""
        waiter = self._waiting.get(reply.get("request_id"))  # type: ignore[arg-type]
        if waiter is None or waiter.done():
            return False
        waiter.set_result(reply)
        return True

    def _fail_requests(self, why: str) -> None:
        for waiter in self._waiting.values():
            if not waiter.done():
                waiter.set_exception(ChildUnavailable(why))

    def said_hello(self, msg: dict[str, Any]) -> None:
        self.hello = msg
        self.last_heartbeat = time.monotonic()
        if self.state is ChildState.STARTING:
            self._set_state(ChildState.RUNNING)

    # the supervision loop ---------------------------------------------------------------
    async def supervise(self) -> None:
        """Run the child until :meth:`stop`, restarting it with capped, jittered backoff;
        more than ``max_restarts`` exits within ``period_s`` and it goes FATAL."""
        policy = self.cfg.restart
        while not self._stopping.is_set():
            retrying = AsyncRetrying(
                retry=retry_if_exception_type(_Exited),
                # Doubling from backoff_initial_s up to backoff_max_s, plus up to one initial
                # step of jitter so that two colors crashing together do not restart in step.
                wait=wait_exponential(multiplier=policy.backoff_initial_s, max=policy.backoff_max_s)
                + wait_random(0, policy.backoff_initial_s),
                stop=self._too_many_exits,
                sleep=self._backoff,
                before_sleep=self._entering_backoff,
                reraise=True,
            )
            try:
                async for attempt in retrying:
                    with attempt:
                        await self._run_once()
            except _ExitedAfterStableRun:
                if self._too_many_exits(None):
                    await self._fatal()
                continue  # a fresh backoff: it ran long enough to have been healthy
            except _Exited:
                await self._fatal()
                continue
            return  # _run_once returned: we were asked to stop

    def _too_many_exits(self, _state: RetryCallState | None) -> bool:
        now = time.monotonic()
        while self._exits and now - self._exits[0] > self.cfg.restart.period_s:
            self._exits.popleft()
        return len(self._exits) > self.cfg.restart.max_restarts

    def _entering_backoff(self, state: RetryCallState) -> None:
        delay = state.next_action.sleep if state.next_action else 0.0
        self.log.info("child_backoff", delay_s=round(delay, 3), exits=len(self._exits))
        self._set_state(ChildState.BACKOFF)

    async def _backoff(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _fatal(self) -> None:
        self.log.error(
            "child_fatal",
            exits=len(self._exits),
            period_s=self.cfg.restart.period_s,
            hint="fix the agent, then `agentsup restart " + self.color.value + "`",
        )
        self._set_state(ChildState.FATAL)
        waiters = {
            asyncio.ensure_future(self._stopping.wait()),
            asyncio.ensure_future(self._revive.wait()),
        }
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()
        self._revive.clear()
        self._exits.clear()

    def revive(self) -> bool:
        """Start a FATAL child again (an operator's decision). False if it was not FATAL."""
        if self.state is not ChildState.FATAL:
            return False
        self._revive.set()
        return True

    async def _run_once(self) -> None:
        if self._stopping.is_set():
            return
        self._set_state(ChildState.STARTING)
        try:
            proc = await self._spawn()
        except OSError as exc:
            self.spawned.set()
            self.log.error("child_spawn_failed", error=str(exc), command=self.cfg.command)
            self._exits.append(time.monotonic())
            self._set_state(ChildState.EXITED)
            raise _Exited(127) from None
        self.spawned.set()
        timer = asyncio.get_running_loop().call_later(self.cfg.start_seconds, self._started)
        returncode = await proc.wait()
        timer.cancel()
        ran = self.uptime or 0.0
        await self._after_exit(proc)
        if self._stopping.is_set():
            self._set_state(ChildState.STOPPED)
            return
        self.log.warning("child_exited", returncode=returncode, ran_s=round(ran, 3))
        self._set_state(ChildState.EXITED)
        self._exits.append(time.monotonic())
        self.restarts += 1
        self._on_exit(self, returncode)
        if ran >= self.cfg.restart.period_s:
            raise _ExitedAfterStableRun()
        raise _Exited(returncode)

    def _started(self) -> None:
        if self.state is ChildState.STARTING:
            self._set_state(ChildState.RUNNING)

    async def _spawn(self) -> asyncio.subprocess.Process:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            env = dict(self._env)
            env["AGENTSUP_FD"] = str(theirs.fileno())
            with spawning():  # the reaper must not take it for an orphan before its pid is ours
                proc = await asyncio.create_subprocess_exec(
                    *self.cfg.command,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                    env=env,
                    cwd=self.cfg.cwd,
                    pass_fds=(theirs.fileno(),),
                    start_new_session=True,  # its own process group (and session)
                    preexec_fn=self._in_child,
                    limit=1 << 20,
                )
                self._proc = proc
                self.pid = proc.pid
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        try:
            await self._watch(proc, ours)
        except BaseException:
            # Never a process without a supervisor: what could not be watched is killed and
            # reaped before the failure goes up (and counts as an exit).
            self._kill_group(proc.pid, signal.SIGKILL)
            await proc.wait()
            await self._after_exit(proc)
            raise
        return proc

    def _in_child(self) -> None:
        _die_with_parent()
        if self.cgroup is not None:
            self.cgroup.join_in_child()

    async def _watch(self, proc: asyncio.subprocess.Process, ours: socket.socket) -> None:
        self.start_time = start_time_of(proc.pid)
        if self.cgroup is not None and not self.cgroup.holds(proc.pid):
            self.log.warning(
                "cgroup_not_joined",
                cgroup=str(self.cgroup.path),
                hint="contained by its process group and the subreaper only",
            )
        self.descendants = {}
        self.started_at = time.monotonic()
        self.hello = None
        self.last_heartbeat = None
        self.last_exit = None
        self.log = self.log.bind(pid=proc.pid)
        loop = asyncio.get_running_loop()
        _, channel = await loop.connect_accepted_socket(
            lambda: ChannelProtocol(
                lambda msg: self._on_message(self, msg),
                lambda kind, detail: self._on_protocol_error(self, kind, detail),
                self._channel_closed,
            ),
            ours,
        )
        self.channel = channel
        assert proc.stdout is not None
        assert proc.stderr is not None
        self._pumps = [
            asyncio.create_task(self._pump(proc.stdout, "stdout")),
            asyncio.create_task(self._pump(proc.stderr, "stderr")),
        ]
        self.log.info("child_spawned", command=self.cfg.command)
        self._on_state(self)  # same state, new pid: the daemon records it

    def _channel_closed(self) -> None:
        self._fail_requests(f"{self.color}'s channel closed")
        if self.hello is not None:
            self.log.info("channel_closed")

    async def _pump(self, stream: asyncio.StreamReader, name: str) -> None:
        """Copy the child's output into the structured log, a line at a time."""
        log = self.log.bind(stream=name)
        while True:
            try:
                line = await stream.readline()
            except ValueError:  # a line over the limit: asyncio dropped it
                log.warning("child_output_line_too_long")
                continue
            if not line:
                return
            log.info("child_output", line=line.decode("utf-8", "replace").rstrip())

    async def _after_exit(self, proc: asyncio.subprocess.Process) -> None:
        self.last_exit = proc.returncode
        # The leader is gone; anything it left in its group goes with it, and so does the rest
        # of its tree: what it set apart (setsid) is in what the last look remembered, what is
        # still in its group or session is found by its number.
        # (Unless the pid names a new process already: the kernel reuses no pid that a live
        # group still bears, so then the group is empty and the number is someone else's.)
        if start_time_of(proc.pid) is None:
            self._kill_group(proc.pid, signal.SIGKILL)
        table = await asyncio.to_thread(ProcessTable.read)
        self._kill_orphans({**self.descendants, **table.left_behind(proc.pid)}, "leader_gone")
        self._empty_cgroup("leader_gone")
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        for task in self._pumps:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), 1.0)
            task.cancel()
        self._pumps = []
        self._proc = None
        self.pid = None
        self.start_time = None
        self.descendants = {}
        self.started_at = None
        self.log = self.log.unbind("pid")

    # stopping ---------------------------------------------------------------------------
    async def stop(self) -> None:
        """SIGTERM to the group, wait ``stop_timeout_s``, SIGKILL the group; always reaped."""
        self._stopping.set()
        proc = self._proc
        if proc is None or proc.returncode is not None:
            if self.state in (ChildState.FATAL, ChildState.BACKOFF, ChildState.EXITED):
                self._set_state(ChildState.STOPPED)
            return
        self._set_state(ChildState.STOPPING)
        # Look at the whole tree while the leader still holds it together: once the leader is
        # gone, what it set apart can no longer be told from anyone else's by its parent.
        self.remember(await asyncio.to_thread(ProcessTable.read))
        self._kill_group(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), self.cfg.stop_timeout_s)
        except TimeoutError:
            self.log.warning("child_stop_timeout", timeout_s=self.cfg.stop_timeout_s)
            self._kill_group(proc.pid, signal.SIGKILL)
            await proc.wait()

    def kill_now(self) -> None:
        """SIGKILL the group and its whole tree at once (a forced exit); the supervision loop
        reaps the leader."""
        self._stopping.set()
        proc = self._proc
        if proc is not None and proc.returncode is None:
            self.remember(ProcessTable.read())
            self._kill_group(proc.pid, signal.SIGKILL)
        kill_all(self.descendants)
        if self.cgroup is not None:
            self.cgroup.kill()

    def _kill_group(self, pid: int, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)

    def _empty_cgroup(self, reason: str) -> None:
        """What is still in the color's cgroup once its process is gone escaped every other
        look (born and set apart between two readings of /proc): the kernel knows it."""
        if self.cgroup is None:
            return
        for pid in self.cgroup.kill():
            self.log.warning("orphan_killed", orphan=pid, reason=reason, found_by="cgroup")
            self._on_orphan_killed()

    def _kill_orphans(self, procs: dict[int, int], reason: str) -> None:
        for pid, cmdline in kill_all(procs).items():
            self.log.warning("orphan_killed", orphan=pid, cmdline=cmdline, reason=reason)
            self._on_orphan_killed()

    # the tree ---------------------------------------------------------------------------
    def remember(self, table: ProcessTable) -> bool:
        """Take the current process's tree from a reading of /proc (if that reading saw this
        very process); True if it changed. Nothing is forgotten that is still the same
        process: the kill after the leader is gone checks each one again."""
        if self.pid is None or not table.is_same(self.pid, self.start_time):
            return False
        tree = table.tree(self.pid)
        kept = {pid: start for pid, start in self.descendants.items() if table.is_same(pid, start)}
        tree.update(kept)
        if tree == self.descendants:
            return False
        self.descendants = tree
        return True

    def records(self) -> list[dict[str, int | bool]]:
        """What the next daemon needs to find this process group and its tree again."""
        if self.pid is None or self.start_time is None:
            return []
        return [
            {"pid": self.pid, "start_time": self.start_time},
            *(
                {"pid": pid, "start_time": start, "group": False}
                for pid, start in sorted(self.descendants.items())
            ),
        ]
