"""The control socket: JSON lines, one request and one response per line, on a Unix socket.

Request::   {"cmd": "switch", "args": {"color": "green"}}
Response::  {"ok": true, "result": {...}}
            {"ok": false, "error": {"code": "already_active", "message": "..."}}

The socket is created with mode 0600 (by default) and every connection's peer is checked
with SO_PEERCRED against the allowed uids (root, the daemon's own uid, and
``supervisor.allowed_uids``), then by its process ancestry: a peer that descends from the
daemon (a supervised child, its children, their orphans) is refused whatever its uid, since a
child runs as the daemon's uid and would otherwise pass (DESIGN.md, invariant 10). Either
refusal is one ``forbidden`` line and the door closed, never a command. A malformed request
gets an error response and the connection stays usable.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, ValidationError

from supervisor.children.proctable import start_time_of
from supervisor.control.commands import COMMANDS
from supervisor.control.context import Context
from supervisor.errors import Refused, SupervisorError
from supervisor.identity import Lineage, lineage
from supervisor.logs import get as get_logger
from supervisor.metrics import Metrics

log = get_logger("control")

MAX_REQUEST = 64 * 1024
# How long a refused peer's request is awaited before the refusal is sent: a client writes
# its request at once, and reading it first spares it a broken pipe in place of the reason.
REFUSAL_READ_S = 2.0
_UCRED = struct.Struct("3i")  # pid, uid, gid


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    cmd: str
    args: dict[str, Any] = {}


def peer_uid(sock: socket.socket) -> tuple[int, int]:
    """(pid, uid) of the process on the other end of a Unix socket."""
    pid, uid, _gid = _UCRED.unpack(
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    )
    return pid, uid


def error(code: str, message: str) -> dict[str, Any]:
    return {"ok": False, "error": {"code": code, "message": message}}


class ControlServer:
    """The socket, its door (uid, then lineage) and the dispatch of each request to its
    command, which runs against ``context(by)``: what the daemon lets commands see, for the
    operator ``by`` (``uid:N``). The server knows nothing else of the daemon."""

    def __init__(
        self,
        context: Callable[[str], Context],
        metrics: Metrics,
        path: Path,
        mode: int,
        allowed_uids: Iterable[int],
    ) -> None:
        self.context = context
        self.metrics = metrics
        self.path = path
        self.mode = mode
        self.allowed = {0, os.getuid(), *allowed_uids}
        # Exported at 0 from the start, so that an alert on its increase has a baseline.
        metrics.control_refused.labels("child")
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task[Any]] = set()
        self._started = start_time_of(os.getpid()) or 0  # the lineage walk stops above it

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        await self._clear_stale_socket()
        # Bind under a tight umask so the socket never exists with looser permissions, even
        # for the instant before the chmod.
        old = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(
                self._serve, path=str(self.path), limit=MAX_REQUEST
            )
        finally:
            os.umask(old)
        os.chmod(self.path, self.mode)

    async def _clear_stale_socket(self) -> None:
        if not self.path.exists():
            return
        try:
            _, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(self.path)), 1.0)
        except (OSError, TimeoutError):
            self.path.unlink(missing_ok=True)  # left behind by a daemon that died
            return
        writer.close()
        raise SupervisorError(f"another daemon answers on {self.path}; refusing to start twice")

    async def close(self) -> None:
        """Stop accepting; let requests in flight finish (bounded by the caller)."""
        if self._server is not None:
            self._server.close()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def drain(self) -> None:
        for task in list(self._conns):
            if task is not asyncio.current_task():
                task.cancel()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        metrics = self.metrics
        try:
            sock = writer.get_extra_info("socket")
            pid, uid = peer_uid(sock)
            if uid not in self.allowed:
                metrics.control_refused.labels("uid").inc()
                log.warning(
                    "control_refused", peer_pid=pid, peer_uid=uid, allowed=sorted(self.allowed)
                )
                await self._refuse(
                    reader,
                    writer,
                    f"uid {uid} may not control this daemon (see supervisor.allowed_uids)",
                )
                return
            if not await self._admit_lineage(reader, writer, pid, uid):
                return
            while True:
                try:
                    line = await reader.readline()
                except ValueError:
                    metrics.control_refused.labels("too_long").inc()
                    await self._reply(
                        writer, error("bad_request", f"request longer than {MAX_REQUEST} bytes")
                    )
                    return
                if not line:
                    return
                response = await self._handle(line, uid)
                await self._reply(writer, response)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._conns.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _admit_lineage(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, pid: int, uid: int
    ) -> bool:
        """Refuse a peer that belongs to a supervised child's process tree (or that is gone
        before its ancestry could be read: then nobody can tell it is not one)."""
        kin = lineage(pid, os.getpid(), self._started)
        if kin in (Lineage.OUTSIDE, Lineage.OWN):
            return True
        reason = "child" if kin is Lineage.CHILD else "unverified"
        self.metrics.control_refused.labels(reason).inc()
        log.warning("control_refused", reason=reason, peer_pid=pid, peer_uid=uid)
        message = (
            "a supervised child may not control its supervisor"
            if kin is Lineage.CHILD
            else f"cannot tell whether peer pid {pid} is a supervised child (it is gone)"
        )
        await self._refuse(reader, writer, message)
        return False

    async def _refuse(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, message: str
    ) -> None:
        """One ``forbidden`` line, after the peer's request (never read, never run)."""
        with contextlib.suppress(TimeoutError, ValueError, asyncio.IncompleteReadError):
            async with asyncio.timeout(REFUSAL_READ_S):
                await reader.readline()
        await self._reply(writer, error("forbidden", message))

    async def _reply(self, writer: asyncio.StreamWriter, response: dict[str, Any]) -> None:
        writer.write(orjson.dumps(response, option=orjson.OPT_APPEND_NEWLINE))
        await writer.drain()

    async def _handle(self, line: bytes, uid: int) -> dict[str, Any]:
        metrics = self.metrics
        try:
            request = Request.model_validate(orjson.loads(line))
        except (orjson.JSONDecodeError, ValidationError) as exc:
            metrics.control_refused.labels("bad_request").inc()
            return error("bad_request", f"not a valid request: {_short(exc)}")
        command = COMMANDS.get(request.cmd)
        if command is None:
            metrics.control_refused.labels("unknown_command").inc()
            return error(
                "unknown_command",
                f"unknown command {request.cmd!r}; known: {', '.join(sorted(COMMANDS))}",
            )
        try:
            args = command.Args.model_validate(request.args)
        except ValidationError as exc:
            metrics.control_refused.labels("bad_request").inc()
            return error("bad_request", f"{request.cmd}: {_short(exc)}")
        try:
            result = await command.run(self.context(f"uid:{uid}"), args)
        except Refused as exc:
            metrics.control_requests.labels(request.cmd, "refused").inc()
            return error(exc.code, str(exc))
        except SupervisorError as exc:
            metrics.control_requests.labels(request.cmd, "error").inc()
            return error(exc.code, str(exc))
        metrics.control_requests.labels(request.cmd, "ok").inc()
        return {"ok": True, "result": result}


def _short(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'request'}: {e['msg']}" for e in exc.errors()
        )
    return str(exc)
