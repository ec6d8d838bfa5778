"""The agent's end of the channel: the line writer, the reader and the dispatch of pushes.

:class:`Channel` is the base of :class:`~supervisor.agent.Agent`. It holds what the
supervisor's pushes keep (role, epoch, allocation, flags, quiesce), writes one JSON line per
message without ever blocking (:meth:`Channel._send`), reads and splits the supervisor's lines
in chunks, hands each to its handler, answers requests with the agent's hooks, and marks the
agent lost when the channel closes. The public API (construction, permits, reports, hook
registration) is the Agent's, in :mod:`supervisor.agent.client`.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import secrets
import time
import traceback as _traceback
from collections.abc import Awaitable, Callable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final, TypeVar

import orjson

from supervisor.agent.types import (
    _REASONS,
    _ROLES,
    MirrorHook,
    Permit,
    PermitReason,
    PlainHook,
    RestoreHook,
    Role,
    RoleCallback,
    SnapshotHook,
)
from supervisor.protocol import MAX_LINE

# One logger for the whole SDK, under the name it had as a single module.
log = logging.getLogger("supervisor.agent")

T = TypeVar("T")

_READ_CHUNK: Final = 1 << 16
# Past this much unsent data the supervisor is not reading: reports are dropped, not queued
# without bound (a hung daemon must not grow the agent's memory).
_MAX_WRITE_BUFFER: Final = 8 << 20


async def _resolve(value: T | Awaitable[T]) -> T:
    if inspect.isawaitable(value):
        return await value
    return value


class Channel:
    """A supervised agent's side of the channel: what the pushes keep, the reader, the writer.

    Not made on its own: :class:`~supervisor.agent.Agent` is the one to use.
    """

    def __init__(self) -> None:
        self._role = Role.STANDBY
        self._epoch: int | None = None
        self._allocation = 0.0
        self._flags: Mapping[str, Any] = MappingProxyType({})
        self._quiesced = False
        #: Set once the channel to the supervisor is closed: the agent may no longer act.
        self.lost = asyncio.Event()
        #: Reports that could not be sent (channel closed, or the supervisor not reading).
        self.dropped = 0
        self._changed = asyncio.Event()  # replaced on every change; waiters hold the old one

        self._boot = secrets.token_hex(4)
        self._seq = itertools.count(1)
        self._writer: asyncio.StreamWriter | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._pending: dict[str, asyncio.Future[Permit]] = {}
        self._closing = False
        self._bad_lines = 0
        self._bad_logged_at = -1e9

        self._on_role: list[RoleCallback] = []
        self._on_snapshot: SnapshotHook | None = None
        self._on_restore: RestoreHook | None = None
        self._on_mirror: MirrorHook | None = None
        self._on_quiesce: PlainHook | None = None
        self._on_resume: PlainHook | None = None
        self._handlers: dict[str, Callable[[dict[str, Any]], None]] = {
            "role": self._handle_role,
            "flags": self._handle_flags,
            "permit_result": self._handle_permit_result,
            "quiesce": self._handle_quiesce,
            "resume": self._handle_resume,
            "snapshot_request": self._handle_snapshot_request,
            "restore": self._handle_restore,
            "mirror": self._handle_mirror,
            "error": self._handle_error,
        }

    if TYPE_CHECKING:
        # The Agent's error report: a failing hook is reported with it (see _guarded).
        def error(self, kind: str, message: str, traceback: str | None = None) -> None: ...

    # ---------------------------------------------------------------- the channel

    def _token(self) -> str:
        return f"{self._boot}-{next(self._seq)}"

    def _send(self, msg: dict[str, Any]) -> bool:
        """Queue one line; never blocks, never raises. False when it was dropped."""
        writer = self._writer
        if writer is None or self.lost.is_set() or writer.transport.is_closing():
            self.dropped += 1
            return False
        try:
            data = orjson.dumps(msg, default=str, option=orjson.OPT_APPEND_NEWLINE)
        except orjson.JSONEncodeError as exc:
            log.warning("%s message not sent: not JSON (%s)", msg.get("type"), exc)
            self.dropped += 1
            return False
        if len(data) > MAX_LINE + 1:
            log.warning("%s message not sent: %d bytes, over the limit", msg.get("type"), len(data))
            self.dropped += 1
            return False
        if writer.transport.get_write_buffer_size() > _MAX_WRITE_BUFFER:
            self._bad("the supervisor is not reading; report dropped")
            self.dropped += 1
            return False
        try:
            writer.write(data)
        except (OSError, RuntimeError):
            self.dropped += 1
            return False
        return True

    async def _read_loop(self, reader: asyncio.StreamReader) -> None:
        buf = bytearray()
        skipping = False  # inside a line that was over the limit: drop up to its newline
        try:
            while True:
                chunk = await reader.read(_READ_CHUNK)
                if not chunk:
                    return
                buf += chunk
                start = 0
                while (nl := buf.find(b"\n", start)) >= 0:
                    if skipping:
                        skipping = False
                    elif nl - start > MAX_LINE:
                        self._bad(f"line over {MAX_LINE} bytes from the supervisor; skipped")
                    elif nl > start:
                        self._dispatch(bytes(buf[start:nl]))
                    start = nl + 1
                del buf[:start]
                if len(buf) > MAX_LINE:
                    if not skipping:
                        self._bad(f"line over {MAX_LINE} bytes from the supervisor; skipped")
                    skipping = True
                    buf.clear()
        except OSError as exc:
            log.warning("channel read failed: %s", exc)
        finally:
            if not self._closing:  # aclose() cancels this task: that loss is not news
                self._mark_lost("the supervisor closed the channel")

    def _bad(self, what: str) -> None:
        # Logged at most once a second with the count since, so a burst is one line.
        self._bad_lines += 1
        now = time.monotonic()
        if now - self._bad_logged_at >= 1.0:
            log.warning("%s (%d such problems so far)", what, self._bad_lines)
            self._bad_logged_at = now

    def _dispatch(self, line: bytes) -> None:
        try:
            msg = orjson.loads(line)
        except orjson.JSONDecodeError:
            self._bad("malformed line from the supervisor; skipped")
            return
        if type(msg) is not dict or type(msg.get("type")) is not str:
            self._bad("line from the supervisor without a type; skipped")
            return
        handler = self._handlers.get(msg["type"])
        if handler is None:
            log.debug("ignored a message of unknown type %r", msg["type"])
            return
        try:
            handler(msg)
        except (KeyError, TypeError, ValueError) as exc:
            self._bad(f"bad {msg['type']} message from the supervisor ({exc!r}); skipped")
        except Exception:
            # Whatever goes wrong with one message, the reader (the agent's lease) goes on.
            log.exception("handling a %s message failed", msg["type"])

    def _changed_now(self) -> None:
        old, self._changed = self._changed, asyncio.Event()
        old.set()

    def _notify_role(self) -> None:
        for fn in self._on_role:
            try:
                result = fn(self._role, self._epoch, self._allocation)
            except Exception:
                log.exception("on_role callback failed")
                continue
            if inspect.isawaitable(result):
                self._spawn(_resolve(result), "agentsup-on-role")

    def _mark_lost(self, why: str) -> None:
        if self.lost.is_set():
            return
        had_epoch = self._epoch
        self._role, self._epoch, self._allocation = Role.STANDBY, None, 0.0
        self.lost.set()
        for future in self._pending.values():
            if not future.done():
                future.set_result(Permit(False, PermitReason.UNAVAILABLE, had_epoch, ""))
        self._changed_now()
        if not self._closing:  # the agent closing its own channel is no news to itself
            log.warning("%s: no more permits; role is standby", why)
            self._notify_role()

    def _spawn(self, coro: Awaitable[Any], name: str) -> None:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s failed", task.get_name(), exc_info=task.exception())

    # ---------------------------------------------------------------- pushes and requests

    def _handle_role(self, msg: dict[str, Any]) -> None:
        epoch = msg.get("epoch")
        if epoch is not None and type(epoch) is not int:
            raise ValueError("epoch must be an integer")
        allocation = msg.get("allocation", 0.0)
        if type(allocation) not in (int, float):
            raise ValueError("allocation must be a number")
        role = _ROLES.get(msg["role"])
        if role is None:
            # A role this SDK does not know cannot be allowed to act.
            log.warning("unknown role %r pushed; acting as standby", msg["role"])
            role = Role.STANDBY
        changed = (role, epoch) != (self._role, self._epoch)
        self._role, self._epoch, self._allocation = role, epoch, float(allocation)
        self._changed_now()
        if changed:
            log.info("role %s at epoch %s (allocation %.2f)", role, epoch, self._allocation)
        self._notify_role()

    def _handle_flags(self, msg: dict[str, Any]) -> None:
        values = msg["values"]
        if type(values) is not dict:
            raise ValueError("values must be an object")
        self._flags = MappingProxyType(values)
        self._changed_now()

    def _handle_permit_result(self, msg: dict[str, Any]) -> None:
        request_id = msg["request_id"]
        future = self._pending.get(request_id) if type(request_id) is str else None
        if future is None or future.done():
            return
        reason = _REASONS.get(msg.get("reason", ""), PermitReason.UNAVAILABLE)
        epoch = msg.get("epoch")
        granted = msg.get("granted") is True and reason is PermitReason.OK
        key = ""
        future.set_result(Permit(granted, reason, epoch if type(epoch) is int else None, key))

    def _handle_quiesce(self, msg: dict[str, Any]) -> None:
        self._quiesced = True
        self._changed_now()
        self._call_plain(self._on_quiesce, "on_quiesce")

    def _handle_resume(self, msg: dict[str, Any]) -> None:
        self._quiesced = False
        self._changed_now()
        self._call_plain(self._on_resume, "on_resume")

    def _call_plain(self, hook: PlainHook | None, name: str) -> None:
        if hook is None:
            return

        async def call() -> None:
            await _resolve(hook())

        self._spawn(self._guarded(call(), name), f"agentsup-{name}")

    def _request_id(self, msg: dict[str, Any]) -> str:
        request_id = msg["request_id"]
        if type(request_id) is not str:
            raise ValueError("request_id must be a string")
        return request_id

    def _handle_snapshot_request(self, msg: dict[str, Any]) -> None:
        request_id, hook = self._request_id(msg), self._on_snapshot
        if hook is None:
            log.warning("snapshot requested but no on_snapshot hook is set")
            return

        async def answer() -> None:
            schema, state = await _resolve(hook())
            self._send(
                {"type": "snapshot", "request_id": request_id, "schema": schema, "state": state}
            )

        self._spawn(self._guarded(answer(), "on_snapshot"), "agentsup-snapshot")

    def _handle_restore(self, msg: dict[str, Any]) -> None:
        request_id, hook = self._request_id(msg), self._on_restore
        schema, state = msg["schema"], msg["state"]
        if hook is None:
            log.warning("restore requested but no on_restore hook is set")
            return

        async def answer() -> None:
            digest = await _resolve(hook(schema, state))
            self._send({"type": "restored", "request_id": request_id, "digest": str(digest)})

        self._spawn(self._guarded(answer(), "on_restore"), "agentsup-restore")

    def _handle_mirror(self, msg: dict[str, Any]) -> None:
        request_id, hook = self._request_id(msg), self._on_mirror
        inputs = msg["inputs"]
        if hook is None:
            log.warning("mirror requested but no on_mirror hook is set")
            return

        async def answer() -> None:
            output = await _resolve(hook(inputs))
            self._send({"type": "mirror_result", "request_id": request_id, "output": output})

        self._spawn(self._guarded(answer(), "on_mirror"), "agentsup-mirror")

    async def _guarded(self, coro: Awaitable[None], hook: str) -> None:
        # A failing hook is reported as kind "other": it is not the execution path, and the
        # request simply goes unanswered (the supervisor's own timeout decides).
        try:
            await coro
        except Exception as exc:
            text = "".join(_traceback.format_exception(exc))
            self.error("other", f"{hook} hook failed: {type(exc).__name__}: {exc}", text)
            log.exception("%s hook failed", hook)

    def _handle_error(self, msg: dict[str, Any]) -> None:
        log.warning(
            "the supervisor refused a line (request %s): %s",
            msg.get("request_id"),
            msg.get("message"),
        )
