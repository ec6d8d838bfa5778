"""The agent's end of the channel: the line writer, the reader and the dispatch of pushes.

:class:`Channel` is the base of :class:`~supervisor.agent.Agent`. It holds what the
supervisor's pushes keep (role, epoch, allocation, flags, quiesce), writes one JSON line per
message without ever blocking (:meth:`Channel._send`), reads and splits the supervisor's lines
in chunks, hands each to its handler, answers requests with the agent's hooks, and marks the
agent lost when the channel closes. The public API (construction, permits, reports, hook
registration) is the Agent's, in :mod:`supervisor.agent.client`.

The handoff's requests (docs/handoff.md): ``quiesce`` is answered ``quiesced`` once the work
in flight (:meth:`Agent.in_flight`) is done; ``snapshot_request`` with the state, migrated
down to a schema of ``accept`` when the supervisor asks for one, in chunks when it does not
fit one line; ``restore`` (or its ``restore_chunk`` frames) with the digest of the state
received, after migrating it up and handing it to the restore hook. A hook that raises is
answered with an ``error``, so the supervisor aborts at once instead of waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import logging
import secrets
import time
import traceback as _traceback
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final, TypeVar

import orjson

from supervisor.agent.migrations import Migrations, NoMigration
from supervisor.agent.types import (
    _REASONS,
    _ROLES,
    MirrorHook,
    Permit,
    PermitReason,
    PlainHook,
    ReplayHook,
    RestoreHook,
    Role,
    RoleCallback,
    SnapshotHook,
)
from supervisor.protocol import (
    MAX_LINE,
    Reassembly,
    canonical,
    chunk_frames,
    digest,
)

# One logger for the whole SDK, under the name it had as a single module.
log = logging.getLogger("supervisor.agent")

#: ``fn(inputs, output, outcome)``: the PnL this agent's own mirrored decision would have made
#: on a live round's outcome (None: cannot say). May be async.
MirrorOutcomeHook = Callable[[Any, Any, dict[str, Any]], float | Awaitable[float | None] | None]
# Mirrored decisions remembered (inputs, output) for their outcome, the oldest forgotten first.
_MIRRORS_KEPT: Final = 10_000

T = TypeVar("T")

_READ_CHUNK: Final = 1 << 16
# Past this much unsent data the supervisor is not reading: reports are dropped, not queued
# without bound (a hung daemon must not grow the agent's memory).
_MAX_WRITE_BUFFER: Final = 8 << 20
# What a snapshot's line holds besides its schema and state (type, request_id, taken_at).
_SNAPSHOT_OVERHEAD: Final = 256
DEFAULT_MAX_STATE_BYTES: Final = 16 << 20  # handoff.max_bytes' default


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
        # Where each flag's value comes from (color, global, default), when the push says.
        self._flag_sources: Mapping[str, str] = MappingProxyType({})
        self._quiesced = False
        #: The schema of this agent's state (None: not said), and how others migrate to it.
        self.schema: str | None = None
        self.migrations = Migrations()
        self._max_state_bytes = DEFAULT_MAX_STATE_BYTES
        self._in_flight = 0
        self._idle = asyncio.Event()  # set while nothing is in flight
        self._idle.set()
        self._restoring = 0  # restores being applied: permits wait for them
        self._restored = asyncio.Event()
        self._restored.set()
        self._restore_chunks: dict[str, Reassembly] = {}
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
        self._on_flags: list[Callable[[Mapping[str, Any]], object]] = []
        self._on_snapshot: SnapshotHook | None = None
        self._on_restore: RestoreHook | None = None
        self._on_mirror: MirrorHook | None = None
        self._on_mirror_outcome: MirrorOutcomeHook | None = None
        self._mirrored: OrderedDict[str, tuple[Any, Any]] = OrderedDict()
        # How the shadow compares this agent's outputs, per decision kind (sent in hello).
        self._comparators: dict[str, dict[str, Any]] = {}
        self._on_quiesce: PlainHook | None = None
        self._on_resume: PlainHook | None = None
        self._on_replay: ReplayHook | None = None
        self._handlers: dict[str, Callable[[dict[str, Any]], None]] = {
            "role": self._handle_role,
            "flags": self._handle_flags,
            "permit_result": self._handle_permit_result,
            "quiesce": self._handle_quiesce,
            "resume": self._handle_resume,
            "snapshot_request": self._handle_snapshot_request,
            "restore": self._handle_restore,
            "restore_chunk": self._handle_restore_chunk,
            "mirror": self._handle_mirror,
            "mirror_outcome": self._handle_mirror_outcome,
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
        self._notify_role()  # the agent first, the log after
        if changed:
            log.info("role %s at epoch %s (allocation %.2f)", role, epoch, self._allocation)

    def _handle_flags(self, msg: dict[str, Any]) -> None:
        values = msg["values"]
        if type(values) is not dict:
            raise ValueError("values must be an object")
        sources = msg.get("sources")
        self._flags = MappingProxyType(values)
        self._flag_sources = MappingProxyType(
            {k: v for k, v in sources.items() if type(v) is str} if type(sources) is dict else {}
        )
        self._changed_now()
        for fn in self._on_flags:
            try:
                fn(self._flags)
            except Exception:
                log.exception("on_flags callback failed")

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
        # From this line on no permit is asked (refused locally); the answer waits for what
        # is in flight, then the hook.
        self._quiesced = True
        self._changed_now()
        request_id = msg.get("request_id")
        hook = self._on_quiesce

        async def answer() -> None:
            try:
                await self._idle.wait()
                if hook is not None:
                    await _resolve(hook())
            except Exception as exc:
                self._reply_failed("quiesced", request_id, f"on_quiesce hook failed: {exc!r}")
                raise
            if type(request_id) is str:
                self._send({"type": "quiesced", "request_id": request_id})

        self._spawn(self._guarded(answer(), "on_quiesce"), "agentsup-quiesce")

    @contextlib.asynccontextmanager
    async def in_flight(self) -> AsyncIterator[None]:
        """Work that a quiesce must wait for: the supervisor hears ``quiesced`` only once
        every such block has ended (and new permits are refused from the quiesce on)::

            async with agent.in_flight():
                permit = await agent.permit(key)
                if permit and agent.still_valid(permit):
                    venue.place(client_order_id=permit.client_order_id, stake=stake)
                    agent.execution(d.id, permit.key, stake)
        """
        self._in_flight += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()

    def _reply_failed(self, msg_type: str, request_id: Any, why: str) -> None:
        """Answer a request with its failure, so that the supervisor does not wait for it."""
        if type(request_id) is not str:
            return
        msg: dict[str, Any] = {"type": msg_type, "request_id": request_id, "error": why[:2000]}
        if msg_type == "snapshot":
            msg.update(schema=None, state=None)
        elif msg_type == "restored":
            msg["digest"] = ""
        self._send(msg)

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
        accept = msg.get("accept")
        if hook is None:
            log.warning("snapshot requested but no on_snapshot hook is set")
            self._reply_failed("snapshot", request_id, "this agent has no on_snapshot hook")
            return

        async def answer() -> None:
            taken_at = time.time()
            try:
                # (schema, state), or (schema, state, taken_at) for a state read earlier.
                schema, state, *when = await _resolve(hook())
                if when:
                    taken_at = float(when[0])
                schema, state = self._for_accept(schema, state, accept)
                payload = canonical({"schema": schema, "state": state, "taken_at": taken_at})
            except Exception as exc:
                self._reply_failed("snapshot", request_id, f"on_snapshot failed: {exc!r}")
                raise
            if len(payload) > self._max_state_bytes:
                why = f"the state is {len(payload)} bytes, over {self._max_state_bytes}"
                self._reply_failed("snapshot", request_id, why)
                raise ValueError(why)
            if len(payload) + _SNAPSHOT_OVERHEAD <= MAX_LINE:
                self._send(
                    {
                        "type": "snapshot",
                        "request_id": request_id,
                        "schema": schema,
                        "state": state,
                        "taken_at": taken_at,
                    }
                )
                return
            await self._send_frames(chunk_frames("snapshot_chunk", request_id, payload))

        self._spawn(self._guarded(answer(), "on_snapshot"), "agentsup-snapshot")

    def _for_accept(self, schema: Any, state: Any, accept: Any) -> tuple[Any, Any]:
        """The state in a schema the receiver reads (``accept``), migrated down (or up) when
        this agent's own is not one of them and a chain of migrations leads to one."""
        if type(accept) is not list or not accept or schema in accept or type(schema) is not str:
            return schema, state
        wanted = [a for a in accept if type(a) is str]
        goal = self.migrations.first_reachable(schema, wanted)
        if goal is None:
            log.warning("no migration from %r to any of %r: sent as it is", schema, wanted)
            return schema, state
        return goal, self.migrations.migrate(state, schema, goal)

    async def _send_frames(self, frames: Any) -> None:
        """Chunks of one large message, each after the one before has drained."""
        writer = self._writer
        for frame in frames:
            if not self._send(frame):
                raise ConnectionError("the channel is closed: chunks not sent")
            if writer is not None:
                await writer.drain()

    def _handle_restore(self, msg: dict[str, Any]) -> None:
        request_id = self._request_id(msg)
        self._start_restore(request_id, msg["schema"], msg["state"], msg.get("events"))

    def _handle_restore_chunk(self, msg: dict[str, Any]) -> None:
        request_id = self._request_id(msg)
        assembly = self._restore_chunks.get(request_id)
        if assembly is None:
            if msg.get("index") != 0:
                return  # the rest of a transfer already refused: nothing to answer twice
            # The JSON around the state (schema, events) is in the chunks too.
            assembly = Reassembly(self._max_state_bytes + (4 << 20))
            self._restore_chunks[request_id] = assembly
        try:
            payload = assembly.add(msg)
            body = None if payload is None else orjson.loads(payload)
        except (ValueError, orjson.JSONDecodeError) as exc:
            self._restore_chunks.pop(request_id, None)
            self._reply_failed("restored", request_id, f"chunked restore refused: {exc}")
            return
        if payload is None:
            return
        self._restore_chunks.pop(request_id, None)
        if type(body) is not dict or "state" not in body:
            self._reply_failed("restored", request_id, "chunked restore is not a JSON object")
            return
        self._start_restore(request_id, body.get("schema"), body["state"], body.get("events"))

    def _start_restore(self, request_id: str, schema: Any, state: Any, events: Any) -> None:
        hook = self._on_restore
        if hook is None:
            log.warning("restore requested but no on_restore hook is set")
            self._reply_failed("restored", request_id, "this agent has no on_restore hook")
            return
        # Permits wait from now until the state is in (a restore lands on an agent that may
        # be about to act: after a rollback it is the one in charge).
        self._restoring += 1
        self._restored.clear()

        async def answer() -> None:
            try:
                received = digest(canonical(state))  # what was received, before migrating
                if self.schema is not None and type(schema) is str and schema != self.schema:
                    mine = self.migrations.migrate(state, schema, self.schema)
                    await _resolve(hook(self.schema, mine))
                else:
                    await _resolve(hook(schema, state))
                if events and self._on_replay is not None:
                    await _resolve(self._on_replay(list(events)))
            except NoMigration as exc:
                self._reply_failed("restored", request_id, str(exc))
                raise
            except Exception as exc:
                self._reply_failed("restored", request_id, f"on_restore failed: {exc!r}")
                raise
            finally:
                self._restoring -= 1
                if self._restoring == 0:
                    self._restored.set()
            self._send({"type": "restored", "request_id": request_id, "digest": received})

        self._spawn(self._guarded(answer(), "on_restore"), "agentsup-restore")

    async def _wait_restored(self, limit: float) -> bool:
        """Hold a permit while a restore is being applied; False if it outlasts ``limit``."""
        if self._restored.is_set():
            return True
        try:
            async with asyncio.timeout(limit):
                await self._restored.wait()
        except TimeoutError:
            return False
        return True

    def _handle_mirror(self, msg: dict[str, Any]) -> None:
        request_id, hook = self._request_id(msg), self._on_mirror
        inputs = msg["inputs"]
        if hook is None:
            log.warning("mirror requested but no on_mirror hook is set")
            return

        decision_id = msg.get("decision_id")

        async def answer() -> None:
            output = await _resolve(hook(inputs))
            if type(decision_id) is str and self._on_mirror_outcome is not None:
                # Kept for the live round's outcome (mirror_outcome), to be scored then.
                self._mirrored[decision_id] = (inputs, output)
                if len(self._mirrored) > _MIRRORS_KEPT:
                    self._mirrored.popitem(last=False)
            self._send({"type": "mirror_result", "request_id": request_id, "output": output})

        self._spawn(self._guarded(answer(), "on_mirror"), "agentsup-mirror")

    def _handle_mirror_outcome(self, msg: dict[str, Any]) -> None:
        request_id, hook = self._request_id(msg), self._on_mirror_outcome
        decision_id, outcome = msg["decision_id"], msg["outcome"]
        if type(outcome) is not dict:
            raise ValueError("outcome must be an object")

        def scored(pnl: float | None, error: str | None = None) -> None:
            reply: dict[str, Any] = {"type": "mirror_scored", "request_id": request_id}
            reply["pnl"] = pnl
            if error is not None:
                reply["error"] = error
            self._send(reply)

        if hook is None:
            scored(None, "this agent has no on_mirror_outcome hook")
            return
        mirrored = self._mirrored.pop(decision_id, None) if type(decision_id) is str else None
        if mirrored is None:
            scored(None, "no mirrored decision with this id (not mirrored here, or forgotten)")
            return

        async def answer() -> None:
            try:
                pnl = await _resolve(hook(mirrored[0], mirrored[1], outcome))
            except Exception as exc:
                scored(None, f"on_mirror_outcome failed: {type(exc).__name__}")
                raise
            if pnl is None:
                scored(None, "on_mirror_outcome gave no PnL")
            else:
                scored(float(pnl))

        self._spawn(self._guarded(answer(), "on_mirror_outcome"), "agentsup-mirror-outcome")

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
