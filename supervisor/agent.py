"""The agent SDK: what an agent imports to be supervised by ``agentsup``.

It speaks the channel for you (hello, heartbeats, the role, flags and requests the supervisor
pushes), asks Redis for a permit right before money moves, and reports decisions, executions,
outcomes and errors. A complete minimal agent::

    import asyncio
    from supervisor.agent import Agent

    async def main() -> None:
        async with Agent.connect() as agent:
            n = 0
            while await agent.wait_role("active"):      # False once the supervisor is gone
                n += 1
                async with agent.decide("dice", {"target": 49.5}) as d:
                    d.output = {"bet": "under", "stake": 1.0}
                permit = await agent.permit(f"{agent.color}-{n}")
                if not permit:                          # never move money without one
                    continue
                agent.execution(d.id, permit.key, 1.0)
                agent.outcome(+0.98, decision_id=d.id)
                await asyncio.sleep(0.05)

    asyncio.run(main())

The race a permit prevents
--------------------------
Blue is active at epoch 7 and decides to bet. Before it executes, the operator switches to
green: the supervisor sets the active key to ``green`` and the epoch to 8 in one Lua call and
only then pushes the new roles. Blue's role push may still be in flight, so blue cannot trust
what it *believes*; it asks Redis with ``(blue, 7, key)`` in one atomic script, which answers
``not_active``. A blue left over from before a daemon restart, holding epoch 7 while green is
at 8, gets ``stale_epoch``. A key that was already executed gets ``duplicate``. Redis
unreachable means ``unavailable``: the SDK fails closed. A lost reply is retried once with the
same token, and the script answers ``ok`` again for the same token, so a retry never turns a
granted permit into a refused one nor grants two.

The channel is also the agent's lease: when it closes (the daemon died, or closed it), the SDK
sets :attr:`Agent.lost`, drops the role to standby and the epoch to ``None``, and refuses every
later permit without asking anybody.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import inspect
import itertools
import logging
import os
import secrets
import socket
import time
import traceback as _traceback
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType, TracebackType
from typing import Any, Final, TypeVar

import orjson
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from supervisor.arbiter.scripts import PERMIT, Keys
from supervisor.errors import NotSupervised
from supervisor.protocol import MAX_LINE, PROTOCOL_VERSION

__all__ = ["Agent", "Decision", "Permit", "PermitReason", "Role", "state_digest"]

log = logging.getLogger(__name__)

T = TypeVar("T")

_READ_CHUNK: Final = 1 << 16
# Past this much unsent data the supervisor is not reading: reports are dropped, not queued
# without bound (a hung daemon must not grow the agent's memory).
_MAX_WRITE_BUFFER: Final = 8 << 20
_DEFAULT_PERMIT_TTL_MS: Final = 7 * 24 * 3600 * 1000


class Role(StrEnum):
    """What the supervisor lets this color do."""

    ACTIVE = "active"  # may act: its permits are granted
    STANDBY = "standby"  # warm, must not act (also the role after the channel is lost)
    CANARY = "canary"  # acts within its allocation
    SHADOW = "shadow"  # decides on mirrored inputs, never acts


class PermitReason(StrEnum):
    """Why a permit was granted or refused (the contract's closed set)."""

    OK = "ok"  # granted
    NOT_ACTIVE = "not_active"  # this color may not act (now)
    STALE_EPOCH = "stale_epoch"  # a newer epoch exists: someone else was put in charge since
    DUPLICATE = "duplicate"  # this idempotency key was already executed
    UNAVAILABLE = "unavailable"  # nobody could say yes (Redis or the supervisor unreachable)


_REASONS: Final = {r.value: r for r in PermitReason}
_ROLES: Final = {r.value: r for r in Role}
_ERROR_KINDS: Final = frozenset({"exception", "auth", "other"})
_ESCROW_OPS: Final = frozenset({"watch", "check", "unwatch"})


@dataclass(frozen=True, slots=True)
class Permit:
    """The answer to :meth:`Agent.permit`; true only when granted.

    >>> Permit(granted=False, reason=PermitReason.DUPLICATE, epoch=8, key="order-7")
    Permit(granted=False, reason=<PermitReason.DUPLICATE: 'duplicate'>, epoch=8, key='order-7')
    """

    granted: bool
    reason: PermitReason
    epoch: int | None  # the epoch the permit was asked with (None: never asked)
    key: str

    def __bool__(self) -> bool:
        return self.granted


def state_digest(state: Any) -> str:
    """The digest of a snapshot's state: SHA-256 of its canonical JSON (sorted keys).

    A restore hook may return it, so that the supervisor can compare it with the digest of
    the state it sent::

        @agent.on_restore
        def restore(schema: str, state: dict) -> str:
            book.load(state)
            return state_digest(state)
    """
    return hashlib.sha256(orjson.dumps(state, option=orjson.OPT_SORT_KEYS)).hexdigest()


async def _resolve(value: T | Awaitable[T]) -> T:
    if inspect.isawaitable(value):
        return await value
    return value


class Decision:
    """One decision being made; returned by :meth:`Agent.decide`.

    Set :attr:`output` (and :attr:`reasoning`) inside the block; the decision is reported with
    its latency when the block ends::

        async with agent.decide("crash", {"target": 2.0}) as d:
            d.output = {"cash_out": 2.0}
        print(d.id, d.latency_ms)
    """

    __slots__ = ("_agent", "_t0", "id", "inputs", "kind", "latency_ms", "output", "reasoning")

    def __init__(self, agent: Agent, id: str, kind: str, inputs: Any) -> None:
        self._agent = agent
        self._t0 = 0.0
        self.id = id
        self.kind = kind
        self.inputs = inputs
        self.output: Any = None
        self.reasoning: str | None = None
        self.latency_ms: float | None = None

    async def __aenter__(self) -> Decision:
        self._t0 = time.perf_counter()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.latency_ms = (time.perf_counter() - self._t0) * 1000.0
        if exc is None:
            self._agent.decision(
                self.id, self.kind, self.inputs, self.output, self.latency_ms, self.reasoning
            )
        elif isinstance(exc, Exception):
            # Cancellation and exits are how the agent stops, not bugs: only Exceptions count.
            text = "".join(_traceback.format_exception(exc_type, exc, tb))
            self._agent.error("exception", f"{type(exc).__name__}: {exc}", traceback=text)
        # Never swallow: the agent's own code decides what an exception means to it.


RoleCallback = Callable[[Role, int | None, float], object]
SnapshotHook = Callable[[], tuple[Any, Any] | Awaitable[tuple[Any, Any]]]
RestoreHook = Callable[[Any, Any], str | Awaitable[str]]
MirrorHook = Callable[[Any], Any]
PlainHook = Callable[[], object]


class Agent:
    """A supervised agent's side of the channel, and its permits.

    Make one with :meth:`connect` and use it as an async context manager::

        async with Agent.connect() as agent:
            await agent.wait_role("active")
            ...
    """

    def __init__(
        self,
        *,
        color: str,
        version: str,
        fd: int,
        redis_url: str,
        namespace: str = "agent",
        active_key: str = "agent:active_version",
        permit_ttl_ms: int = _DEFAULT_PERMIT_TTL_MS,
        redis_password: str | None = None,
        heartbeat_interval: float = 1.0,
        redis_timeout: float = 0.5,
    ) -> None:
        if heartbeat_interval <= 0 or redis_timeout <= 0 or permit_ttl_ms <= 0:
            raise ValueError("heartbeat_interval, redis_timeout and permit_ttl_ms must be > 0")
        self.color = color
        self.version = version
        self._fd = fd
        self._redis_url = redis_url
        self._redis_password = redis_password
        self._keys = Keys(namespace, active_key)
        self._permit_ttl_ms = permit_ttl_ms
        self._heartbeat_interval = heartbeat_interval
        self._redis_timeout = redis_timeout

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
        self._redis: aioredis.Redis | None = None
        self._script: Any = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._pending: dict[str, asyncio.Future[Permit]] = {}
        self._entered = False
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

    # ---------------------------------------------------------------- construction, lifetime

    @classmethod
    def connect(
        cls,
        env: Mapping[str, str] | None = None,
        *,
        heartbeat_interval: float = 1.0,
        redis_timeout: float = 0.5,
        on_snapshot: SnapshotHook | None = None,
        on_restore: RestoreHook | None = None,
        on_mirror: MirrorHook | None = None,
    ) -> Agent:
        """An agent configured from the supervisor's environment (``os.environ`` by default).

        The channel opens when the ``async with`` block is entered. Raises
        :class:`~supervisor.errors.NotSupervised` when ``AGENTSUP_FD`` (or another variable
        the supervisor always sets) is missing or malformed::

            async with Agent.connect(on_mirror=strategy) as agent:
                ...
        """
        env = os.environ if env is None else env

        def need(name: str) -> str:
            value = env.get(name)
            if not value:
                raise NotSupervised(
                    f"{name} is not set: this agent is not running under agentsup "
                    "(start it from an [agents.*] command of the supervisor's config)"
                )
            return value

        fd_text = need("AGENTSUP_FD")
        try:
            fd = int(fd_text)
        except ValueError:
            raise NotSupervised(f"AGENTSUP_FD={fd_text!r} is not a file descriptor") from None
        color = need("AGENTSUP_COLOR")
        if color not in ("blue", "green"):
            raise NotSupervised(f"AGENTSUP_COLOR={color!r} is neither blue nor green")
        ttl_text = env.get("AGENTSUP_PERMIT_TTL_MS") or str(_DEFAULT_PERMIT_TTL_MS)
        try:
            ttl = int(ttl_text)
        except ValueError:
            raise NotSupervised(f"AGENTSUP_PERMIT_TTL_MS={ttl_text!r} is not an integer") from None
        agent = cls(
            color=color,
            version=env.get("AGENTSUP_VERSION") or "unknown",
            fd=fd,
            redis_url=need("AGENTSUP_REDIS_URL"),
            namespace=env.get("AGENTSUP_NAMESPACE") or "agent",
            active_key=env.get("AGENTSUP_ACTIVE_KEY") or "agent:active_version",
            permit_ttl_ms=ttl,
            redis_password=env.get("AGENTSUP_REDIS_PASSWORD") or None,
            heartbeat_interval=heartbeat_interval,
            redis_timeout=redis_timeout,
        )
        agent._on_snapshot = on_snapshot
        agent._on_restore = on_restore
        agent._on_mirror = on_mirror
        return agent

    async def __aenter__(self) -> Agent:
        if self._entered:
            raise RuntimeError("an Agent can be entered only once")
        self._entered = True
        try:
            sock = socket.socket(fileno=self._fd)
        except OSError as exc:
            raise NotSupervised(f"AGENTSUP_FD={self._fd} is not an open socket: {exc}") from exc
        try:
            reader, self._writer = await asyncio.open_unix_connection(sock=sock)
        except BaseException:
            sock.close()
            raise
        self._redis = aioredis.Redis.from_url(
            self._redis_url,
            password=self._redis_password,
            socket_timeout=self._redis_timeout,
            socket_connect_timeout=self._redis_timeout,
            # Retries are ours (one, with the same token): the client must not add its own.
            retry=Retry(NoBackoff(), 0),
            client_name=f"agentsup-{self.color}",
        )
        self._script = self._redis.register_script(PERMIT)
        self._send(
            {
                "type": "hello",
                "version": self.version,
                "pid": os.getpid(),
                "protocol": PROTOCOL_VERSION,
                "capabilities": self.capabilities,
            }
        )
        self._spawn(self._read_loop(reader), "agentsup-reader")
        self._spawn(self._heartbeat_loop(), "agentsup-heartbeat")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop the heartbeats and hooks, close the channel and the Redis client (idempotent).

        ``async with`` calls it; call it yourself only when not using ``async with``.
        """
        self._closing = True
        # On Python 3.11 a cancel can be lost inside asyncio.wait_for (which redis-py uses
        # to connect; bpo-42130): cancel again until every task is really gone.
        pending = set(self._tasks)
        for _ in range(20):
            if not pending:
                break
            for task in pending:
                task.cancel("the agent is closing")
            _, pending = await asyncio.wait(pending, timeout=0.1)
        if pending:
            log.warning("%d SDK tasks did not stop", len(pending))
        self._mark_lost("closed by the agent")
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()  # flushes what is buffered (the last outcome), then closes
            with contextlib.suppress(OSError, TimeoutError):
                async with asyncio.timeout(1.0):
                    await writer.wait_closed()
        client, self._redis = self._redis, None
        if client is not None:
            await client.aclose()

    @property
    def capabilities(self) -> list[str]:
        """What this agent answers, announced in hello (from the hooks that are set)."""
        caps = ["permit"]
        if self._on_snapshot is not None and self._on_restore is not None:
            caps.append("snapshot")
        if self._on_mirror is not None:
            caps.append("mirror")
        return caps

    # ---------------------------------------------------------------- what the pushes keep

    @property
    def role(self) -> Role:
        """The role last pushed by the supervisor; ``standby`` before the first push and
        after the channel is lost."""
        return self._role

    @property
    def epoch(self) -> int | None:
        """The epoch of the last role push (``None`` before it and after the channel is lost).
        Permits are asked with it."""
        return self._epoch

    @property
    def allocation(self) -> float:
        """The share of capital (0..1) the supervisor gives this color.

        In canary mode, for example::

            stake = base_stake * agent.allocation
        """
        return self._allocation

    @property
    def flags(self) -> Mapping[str, Any]:
        """The feature flags last pushed (read-only).

        For example::

            target = float(agent.flags.get("crash_target", 2.0))
        """
        return self._flags

    @property
    def is_active(self) -> bool:
        """True while the last role push said ``active``."""
        return self._role is Role.ACTIVE

    @property
    def quiesced(self) -> bool:
        """True between a ``quiesce`` and a ``resume`` push: take no new action."""
        return self._quiesced

    async def wait_role(
        self,
        role: Role | str = Role.ACTIVE,
        timeout: float | None = None,  # noqa: ASYNC109 (False on timeout is the point)
    ) -> bool:
        """Wait until the supervisor gives this color ``role``.

        Returns True once it holds the role, False when ``timeout`` passes first or the channel
        is lost (nothing can change the role any more)::

            while await agent.wait_role("active"):
                await one_round(agent)
        """
        wanted = Role(role)
        try:
            async with asyncio.timeout(timeout):
                while self._role is not wanted:
                    if self.lost.is_set():
                        return False
                    await self._changed.wait()
        except TimeoutError:
            return False
        return True

    def on_role(self, fn: RoleCallback) -> RoleCallback:
        """Call ``fn(role, epoch, allocation)`` on every role push and when the channel is
        lost. Keep it short: it runs in the channel's reader (a coroutine it returns runs in
        a task)::

            agent.on_role(lambda role, epoch, alloc: print("now", role, "at epoch", epoch))
        """
        self._on_role.append(fn)
        return fn

    # ---------------------------------------------------------------- hooks

    def on_snapshot(self, fn: SnapshotHook) -> SnapshotHook:
        """Answer a ``snapshot_request`` with ``fn()``'s ``(schema, state)`` (may be async).
        Set it with :meth:`on_restore` before entering, so that hello announces it::

            agent.on_snapshot(lambda: ("demo/1", {"escrows": escrows}))
        """
        self._on_snapshot = fn
        self._warn_if_announced("snapshot")
        return fn

    def on_restore(self, fn: RestoreHook) -> RestoreHook:
        """Answer a ``restore`` with ``fn(schema, state)``'s digest (may be async), e.g.
        :func:`state_digest` of what was loaded::

            @agent.on_restore
            def restore(schema, state):
                escrows[:] = state["escrows"]
                return state_digest(state)
        """
        self._on_restore = fn
        self._warn_if_announced("snapshot")
        return fn

    def on_mirror(self, fn: MirrorHook) -> MirrorHook:
        """Answer a ``mirror`` with ``fn(inputs)`` (may be async).

        The answer is a decision on mirrored inputs, never executed::

            agent.on_mirror(lambda inputs: strategy(inputs))
        """
        self._on_mirror = fn
        self._warn_if_announced("mirror")
        return fn

    def on_quiesce(self, fn: PlainHook) -> PlainHook:
        """Call ``fn()`` when the supervisor asks to stop taking new actions (permits are
        refused until ``resume``)::

            agent.on_quiesce(lambda: print("pausing"))
        """
        self._on_quiesce = fn
        return fn

    def on_resume(self, fn: PlainHook) -> PlainHook:
        """Call ``fn()`` when the supervisor lifts a quiesce.

        For example::

            agent.on_resume(lambda: print("resuming"))
        """
        self._on_resume = fn
        return fn

    def _warn_if_announced(self, capability: str) -> None:
        if self._writer is not None and capability not in self.capabilities:
            log.warning("hook set after hello; %r was not announced", capability)

    # ---------------------------------------------------------------- permits

    def _local_denial(self, key: str) -> Permit | None:
        """A refusal that needs nobody's answer, or None when the permit must be asked."""
        if not isinstance(key, str) or not key:
            raise ValueError("a permit key must be a non-empty string")
        if self._writer is None or self.lost.is_set():
            return Permit(False, PermitReason.UNAVAILABLE, None, key)
        if (
            self._epoch is None
            or self._quiesced
            or self._role is Role.STANDBY
            or self._role is Role.SHADOW
        ):
            return Permit(False, PermitReason.NOT_ACTIVE, self._epoch, key)
        return None

    async def permit(self, key: str) -> Permit:
        """Ask Redis, in one atomic call, whether this color may execute ``key`` now.

        Granted only to the active color at the current epoch for a key never executed
        before. Never move money without one::

            permit = await agent.permit(f"order-{n}")
            if permit:
                agent.execution(d.id, permit.key, stake)

        Refused without any network call: ``unavailable`` when the channel is closed (the
        supervisor is gone: the agent lost its right to act); ``not_active`` before the first
        role push (no epoch), while quiesced, and while standby or shadow, since in each case
        the supervisor has not let this color act. Redis unreachable (after one retry with the
        same token) or any other Redis error: ``unavailable`` (fail closed).
        """
        denied = self._local_denial(key)
        if denied is not None:
            return denied
        epoch = self._epoch
        assert epoch is not None
        k = self._keys
        keys = [k.active, k.epoch, k.permit(key), k.permit_stats]
        args = [self.color, str(epoch), str(self._permit_ttl_ms), self._token()]
        answer: Any = None
        for attempt in (1, 2):
            try:
                answer = await self._script(keys=keys, args=args)
                break
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                # The reply may be lost after the script ran: the same token makes the retry
                # answer ok again rather than duplicate.
                if attempt == 2:
                    log.warning("permit %r: Redis unreachable (%s); refused", key, exc)
                    return Permit(False, PermitReason.UNAVAILABLE, epoch, key)
            except RedisError as exc:
                log.warning("permit %r: Redis error (%s); refused", key, exc)
                return Permit(False, PermitReason.UNAVAILABLE, epoch, key)
        # Redis's answer is the truth at the instant the script ran, whatever the channel
        # said meanwhile: a flip after it fences the next permit, not this one.
        text = answer.decode() if isinstance(answer, bytes) else str(answer)
        reason = _REASONS.get(text, PermitReason.UNAVAILABLE)
        return Permit(reason is PermitReason.OK, reason, epoch, key)

    async def permit_via_channel(
        self,
        key: str,
        timeout: float = 2.0,  # noqa: ASYNC109 (no answer in time means unavailable)
    ) -> Permit:
        """Ask the supervisor for a permit over the channel (the way agents without Redis
        access do); no answer within ``timeout`` means ``unavailable``::

            permit = await agent.permit_via_channel(f"order-{n}")
        """
        denied = self._local_denial(key)
        if denied is not None:
            return denied
        request_id = self._token()
        future: asyncio.Future[Permit] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            if not self._send({"type": "permit", "request_id": request_id, "key": key}):
                return Permit(False, PermitReason.UNAVAILABLE, self._epoch, key)
            async with asyncio.timeout(timeout):
                return dataclasses.replace(await future, key=key)
        except TimeoutError:
            return Permit(False, PermitReason.UNAVAILABLE, self._epoch, key)
        finally:
            self._pending.pop(request_id, None)

    # ---------------------------------------------------------------- reports

    def decide(self, kind: str, inputs: Any, *, id: str | None = None) -> Decision:
        """Time a decision and report it when the block ends; an exception inside is reported
        as an ``error`` of kind ``exception`` with its traceback, then re-raised::

            async with agent.decide("dice", {"target": 49.5}) as d:
                d.output = {"bet": "under"}
                d.reasoning = "house edge 1 %, flat stake"
        """
        return Decision(self, id or f"{self.color}-{self._token()}", kind, inputs)

    def decision(
        self,
        id: str,
        kind: str,
        inputs: Any,
        output: Any,
        latency_ms: float,
        reasoning: str | None = None,
    ) -> None:
        """Report a decision, executed or not.

        :meth:`decide` does it for you; by hand::

            agent.decision("d-1", "dice", {"target": 49.5}, {"bet": "under"}, 0.4)
        """
        msg: dict[str, Any] = {
            "type": "decision",
            "id": id,
            "kind": kind,
            "inputs": inputs,
            "output": output,
            "latency_ms": float(latency_ms),
        }
        if reasoning is not None:
            msg["reasoning"] = reasoning
        self._send(msg)

    def execution(self, decision_id: str, key: str, amount: float) -> None:
        """Report that money moved under idempotency ``key``.

        Only ever after a granted permit::

            agent.execution(d.id, permit.key, 1.0)
        """
        self._send(
            {"type": "execution", "decision_id": decision_id, "key": key, "amount": float(amount)}
        )

    def outcome(self, pnl: float, decision_id: str | None = None) -> None:
        """Report that one round finished with ``pnl``.

        For example::

            agent.outcome(-1.0, decision_id=d.id)
        """
        msg: dict[str, Any] = {"type": "outcome", "pnl": float(pnl)}
        if decision_id is not None:
            msg["decision_id"] = decision_id
        self._send(msg)

    def error(self, kind: str, message: str, traceback: str | None = None) -> None:
        """Report an error; ``kind`` is ``exception``, ``auth`` or ``other``. The first two
        roll an acting candidate back::

            agent.error("auth", "401 invalid API key")
        """
        if kind not in _ERROR_KINDS:
            raise ValueError(f"error kind must be one of {sorted(_ERROR_KINDS)}, not {kind!r}")
        msg: dict[str, Any] = {"type": "error", "kind": kind, "message": message}
        if traceback is not None:
            msg["traceback"] = traceback
        self._send(msg)

    def escrow(
        self, id: str, op: str, due_at: float | None = None, gap_s: float | None = None
    ) -> None:
        """Report escrow monitoring: ``watch`` (with its due time, unix seconds, and optionally
        its own allowed gap between checks), ``check``, ``unwatch``::

            agent.escrow("esc-1", "watch", due_at=time.time() + 600, gap_s=30)
            agent.escrow("esc-1", "check")
        """
        if op not in _ESCROW_OPS:
            raise ValueError(f"escrow op must be one of {sorted(_ESCROW_OPS)}, not {op!r}")
        msg: dict[str, Any] = {"type": "escrow", "id": id, "op": op}
        if due_at is not None:
            msg["due_at"] = float(due_at)
        if gap_s is not None:
            msg["gap_s"] = float(gap_s)
        self._send(msg)

    def context(self, **fields: Any) -> None:
        """Report what deploy gates look at.

        Volatility, open disputes, auto-releases::

            agent.context(volatility=0.02, disputes_open=0)
        """
        self._send({"type": "context", **fields})

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

    async def _heartbeat_loop(self) -> None:
        self._send({"type": "heartbeat"})
        # Load the permit script and open a connection now, so the first permit is fast.
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            async with asyncio.timeout(2 * self._redis_timeout):
                assert self._redis is not None
                await self._redis.script_load(PERMIT)
        while not (self._closing or self.lost.is_set()):
            await asyncio.sleep(self._heartbeat_interval)
            self._send({"type": "heartbeat"})

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
