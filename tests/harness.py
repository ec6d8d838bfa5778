"""``running_daemon()``: a real ``agentsup run`` process for the tests, and ways to watch it.

The daemon logs JSON lines to stdout; the harness reads them as they come and lets a test
wait for the record it expects (``await d.wait_log("flip", reason="switch")``), with a
timeout, instead of sleeping and hoping.

On the way out, ``running_daemon()`` fails the test when a daemon it started (or one a test
started again in the same directory) went wrong without the test noticing: it exited with
another code than the test declared (``expect_exit``, or ``d.expected_exit`` set on the way),
logged a failed task or an exception (unless the test provokes that event on purpose and says
so in ``allow_errors``), printed a Python traceback, or left a process behind: every child and
embedded redis it logged, and every member of their process groups, must be gone a few
seconds after it exited. A passing test is thus also a daemon that stayed healthy.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence, Set
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from tests.redis_server import short_tempdir

PY = sys.executable
DEMO_AGENT = [PY, "-m", "supervisor.demo.agent"]
SEED_AGENT = [PY, str(Path(__file__).parent / "agents" / "seed_agent.py")]

# Records that say the daemon failed inside, whatever the test saw from outside.
FAILURE_EVENTS = frozenset({"internal_task_failed", "task_failed"})
# Records that carry the processes a daemon started: each must be gone after it exited.
SPAWN_EVENTS = frozenset({"child_spawned", "embedded_redis_started"})
# A daemon's children die with it (a parent-death signal) or just before it exits; this is
# room for a shared, slow machine, not a time anything is expected to take.
LEFTOVER_GRACE_S = 5.0
# How long the way out waits for a daemon to stop: its shutdown_timeout_s (30 s in these
# configs) with room, and less than a test's own timeout, so that a hang is reported with
# its log rather than as a bare pytest-timeout.
STOP_WAIT_S = 40.0


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items()) + " }"
    raise TypeError(value)


def agent(
    command: list[str] | None = None, version: str = "1.0.0", **fields: Any
) -> dict[str, Any]:
    """An ``[agents.COLOR]`` table; the demo agent unless a command is given."""
    return {"command": command or DEMO_AGENT, "version": version, **fields}


def write_config(
    directory: Path,
    *,
    redis_url: str | None,
    blue: dict[str, Any],
    green: dict[str, Any],
    sections: dict[str, dict[str, Any]] | None = None,
) -> Path:
    """A config file for a daemon living in ``directory`` (short path: sockets fit)."""
    tables: dict[str, dict[str, Any]] = {
        "supervisor": {
            "name": "test",
            "namespace": "t",
            "state_dir": str(directory / "state"),
            "control_socket": str(directory / "control.sock"),
            "shutdown_timeout_s": 30.0,
            # A lease found missing (every fresh Redis) is taken a TTL after it is claimed.
            "lease_ttl_s": 1.0,
        },
        "metrics": {"listen": "127.0.0.1:0"},
        "agents.blue": blue,
        "agents.green": green,
    }
    if redis_url is not None:
        tables["redis"] = {"url": redis_url}
    for name, values in (sections or {}).items():
        tables.setdefault(name, {}).update(values)
    lines = []
    for name, values in tables.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {_toml(v)}" for k, v in values.items()]
        lines.append("")
    path = directory / "agentsup.toml"
    path.write_text("\n".join(lines))
    return path


@dataclass
class CliResult:
    rc: int
    out: str
    err: str

    def json(self) -> Any:
        return orjson.loads(self.out)


class DaemonProcess:
    """One ``agentsup run`` process and what it logged.

    Every instance is remembered by its directory, so that ``running_daemon()`` checks the
    daemons a test starts again over the same state (a restart after kill -9) too.
    """

    def __init__(
        self,
        directory: Path,
        config: Path,
        env: dict[str, str],
        cgroup: Path | None = None,
        prefix: Sequence[str] = (),
    ) -> None:
        self.dir = directory
        # A command the daemon is started under, e.g. ["ip", "netns", "exec", NAME] for a
        # "host" of its own (tests/scale/netns.py); it must exec the daemon (same pid).
        self.prefix = list(prefix)
        # A cgroup (v2) directory the daemon is started in, as systemd's Delegate=yes would.
        self.cgroup = cgroup
        self.config = config
        self.socket = directory / "control.sock"
        self.state_dir = directory / "state"
        self.env = env
        self.proc: asyncio.subprocess.Process | None = None
        self.logs: list[dict[str, Any]] = []
        self.raw_stderr: list[str] = []
        # The exit code the test expects; a test that kills the daemon on purpose says so.
        self.expected_exit = 0
        # (pid, start time) of every process it logged starting: a pid alone may be reused.
        self.spawned: list[tuple[int, int | None]] = []
        self._changed = asyncio.Condition()
        self._readers: list[asyncio.Task[None]] = []
        _DAEMONS.setdefault(directory, []).append(self)

    async def start(self, *, wait_ready: bool = True) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            *self.prefix,
            PY,
            "-m",
            "supervisor",
            "run",
            "-c",
            str(self.config),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=self.env,
            limit=4 << 20,
            preexec_fn=self._join_cgroup if self.cgroup is not None else None,
        )
        assert self.proc.stdout is not None
        assert self.proc.stderr is not None
        self._readers = [
            asyncio.create_task(self._read(self.proc.stdout)),
            asyncio.create_task(self._read_err(self.proc.stderr)),
        ]
        if wait_ready:
            await self.wait_log("ready", timeout=20)

    def _join_cgroup(self) -> None:
        assert self.cgroup is not None
        fd = os.open(self.cgroup / "cgroup.procs", os.O_WRONLY)
        try:
            os.write(fd, b"0")
        finally:
            os.close(fd)

    async def _read(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                record = {"event": "_unparsed", "line": line.decode(errors="replace")}
            if record.get("event") in SPAWN_EVENTS and isinstance(record.get("pid"), int):
                # Read at once: a child that crashes at start is gone, and its pid may be reused.
                self.spawned.append((record["pid"], _proc_stat(record["pid"])[2]))
            async with self._changed:
                self.logs.append(record)
                self._changed.notify_all()

    async def _read_err(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            self.raw_stderr.append(line.decode(errors="replace"))

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def find(self, event: str, since: int = 0, **fields: Any) -> list[dict[str, Any]]:
        return [
            r
            for r in self.logs[since:]
            if r.get("event") == event and all(r.get(k) == v for k, v in fields.items())
        ]

    async def wait_log(
        self,
        event: str,
        *,
        timeout: float = 15.0,
        since: int = 0,
        where: Callable[[dict[str, Any]], bool] | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """The first log record (from index ``since``) with this event and these fields."""

        def match() -> dict[str, Any] | None:
            for r in self.find(event, since, **fields):
                if where is None or where(r):
                    return r
            return None

        try:
            async with asyncio.timeout(timeout):
                async with self._changed:
                    while (found := match()) is None:
                        if self.proc is not None and self.proc.returncode is not None:
                            break
                        await self._changed.wait()
        except TimeoutError:
            found = None
        if found is None:
            tail = "\n".join(orjson.dumps(r).decode()[:300] for r in self.logs[-40:])
            raise AssertionError(
                f"no {event!r} log record with {fields} within {timeout} s; last lines:\n{tail}"
                f"\nstderr: {''.join(self.raw_stderr)[-2000:]}"
            )
        return found

    async def cli(self, *args: str, timeout: float = 30.0) -> CliResult:
        """Run ``agentsup ARGS --socket SOCK`` as an operator would."""
        proc = await asyncio.create_subprocess_exec(
            PY,
            "-m",
            "supervisor",
            *args,
            "--socket",
            str(self.socket),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=self.env,
        )
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
        assert proc.returncode is not None
        return CliResult(proc.returncode, out.decode(), err.decode())

    async def status(self) -> dict[str, Any]:
        from supervisor.control.client import request

        result: dict[str, Any] = await asyncio.to_thread(request, self.socket, "status")
        return result

    async def wait_status(
        self, check: Callable[[dict[str, Any]], bool], timeout: float = 15.0
    ) -> dict[str, Any]:
        """Poll the status until ``check`` holds (for states that are not log events)."""
        async with asyncio.timeout(timeout):
            while True:
                st = await self.status()
                if check(st):
                    return st
                await asyncio.sleep(0.05)

    async def signal(self, sig: int) -> None:
        assert self.proc is not None
        if sig == signal.SIGKILL:
            self.expected_exit = -signal.SIGKILL  # a test that kills it means it
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(sig)

    async def wait(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        rc = await asyncio.wait_for(self.proc.wait(), timeout)
        for task in self._readers:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(task, 5)
        return rc

    async def stop(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        if self.proc.returncode is None:
            await self.signal(signal.SIGTERM)
        return await self.wait(timeout)

    def child_pids(self) -> dict[str, int]:
        """The children's pids, from the daemon's own log."""
        pids: dict[str, int] = {}
        for r in self.logs:
            if r.get("event") == "child_spawned":
                pids[r["color"]] = r["pid"]
        return pids


# Every daemon started in a directory, the first by running_daemon() and any the test starts
# again over the same state: running_daemon() checks them all on the way out.
_DAEMONS: dict[Path, list[DaemonProcess]] = {}


def _proc_stat(pid: int) -> tuple[bytes, int, int] | tuple[None, None, None]:
    """State, process group and start time (clock ticks) from /proc/PID/stat."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None, None, None
    # The command name is in parentheses and may contain anything: split after the last ')'.
    fields = stat[stat.rfind(b")") + 2 :].split()
    return fields[0], int(fields[2]), int(fields[19])


def alive(pid: int) -> bool:
    """True if the process exists and is not a zombie (PID 1 here may not reap)."""
    state, _, _ = _proc_stat(pid)
    return state is not None and state != b"Z"


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


def _group_members(pgids: Set[int]) -> list[int]:
    """The live (not zombie) processes whose process group is one of ``pgids``."""
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        state, pgrp, _ = _proc_stat(int(entry.name))
        if pgrp in pgids and state != b"Z":
            members.append(int(entry.name))
    return members


def _leftovers(spawned: Iterable[tuple[int, int | None]]) -> list[int]:
    """What is still alive of these processes and of their process groups (each child leads
    its own group: what it started stays there unless it moved out on purpose)."""
    mine: list[int] = []
    groups: set[int] = set()
    for pid, started in spawned:
        state, _, now = _proc_stat(pid)
        if state is not None and now != started:
            # The pid names another process now: Linux hands out no pid still used as a
            # process group's id, so the old group is empty too.
            continue
        if state is not None and state != b"Z":
            mine.append(pid)
        groups.add(pid)
    return sorted(set(mine) | set(_group_members(groups)))


def _sweep_groups(spawned: Iterable[tuple[int, int | None]]) -> None:
    """SIGKILL these processes' groups, but not a group whose leader's pid was reused."""
    for pid, started in spawned:
        state, _, now = _proc_stat(pid)
        if state is None or now == started:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)


async def _wait_gone(spawned: list[tuple[int, int | None]]) -> list[int]:
    """Poll /proc (no event tells when another parent's child is gone) for a few seconds."""
    deadline = time.monotonic() + LEFTOVER_GRACE_S
    while (left := _leftovers(spawned)) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return left


def _problem_records(daemon: DaemonProcess, allow: Set[str]) -> list[dict[str, Any]]:
    return [
        r
        for r in daemon.logs
        if r.get("event") not in allow
        and (r.get("event") in FAILURE_EVENTS or "exception" in r or "exc_info" in r)
    ]


async def _finish(daemon: DaemonProcess, allow: Set[str]) -> list[str]:
    """Stop ``daemon`` if it still runs; what went wrong with it, as evidence for a failure."""
    if daemon.proc is None:
        return []
    problems = []
    if daemon.proc.returncode is None:
        try:
            await daemon.stop(STOP_WAIT_S)
        except TimeoutError:
            tail = "\n".join(orjson.dumps(r).decode()[:300] for r in daemon.logs[-40:])
            problems.append(
                f"did not exit within {STOP_WAIT_S} s of SIGTERM: killed; last:\n{tail}"
            )
            daemon.proc.kill()
            await daemon.wait()
    else:
        await daemon.wait()  # the readers: every line it wrote
    rc = daemon.proc.returncode
    if rc != daemon.expected_exit:
        problems.append(f"exited with {rc}, expected {daemon.expected_exit}")
    if rc == -signal.SIGKILL:
        # A daemon killed outright cannot clean up its children's groups (its children die by
        # their parent-death signal, what they started does not): the next daemon would.
        _sweep_groups(daemon.spawned)
    for r in _problem_records(daemon, allow):
        problems.append("logged: " + orjson.dumps(r).decode()[:1500])
    stderr = "".join(daemon.raw_stderr)
    if "Traceback (most recent call last)" in stderr and "stderr_traceback" not in allow:
        problems.append(f"a traceback on stderr:\n{stderr[-3000:]}")
    for pid in await _wait_gone(daemon.spawned):
        problems.append(
            f"left process {pid} behind ({_cmdline(pid)}), {LEFTOVER_GRACE_S} s after it exited"
        )
    if problems and stderr and "stderr_traceback" not in allow:
        problems.append(f"stderr tail:\n{stderr[-2000:]}")
    return [f"daemon {daemon.pid}: {p}" for p in problems]


@contextlib.asynccontextmanager
async def running_daemon(
    *,
    redis_url: str | None,
    blue: dict[str, Any] | None = None,
    green: dict[str, Any] | None = None,
    sections: dict[str, dict[str, Any]] | None = None,
    env: dict[str, str] | None = None,
    wait_ready: bool = True,
    expect_exit: int = 0,
    allow_errors: Set[str] = frozenset(),
    cgroup: Path | None = None,
    prefix: Sequence[str] = (),
) -> AsyncIterator[DaemonProcess]:
    """Start ``agentsup run`` with a fresh config; SIGTERM, check and clean up on the way out.

    The test fails on the way out if a daemon in this directory exited with another code than
    ``expect_exit`` (``d.expected_exit`` may change it on the way), logged one of
    ``FAILURE_EVENTS`` or an exception, printed a traceback, or left a process behind.
    ``allow_errors`` names the events a test provokes on purpose (``"stderr_traceback"`` for a
    traceback on stderr); the checks still run when the test itself failed, and then add to
    its error instead of hiding it. ``prefix`` starts it under a command that execs it, e.g.
    in a network namespace of its own (tests/scale/netns.py).
    """
    directory = short_tempdir("as-d-")
    config = write_config(
        directory,
        redis_url=redis_url,
        blue=blue or agent(version="1.0.0"),
        green=green or agent(version="2.0.0"),
        sections=sections,
    )
    full_env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    full_env.update({"PYTHONUNBUFFERED": "1", **(env or {})})
    daemon = DaemonProcess(directory, config, full_env, cgroup, prefix)
    daemon.expected_exit = expect_exit

    async def finish() -> list[str]:
        problems = []
        try:
            for each in _DAEMONS.get(directory, []):
                problems += await _finish(each, allow_errors)
        finally:
            _DAEMONS.pop(directory, None)
            shutil.rmtree(directory, ignore_errors=True)
        return problems

    try:
        await daemon.start(wait_ready=wait_ready)
        yield daemon
    except BaseException as exc:
        for problem in await finish():
            exc.add_note(problem)
        raise
    problems = await finish()
    if problems:
        raise AssertionError("the daemon went wrong:\n" + "\n".join(problems))


def kill_group_leftovers(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
