"""``running_daemon()``: a real ``agentsup run`` process for the tests, and ways to watch it.

The daemon logs JSON lines to stdout; the harness reads them as they come and lets a test
wait for the record it expects (``await d.wait_log("flip", reason="switch")``), with a
timeout, instead of sleeping and hoping.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from tests.redis_server import short_tempdir

PY = sys.executable
DEMO_AGENT = [PY, "-m", "supervisor.demo.agent"]
SEED_AGENT = [PY, str(Path(__file__).parent / "agents" / "seed_agent.py")]


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
    def __init__(self, directory: Path, config: Path, env: dict[str, str]) -> None:
        self.dir = directory
        self.config = config
        self.socket = directory / "control.sock"
        self.state_dir = directory / "state"
        self.env = env
        self.proc: asyncio.subprocess.Process | None = None
        self.logs: list[dict[str, Any]] = []
        self.raw_stderr: list[str] = []
        self._changed = asyncio.Condition()
        self._readers: list[asyncio.Task[None]] = []

    async def start(self, *, wait_ready: bool = True) -> None:
        self.proc = await asyncio.create_subprocess_exec(
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
        )
        assert self.proc.stdout is not None
        assert self.proc.stderr is not None
        self._readers = [
            asyncio.create_task(self._read(self.proc.stdout)),
            asyncio.create_task(self._read_err(self.proc.stderr)),
        ]
        if wait_ready:
            await self.wait_log("ready", timeout=20)

    async def _read(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                record = {"event": "_unparsed", "line": line.decode(errors="replace")}
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


def alive(pid: int) -> bool:
    """True if the process exists and is not a zombie (PID 1 here may not reap)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2 :][:1] != b"Z"


@contextlib.asynccontextmanager
async def running_daemon(
    *,
    redis_url: str | None,
    blue: dict[str, Any] | None = None,
    green: dict[str, Any] | None = None,
    sections: dict[str, dict[str, Any]] | None = None,
    env: dict[str, str] | None = None,
    wait_ready: bool = True,
) -> AsyncIterator[DaemonProcess]:
    """Start ``agentsup run`` with a fresh config; SIGTERM and clean up on the way out."""
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
    daemon = DaemonProcess(directory, config, full_env)
    try:
        await daemon.start(wait_ready=wait_ready)
        yield daemon
    finally:
        if daemon.proc is not None and daemon.proc.returncode is None:
            with contextlib.suppress(Exception):
                await daemon.stop()
            if daemon.proc.returncode is None:
                daemon.proc.kill()
                await daemon.proc.wait()
        shutil.rmtree(directory, ignore_errors=True)


def kill_group_leftovers(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
