"""The :class:`Agent`: construction, lifetime, permits, reports and hook registration.

What an agent calls. The channel underneath (reader, writer, dispatch of the supervisor's
pushes) is :class:`~supervisor.agent.channel.Channel`, its base; the values it hands out
(:class:`~supervisor.agent.Permit`, :class:`~supervisor.agent.Decision`...) are in
:mod:`supervisor.agent.types`. The module docstring of :mod:`supervisor.agent` has a complete
agent and the race a permit prevents.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import os
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, Final

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from supervisor.agent.channel import DEFAULT_MAX_STATE_BYTES, Channel, MirrorOutcomeHook
from supervisor.agent.migrations import Migrations
from supervisor.agent.types import (
    _REASONS,
    Decision,
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
from supervisor.arbiter.scripts import GRANT_LOG_MAXLEN, PERMIT, Keys
from supervisor.errors import NotSupervised
from supervisor.protocol import PROTOCOL_VERSION

# One logger for the whole SDK, under the name it had as a single module.
log = logging.getLogger("supervisor.agent")

_DEFAULT_PERMIT_TTL_MS: Final = 7 * 24 * 3600 * 1000
_ERROR_KINDS: Final = frozenset({"exception", "auth", "other"})
_ESCROW_OPS: Final = frozenset({"watch", "check", "unwatch"})


class Agent(Channel):
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
        redis_username: str | None = None,
        heartbeat_interval: float = 1.0,
        redis_timeout: float = 0.5,
        permits: str = "channel",
        permit_valid_ms: int = 2000,
        schema: str | None = None,
        max_state_bytes: int = DEFAULT_MAX_STATE_BYTES,
        redis_sentinels: Sequence[tuple[str, int]] = (),
        redis_service: str | None = None,
    ) -> None:
        if heartbeat_interval <= 0 or redis_timeout <= 0 or permit_ttl_ms <= 0:
            raise ValueError("heartbeat_interval, redis_timeout and permit_ttl_ms must be > 0")
        if permits not in ("channel", "direct"):
            raise ValueError(f"permits must be 'channel' or 'direct', not {permits!r}")
        if permit_valid_ms <= 0:
            raise ValueError("permit_valid_ms must be > 0")
        if max_state_bytes <= 0:
            raise ValueError("max_state_bytes must be > 0")
        self.color = color
        self.version = version
        self._fd = fd
        self._redis_url = redis_url
        self._redis_password = redis_password
        self._redis_username = redis_username
        self._permits = permits
        self._permit_valid_s = permit_valid_ms / 1000.0
        self._grant_seq = 0  # the highest grant seen (direct permits): Redis must not be behind
        self._keys = Keys(namespace, active_key)
        self._permit_ttl_ms = permit_ttl_ms
        self._heartbeat_interval = heartbeat_interval
        self._redis_timeout = redis_timeout
        self._redis: aioredis.Redis | None = None
        # With Redis Sentinel: the master of redis_service, asked of the sentinels at every
        # connect, so that direct permits follow it across a failover.
        self._sentinels = list(redis_sentinels)
        self._service = redis_service
        self._sentinel: Sentinel | None = None
        self._script: Any = None
        self._entered = False
        super().__init__()  # what the pushes keep, the writer, the hooks (see Channel)
        self.schema = schema
        self._max_state_bytes = max_state_bytes

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
        schema: str | None = None,
        migrations: Migrations | None = None,
    ) -> Agent:
        """An agent configured from the supervisor's environment (``os.environ`` by default).

        The channel opens when the ``async with`` block is entered. Raises
        :class:`~supervisor.errors.NotSupervised` when ``AGENTSUP_FD`` (or another variable
        the supervisor always sets) is missing or malformed. ``schema`` names the schema of
        this version's state; ``migrations`` (or :attr:`migrations`, before entering) how
        other schemas come to it and go back (:mod:`supervisor.agent.migrations`)::

            async with Agent.connect(on_mirror=strategy, schema="book/2") as agent:
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
        ttl = _env_int(env, "AGENTSUP_PERMIT_TTL_MS", _DEFAULT_PERMIT_TTL_MS)
        valid = _env_int(env, "AGENTSUP_PERMIT_VALID_MS", 2000)
        permits = env.get("AGENTSUP_PERMITS") or "channel"
        if permits not in ("channel", "direct"):
            raise NotSupervised(f"AGENTSUP_PERMITS={permits!r} is neither channel nor direct")
        agent = cls(
            color=color,
            version=env.get("AGENTSUP_VERSION") or "unknown",
            fd=fd,
            redis_url=need("AGENTSUP_REDIS_URL"),
            namespace=env.get("AGENTSUP_NAMESPACE") or "agent",
            active_key=env.get("AGENTSUP_ACTIVE_KEY") or "agent:active_version",
            permit_ttl_ms=ttl,
            redis_password=env.get("AGENTSUP_REDIS_PASSWORD") or None,
            redis_username=env.get("AGENTSUP_REDIS_USERNAME") or None,
            heartbeat_interval=heartbeat_interval,
            redis_timeout=redis_timeout,
            permits=permits,
            permit_valid_ms=valid,
            schema=schema,
            max_state_bytes=_env_int(env, "AGENTSUP_HANDOFF_MAX_BYTES", DEFAULT_MAX_STATE_BYTES),
            redis_sentinels=_env_sentinels(env),
            redis_service=env.get("AGENTSUP_REDIS_SERVICE") or None,
        )
        if migrations is not None:
            agent.migrations = migrations
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
        if self._permits == "direct":
            options: dict[str, Any] = {
                "username": self._redis_username,
                "password": self._redis_password,
                "socket_timeout": self._redis_timeout,
                "socket_connect_timeout": self._redis_timeout,
                # Retries are ours (one, with the same token): the client must not add its own.
                "retry": Retry(NoBackoff(), 0),
                "client_name": f"agentsup-{self.color}",
            }
            if self._sentinels and self._service:
                timeout = self._redis_timeout
                self._sentinel = Sentinel(  # type: ignore[no-untyped-call]
                    self._sentinels,
                    sentinel_kwargs={"socket_timeout": timeout, "socket_connect_timeout": timeout},
                )
                self._redis = self._sentinel.master_for(self._service, **options)
            else:
                self._redis = aioredis.Redis.from_url(self._redis_url, **options)
            self._script = self._redis.register_script(PERMIT)
        hello: dict[str, Any] = {
            "type": "hello",
            "version": self.version,
            "pid": os.getpid(),
            "protocol": PROTOCOL_VERSION,
            "capabilities": self.capabilities,
        }
        if self._comparators:
            hello["comparators"] = self._comparators  # how a shadow compares our outputs
        if self.schema is not None:
            # What a handoff needs to know: the schema it gives, every one it can take.
            hello["schema"] = self.schema
            hello["reads"] = self.migrations.connected(self.schema)
        self._send(hello)
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
        sentinel, self._sentinel = self._sentinel, None
        if sentinel is not None:
            with contextlib.suppress(RedisError, OSError):
                await sentinel.aclose()

    async def _heartbeat_loop(self) -> None:
        self._send({"type": "heartbeat"})
        # Load the permit script and open a connection now, so the first permit is fast.
        if self._redis is not None:
            with contextlib.suppress(RedisError, OSError, TimeoutError):
                async with asyncio.timeout(2 * self._redis_timeout):
                    await self._redis.script_load(PERMIT)
        while not (self._closing or self.lost.is_set()):
            await asyncio.sleep(self._heartbeat_interval)
            self._send({"type": "heartbeat"})

    @property
    def capabilities(self) -> list[str]:
        """What this agent answers, announced in hello (from the hooks that are set)."""
        caps = ["permit"]
        if self._on_snapshot is not None and self._on_restore is not None:
            caps.append("snapshot")
        if self._on_mirror is not None:
            caps.append("mirror")
        if self._on_mirror_outcome is not None:
            caps.append("mirror_outcome")
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
    def flag_sources(self) -> Mapping[str, str]:
        """Where each pushed flag's value comes from: ``color`` (this color's own value),
        ``global`` or ``default`` (the schema's). Empty until the first push.

        For example::

            if agent.flag_sources.get("game") == "color":
                log.info("playing this color's own game: %s", agent.flags["game"])
        """
        return self._flag_sources

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

    def on_flags(
        self, fn: Callable[[Mapping[str, Any]], object]
    ) -> Callable[[Mapping[str, Any]], object]:
        """Call ``fn(values)`` on every ``flags`` push (after hello and on every change), with
        this color's effective values. Keep it short: it runs in the channel's reader::

            @agent.on_flags
            def flags_changed(values):
                log.info("now playing %s", values.get("game"))
        """
        self._on_flags.append(fn)
        return fn

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
        """Answer a ``snapshot_request`` with ``fn()``'s ``(schema, state)`` (may be async;
        ``(schema, state, taken_at)`` for a state read before the call: the supervisor refuses
        one older than ``handoff.max_age_s``). Larger than one line, it goes in chunks; the
        SDK migrates it down when the supervisor asks for an older schema. Set it with
        :meth:`on_restore` before entering, so that hello announces it::

            agent.on_snapshot(lambda: ("demo/1", {"escrows": escrows}))
        """
        self._on_snapshot = fn
        self._warn_if_announced("snapshot")
        return fn

    def on_restore(self, fn: RestoreHook) -> RestoreHook:
        """Load a restored state with ``fn(schema, state)`` (may be async). The state comes
        migrated to :attr:`schema` when one is set (:attr:`migrations`); the SDK answers the
        supervisor with the digest of the state it received. Raise to refuse it (say, the
        balance it holds is not the venue's): the supervisor then aborts the handoff::

            @agent.on_restore
            def restore(schema, state):
                if venue.balance() != state["balance"]:
                    raise ValueError("the venue disagrees with the snapshot's balance")
                escrows[:] = state["escrows"]
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

    def on_mirror_outcome(self, fn: MirrorOutcomeHook) -> MirrorOutcomeHook:
        """Score a mirrored decision of this agent (a shadow's) on the live round's outcome:
        ``fn(inputs, output, outcome)`` returns the PnL ``output`` would have made (may be
        async; None when it cannot say). ``outcome`` is the live color's ``outcome`` report
        (``pnl``, ``decision_id`` and whatever else it said: the roll, the crash point)::

            @agent.on_mirror_outcome
            def would_be(inputs, output, outcome):
                won = outcome["crash"] >= output["target"]
                return output["stake"] * (output["target"] - 1) if won else -output["stake"]
        """
        self._on_mirror_outcome = fn
        self._warn_if_announced("mirror_outcome")
        return fn

    def compare(
        self,
        kind: str,
        *,
        fields: Sequence[str] = (),
        ignore: Sequence[str] = (),
        relative: float = 0.2,
        absolute: float = 0.03,
    ) -> None:
        """How a shadow compares this agent's outputs of decision ``kind``: only ``fields``
        (all when empty) but ``ignore``; numbers within ``absolute`` or ``relative`` of the
        larger are the same. Sent in hello, so call it before ``async with``; the operator's
        ``[shadow.kinds.KIND]`` wins over it::

            agent.compare("crash", ignore=["reasoning"], relative=0.05)
        """
        if not (0 <= relative <= 1e6 and 0 <= absolute <= 1e15):
            raise ValueError("relative and absolute must be finite and at least 0")
        if self._writer is not None:
            log.warning("compare(%r) after hello: not announced", kind)
        self._comparators[kind] = {
            "fields": list(fields),
            "ignore": list(ignore),
            "relative": float(relative),
            "absolute": float(absolute),
        }

    def on_replay(self, fn: ReplayHook) -> ReplayHook:
        """Apply ``fn(events)`` after a restore that carries events: what the other color
        did since the snapshot (executions, outcomes, escrow watches), journaled by the
        supervisor, when a rollback found the candidate unable to give its state. An event
        may already be in the state: deduplicate by its key::

            @agent.on_replay
            def replay(events):
                for e in events:
                    if e["type"] == "execution" and e["key"] not in book.keys:
                        book.add(e["key"], e["amount"])
        """
        self._on_replay = fn
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

    async def permit(self, key: str, amount: float | None = None) -> Permit:
        """Ask whether this color may execute ``key`` now: one atomic decision in Redis.

        Granted only to the active color at the current epoch for a key never executed
        before. Never move money without one, and check it is still good right before the
        venue call (:meth:`still_valid`)::

            permit = await agent.permit(f"order-{n}")
            if permit and agent.still_valid(permit):
                venue.place(client_order_id=permit.client_order_id, stake=stake)
                agent.execution(d.id, permit.key, stake)

        By default the supervisor asks on the agent's behalf (over the channel, ~0.2 ms): the
        color is the channel's, so no agent can ask as another. With
        ``AGENTSUP_PERMITS=direct`` (``redis.child_access = "permit"``) the SDK calls the
        script itself (one EVALSHA, ~0.1 ms).

        Refused without any network call: ``unavailable`` when the channel is closed (the
        supervisor is gone: the agent lost its right to act); ``not_active`` before the first
        role push (no epoch), while quiesced, and while standby or shadow, since in each case
        the supervisor has not let this color act. Redis unreachable (after one retry with the
        same token) or any other Redis error: ``unavailable`` (fail closed).

        ``amount`` is the stake. In a canary (role ``canary`` for the candidate, ``active``
        with an :attr:`allocation` under 1 for stable) both colors must give it, and the
        candidate is refused ``over_allocation`` when it would pass its share of the step
        (``amount_required`` without one); size stakes by the allocation::

            permit = await agent.permit(f"order-{n}", amount=base_stake * agent.allocation)
        """
        amount = _stake(amount)
        if self._permits == "channel":
            return await self.permit_via_channel(key, amount=amount)
        if not await self._wait_restored(4 * self._redis_timeout):
            return Permit(False, PermitReason.NOT_ACTIVE, self._epoch, key)
        denied = self._local_denial(key)
        if denied is not None:
            return denied
        asked = time.monotonic()
        epoch = self._epoch
        assert epoch is not None
        keys = self._keys.permit_keys(key, self.color)
        args = [
            self.color,
            str(epoch),
            str(self._permit_ttl_ms),
            self._token(),
            str(self._grant_seq),
            key,
            str(GRANT_LOG_MAXLEN),
            "" if amount is None else repr(amount),
        ]
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
        text = answer[0].decode() if isinstance(answer[0], bytes) else str(answer[0])
        if text == "ok":
            self._grant_seq = max(self._grant_seq, int(str(answer[1])))
        # "regressed": Redis forgot grants this agent saw; nobody may act until it is set right.
        reason = _REASONS.get(text, PermitReason.UNAVAILABLE)
        granted = reason is PermitReason.OK
        deadline = asked + self._permit_valid_s if granted else None
        return Permit(granted, reason, epoch, key, deadline)

    def still_valid(self, permit: Permit) -> bool:
        """True while ``permit`` may still be acted on: granted, before its deadline, and
        nothing since says this color lost control (no newer epoch pushed, not quiesced, the
        channel still open). Call it right before the venue call: an agent that stalled
        between its permit and the venue (a GC pause, a frozen VM) must not act on a permit
        that a flip has made stale meanwhile::

            if agent.still_valid(permit):
                venue.place(client_order_id=permit.client_order_id, stake=stake)

        What is left is the moment between this check and the venue receiving the order;
        a venue that takes the client order id refuses a second execution of the key.
        """
        return (
            permit.granted
            and permit.deadline is not None
            and time.monotonic() < permit.deadline
            and not self.lost.is_set()
            and not self._quiesced
            and self._epoch == permit.epoch
            and self._role in (Role.ACTIVE, Role.CANARY)
        )

    async def permit_via_channel(
        self,
        key: str,
        timeout: float = 2.0,  # noqa: ASYNC109 (no answer in time means unavailable)
        *,
        amount: float | None = None,
    ) -> Permit:
        """Ask the supervisor for a permit over the channel (the way agents without Redis
        access do); no answer within ``timeout`` means ``unavailable``::

            permit = await agent.permit_via_channel(f"order-{n}")
        """
        if not await self._wait_restored(timeout):
            return Permit(False, PermitReason.NOT_ACTIVE, self._epoch, key)
        denied = self._local_denial(key)
        if denied is not None:
            return denied
        request_id = self._token()
        asked = time.monotonic()
        future: asyncio.Future[Permit] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        ask: dict[str, Any] = {"type": "permit", "request_id": request_id, "key": key}
        amount = _stake(amount)
        if amount is not None:
            ask["amount"] = amount
        try:
            if not self._send(ask):
                return Permit(False, PermitReason.UNAVAILABLE, self._epoch, key)
            async with asyncio.timeout(timeout):
                answer = await future
            deadline = asked + self._permit_valid_s if answer.granted else None
            return dataclasses.replace(answer, key=key, deadline=deadline)
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

    def outcome(self, pnl: float, decision_id: str | None = None, **details: Any) -> None:
        """Report that one round finished with ``pnl``; ``details`` (the roll, the crash
        point, the fill) go along, for a shadow to score its own decision on.

        For example::

            agent.outcome(-1.0, decision_id=d.id, crash=1.37)
        """
        msg: dict[str, Any] = {**details, "type": "outcome", "pnl": float(pnl)}
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


def _stake(amount: float | None) -> float | None:
    """A permit's amount as a float; a value that is not a finite number raises at once (the
    supervisor would refuse it anyway: better a bug found here)."""
    if amount is None:
        return None
    if type(amount) not in (int, float) or not math.isfinite(amount):
        raise ValueError(f"a permit's amount must be a finite number, not {amount!r}")
    return float(amount)


def _env_int(env: Mapping[str, str], name: str, default: int) -> int:
    text = env.get(name) or str(default)
    try:
        value = int(text)
    except ValueError:
        raise NotSupervised(f"{name}={text!r} is not an integer") from None
    if value <= 0:
        raise NotSupervised(f"{name}={text!r} must be positive")
    return value


def _env_sentinels(env: Mapping[str, str]) -> list[tuple[str, int]]:
    """``AGENTSUP_REDIS_SENTINELS`` (``host:port,host:port``, set with Redis Sentinel)."""
    text = env.get("AGENTSUP_REDIS_SENTINELS") or ""
    pairs = []
    for item in filter(None, text.split(",")):
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit():
            raise NotSupervised(f"AGENTSUP_REDIS_SENTINELS={text!r}: {item!r} is not host:port")
        pairs.append((host.strip("[]"), int(port)))
    return pairs
