"""The SDK against a real redis-server, the test playing the supervisor on a real socketpair.

The agent runs in-process (its env set with monkeypatch, ``AGENTSUP_FD`` the child end of the
pair); the demo agent runs as a real subprocess with the child end passed to it. Every wait is
on an event or on the next line, with a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from supervisor.agent import Agent, Permit, PermitReason, Role, state_digest
from supervisor.arbiter.scripts import PERMIT, Keys
from supervisor.errors import NotSupervised, SupervisorError
from supervisor.protocol import MAX_LINE, check
from tests.redis_server import RedisServer

pytestmark = pytest.mark.timeout(30)

ROOT = Path(__file__).resolve().parent.parent
NS = "t"
ACTIVE_KEY = "t:active_version"
KEYS = Keys(NS, ACTIVE_KEY)
WAIT = 5.0  # generous: the machine is shared


class FakeSupervisor:
    """The supervisor's end of the channel: reads the agent's lines, pushes messages."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.seen: list[dict[str, Any]] = []

    async def next(
        self,
        type_: str | None = None,
        *,
        timeout: float = WAIT,
        heartbeats: bool = False,
    ) -> dict[str, Any]:
        """The next message (of ``type_`` when given), skipping heartbeats unless asked."""
        async with asyncio.timeout(timeout):
            while True:
                line = await self.reader.readline()
                if not line:
                    raise EOFError("the agent closed the channel")
                msg = orjson.loads(line)
                assert check(msg) is None, f"the agent sent an invalid message: {msg}"
                self.seen.append(msg)
                if msg["type"] == "heartbeat" and not heartbeats and type_ != "heartbeat":
                    continue
                if type_ is None or msg["type"] == type_:
                    return dict(msg)

    async def until_eof(self) -> list[dict[str, Any]]:
        """Every message left, up to the agent's end of the channel."""
        rest = []
        with contextlib.suppress(EOFError):
            while True:
                rest.append(await self.next(heartbeats=True))
        return rest

    async def send(self, msg: dict[str, Any]) -> None:
        await self.send_raw(orjson.dumps(msg) + b"\n")

    async def send_raw(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def role(self, role: str, epoch: int, allocation: float = 1.0) -> None:
        await self.send({"type": "role", "role": role, "epoch": epoch, "allocation": allocation})


@pytest.fixture
def agent_env(monkeypatch: pytest.MonkeyPatch, redis_server: RedisServer) -> dict[str, str]:
    env = {
        "AGENTSUP_COLOR": "blue",
        "AGENTSUP_VERSION": "1.0.0",
        "AGENTSUP_REDIS_URL": redis_server.url,
        "AGENTSUP_NAMESPACE": NS,
        "AGENTSUP_ACTIVE_KEY": ACTIVE_KEY,
        "AGENTSUP_PERMIT_TTL_MS": "60000",
        "AGENTSUP_PERMITS": "direct",  # these tests are of the SDK's own EVALSHA path
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AGENTSUP_FD", raising=False)
    return env


@pytest.fixture
def r(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    yield client
    client.close()


@contextlib.asynccontextmanager
async def supervised(
    monkeypatch: pytest.MonkeyPatch, **kwargs: Any
) -> AsyncIterator[tuple[Agent, FakeSupervisor]]:
    """An entered Agent on one end of a socketpair, the FakeSupervisor on the other."""
    parent, child = socket.socketpair()
    monkeypatch.setenv("AGENTSUP_FD", str(child.detach()))  # the SDK owns and closes it
    reader, writer = await asyncio.open_unix_connection(sock=parent, limit=4 * MAX_LINE)
    sup = FakeSupervisor(reader, writer)
    try:
        async with Agent.connect(heartbeat_interval=0.2, **kwargs) as agent:
            yield agent, sup
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def make_active(agent: Agent, sup: FakeSupervisor, r: redis.Redis, epoch: int = 5) -> None:
    r.set(ACTIVE_KEY, agent.color)
    r.set(KEYS.owner, agent.color)
    r.set(KEYS.epoch, epoch)
    await sup.role("active", epoch)
    assert await agent.wait_role("active", timeout=WAIT)


# ------------------------------------------------------------------------ connect, hello, roles


def test_connect_without_fd_is_not_supervised(agent_env: dict[str, str]) -> None:
    with pytest.raises(NotSupervised, match="AGENTSUP_FD") as info:
        Agent.connect()
    assert isinstance(info.value, SupervisorError)


async def test_hello_is_the_first_line(
    agent_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    async with supervised(monkeypatch) as (agent, sup):
        hello = await sup.next(heartbeats=True)
        assert hello["type"] == "hello"
        assert hello["version"] == "1.0.0"
        assert hello["pid"] == os.getpid()
        assert hello["protocol"] == 1
        assert hello["capabilities"] == ["permit"]
        assert agent.role is Role.STANDBY
        assert agent.epoch is None


async def test_capabilities_follow_the_hooks(
    agent_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    hooks: dict[str, Any] = {
        "on_snapshot": lambda: ("s/1", {}),
        "on_restore": lambda schema, state: "digest",
        "on_mirror": lambda inputs: inputs,
    }
    async with supervised(monkeypatch, **hooks) as (_, sup):
        hello = await sup.next("hello")
        assert hello["capabilities"] == ["permit", "snapshot", "mirror"]


async def test_role_push_updates_the_agent_and_wakes_wait_role(
    agent_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    async with supervised(monkeypatch) as (agent, sup):
        calls: list[tuple[Role, int | None, float]] = []
        agent.on_role(lambda role, epoch, alloc: calls.append((role, epoch, alloc)))
        waiter = asyncio.create_task(agent.wait_role("active", timeout=WAIT))
        await asyncio.sleep(0)
        assert not waiter.done()
        await sup.role("active", 9, 0.25)
        assert await waiter is True
        assert agent.role is Role.ACTIVE
        assert agent.is_active
        assert agent.epoch == 9
        assert agent.allocation == 0.25
        assert calls == [(Role.ACTIVE, 9, 0.25)]

        await sup.send({"type": "flags", "values": {"crash_target": 2.5}})
        await sup.role("standby", 10, 0.0)
        assert await agent.wait_role("standby", timeout=WAIT)
        assert agent.flags == {"crash_target": 2.5}
        assert not agent.is_active
        assert agent.epoch == 10


async def test_wait_role_times_out_with_false(
    agent_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    async with supervised(monkeypatch) as (agent, _):
        assert await agent.wait_role("active", timeout=0.1) is False


async def test_malformed_lines_are_skipped_and_the_channel_goes_on(
    agent_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    async with supervised(monkeypatch) as (agent, sup):
        await sup.send_raw(b"not json\n")
        await sup.send_raw(b"[1, 2]\n")
        await sup.send_raw(b'{"no": "type"}\n')
        await sup.send_raw(b'{"type": "from-the-future"}\n')
        await sup.send_raw(b'{"type": "role", "role": "active", "epoch": "seven"}\n')
        await sup.send_raw(b"\xff\xfe\n")
        await sup.send_raw(b"x" * (MAX_LINE + 10) + b"\n")  # over the limit: skipped whole
        await sup.role("active", 3)
        assert await agent.wait_role("active", timeout=WAIT)
        assert agent.epoch == 3
        assert not agent.lost.is_set()


async def test_unknown_role_is_taken_as_standby(
    agent_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    async with supervised(monkeypatch) as (agent, sup):
        await sup.role("active", 3)
        assert await agent.wait_role("active", timeout=WAIT)
        await sup.role("overlord", 4)
        assert await agent.wait_role("standby", timeout=WAIT)
        assert agent.epoch == 4


# ------------------------------------------------------------------------ permits


async def test_permit_is_granted_at_the_current_epoch(
    agent_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, r: redis.Redis
) -> None:
    async with supervised(monkeypatch) as (agent, sup):
        await make_active(agent, sup, r, epoch=5)
        permit = await agent.permit("order-1")
        assert permit == Permit(True, PermitReason.OK, 5, "order-1")
        assert permit
        owner = r.get(KEYS.permit("order-1"))
        assert owner is not None
        assert owner.startswith("blue:5:")
        assert 0 < r.pttl(KEYS.permit("order-1")) <= 60000


async def test_permit_is_refused_to_the_color_not_active(
    agent_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, r: redis.Redis
) -> None:
    async with supervised(monkeypatch) as (agent, sup):
        await make_active(agent, sup, r, epoch=5)
        r.set(ACTIVE_KEY, "green")  # flipped; blue has not heard yet
        r.set(KEYS.owner, "green")
        permit = await agent.permit("order-1")
        assert not permit
        assert permit.reason is PermitReason.NOT_ACTIVE
        assert r.exists(KEYS.permit("order-1")) == 0


async def test_a_raw_set_of_the_active_key_leaves_nobody_able_to_act(
    agent_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, r: redis.Redis
) -> None:
    """An operator's SET that no flip made: the key names green, the epoch is still blue's.
    Until the daemon adopts it (bumping the epoch for green), neither color gets a permit."""
    async with supervised(monkeypatch) as (agent, sup):
        await make_active(agent, sup, r, epoch=5)
        r.set(ACTIVE_KEY, "green")  # the owner stays blue
        blue = await agent.permit("order-1")
        assert blue.reason is PermitReason.NOT_ACTIVE
        script = r.register_script(PERMIT)
        green = script(
            keys=KEYS.permit_keys("order-2", "green"),
            args=["green", "5", "60000", "tok", "0", "order-2", "100"],
        )
        assert green[0] == "not_active"
        assert r.exists(KEYS.permit("order-1"), KEYS.permit("order-2")) == 0


async def test_a_redis_behind_the_grants_seen_is_refused(
    agent_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, r: redis.Redis
) -> None:
    """Redis restored from an older dump forgot grants: its counter is behind the highest
    grant the caller saw, and the script refuses rather than grant a forgotten key again."""
    async with supervised(monkeypatch) as (agent, sup):
        await make_active(agent, sup, r, epoch=5)
        assert await agent.permit("order-1")
        assert await agent.permit("order-2")
        r.delete(KEYS.permit("order-2"))
        r.set(KEYS.grant_seq, 1)  # as if the dump was taken after order-1
        again = await agent.permit("order-2")
        assert again.reason is PermitReason.UNAVAILABLE
        assert r.hget(KEYS.permit_stats, "regressed") == "1"


async def test_permit_is_refused_after_the_epoch_moved_on(
    agent_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, r: redis.Redis
) -> None:
    async with supervised(monkeypatch) as (agent, sup):
        await make_active(agent, sup, r, epoch=5)
        r.incr(KEYS.epoch)
        permit = await agent.permit("order-1")
        assert (permit.granted, permit.reason, permit.epoch) == (
            False,
            PermitReason.STALE_EPOCH,
            5,
        )


async def test_a_reused_key_is_refused_as_duplicate(
    agent_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, r: redis.Redis
) -> None:
    async with supervised(monkeypatch) as (agent, sup):
        await make_active(agent, sup, r)
        assert await agent.permit("order-7")
        again = await agent.permit("order-7")
        assert not again
        assert again.reason is PermitReason.DUPLICATE
        assert r.hgetall(KEYS.permit_stats) == {"ok": "1", "duplicate": "1"}


def test_the_same_token_retried_is_ok_again(r: redis.Redis) -> None:
    """A reply lost after the script ran: the retry carries the same token and gets ok."""
    r.set(ACTIVE_KEY, "blue")
    r.set(KEYS.owner, "blue")
    r.set(KEYS.epoch, 5)
    script = r.register_script(PERMIT)
    keys = KEYS.permit_keys("order-1", "blue")

    def ask(token: str) -> str:
        return str(script(keys=keys, args=["blue", "5", "60000", token, "0", "order-1", "100"])[0])

    assert ask("tok-1") == "ok"
    assert ask("tok-1") == "ok"
    assert ask("tok-2") == "duplicate"


async def test_redis_down_means_unavailable_quickly(
    agent_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    r: redis.Redis,
    redis_server: RedisServer,
) -> None:
    async with supervised(monkeypatch) as (agent, sup):
        await make_active(agent, sup, r)
        assert await agent.permit("before")
        redis_server.stop()
        started = time.monotonic()
        permit = await agent.permit("during")
        assert time.monotonic() - started < 2.0
        assert not permit
        assert permit.reason is PermitReason.UNAVAILABLE


async def test_a_redis_restart_costs_no_permit(
    agent_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    r: redis.Redis,
    redis_server: RedisServer,
) -> None:
    """The pooled connection dies with the server; the next permit reconnects (and loads the
    script again into the empty server) instead of failing."""
    async with supervised(monkeypatch) as (agent, sup):
        await make_active(agent, sup, r)
        assert await agent.permit("before")
        redis_server.stop()
        redis_server.start()
        r.set(ACTIVE_KEY, "blue")
        r.set(KEYS.owner, "blue")
        r.set(KEYS.epoch, 5)
        # What the daemon puts back into a Redis that came back empty: without it the SDK,
        # having seen grant 1, refuses as regressed (test_a_redis_behind_the_grants_seen...).
        r.set(KEYS.grant_seq, 1)
        permit = await agent.permit("after")
        assert permit.reason is PermitReason.OK


async def test_no_permit_is_asked_before_a_role_or_while_quiesced(
    agent_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, r: redis.Redis
) -> None:
    quiesced, resumed = asyncio.Event(), asyncio.Event()
    async with supervised(monkeypatch) as (agent, sup):
        agent.on_quiesce(quiesced.set)
        agent.on_resume(resumed.set)
        r.set(ACTIVE_KEY, "blue")
        r.set(KEYS.owner, "blue")
        r.set(KEYS.epoch, 5)
        early = await agent.permit("order-1")
        assert (early.reason, early.epoch) == (PermitReason.NOT_ACTIVE, None)

        await sup.role("active", 5)
        assert await agent.wait_role("active", timeout=WAIT)
        await sup.send({"type": "quiesce", "request_id": "q1"})
        await asyncio.wait_for(quiesced.wait(), WAIT)
        assert agent.quiesced
        paused = await agent.permit("order-1")
        assert (paused.granted, paused.reason) == (False, PermitReason.NOT_ACTIVE)

        await sup.send({"type": "resume", "request_id": "q2"})
        await asyncio.wait_for(resumed.wait(), WAIT)
        assert not agent.quiesced
        assert r.hgetall(KEYS.permit_stats) == {}  # nothing above reached Redis
        assert await agent.permit("order-1")


async def test_permit_goes_through_the_channel_by_default(
    agent_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, r: redis.Redis
) -> None:
    """Without AGENTSUP_PERMITS=direct the SDK never asks Redis itself: the supervisor asks
    for it, with the color of the channel (a child cannot ask as the other one)."""
    monkeypatch.delenv("AGENTSUP_PERMITS")
    async with supervised(monkeypatch) as (agent, sup):
        await make_active(agent, sup, r, epoch=4)
        asking = asyncio.create_task(agent.permit("order-9"))
        request = await sup.next("permit")
        assert set(request) == {"type", "request_id", "key"}  # no color to forge
        await sup.send(
            {
                "type": "permit_result",
                "request_id": request["request_id"],
                "granted": True,
                "reason": "ok",
                "epoch": 4,
                "valid_ms": 2000,
            }
        )
        permit = await asking
        assert (permit.granted, permit.key, permit.client_order_id) == (True, "order-9", "order-9")
        assert agent.still_valid(permit)
        assert r.hgetall(KEYS.permit_stats) == {}  # the SDK did not touch Redis


async def test_a_permit_goes_stale_with_a_newer_epoch_or_past_its_deadline(
    agent_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, r: redis.Redis
) -> None:
    """An agent that stalls between its permit and its venue call must not act on a permit a
    flip has made stale: still_valid() says no once a newer epoch is pushed, or the deadline
    (AGENTSUP_PERMIT_VALID_MS) has passed."""
    monkeypatch.setenv("AGENTSUP_PERMIT_VALID_MS", "300")
    async with supervised(monkeypatch) as (agent, sup):
        await make_active(agent, sup, r, epoch=5)
        permit = await agent.permit("order-1")
        assert permit
        assert agent.still_valid(permit)
        await sup.role("standby", 6)
        assert await agent.wait_role("standby", timeout=WAIT)
        assert not agent.still_valid(permit)

        await make_active(agent, sup, r, epoch=7)
        late = await agent.permit("order-2")
        assert late
        assert agent.still_valid(late)
        assert late.deadline is not None
        async with asyncio.timeout(WAIT):
            while time.monotonic() < late.deadline:
                await asyncio.sleep(0.05)
        assert not agent.still_valid(late)
        refused = await agent.permit("order-2")
        assert not agent.still_valid(refused)


async def test_permit_through_the_channel(
    agent_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    async with supervised(monkeypatch) as (agent, sup):
        await sup.role("active", 4)
        assert await agent.wait_role("active", timeout=WAIT)
        asking = asyncio.create_task(agent.permit_via_channel("order-9"))
        request = await sup.next("permit")
        assert request["key"] == "order-9"
        await sup.send(
            {
                "type": "permit_result",
                "request_id": request["request_id"],
                "granted": True,
                "reason": "ok",
                "epoch": 4,
            }
        )
        assert await asking == Permit(True, PermitReason.OK, 4, "order-9")

        unanswered = await agent.permit_via_channel("order-10", timeout=0.2)
        assert unanswered.reason is PermitReason.UNAVAILABLE


# ------------------------------------------------------------------------ reports


async def test_decide_reports_the_decision_with_its_latency(
    agent_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    async with supervised(monkeypatch) as (agent, sup):
        async with agent.decide("dice", {"target": 49.5}) as d:
            await asyncio.sleep(0.05)
            d.output = {"bet": "under"}
            d.reasoning = "flat stake"
        msg = await sup.next("decision")
        assert msg["id"] == d.id
        assert (msg["kind"], msg["inputs"], msg["output"]) == (
            "dice",
            {"target": 49.5},
            {"bet": "under"},
        )
        assert msg["reasoning"] == "flat stake"
        assert msg["latency_ms"] == d.latency_ms
        assert msg["latency_ms"] >= 40


async def test_an_exception_in_decide_is_reported_then_raised(
    agent_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    async with supervised(monkeypatch) as (agent, sup):
        await sup.next("hello")

        async def buggy_decision() -> None:
            async with agent.decide("crash", {"target": 2.0}):
                payouts: dict[str, float] = {"coinflip": 2.0}
                payouts["crash"]

        with pytest.raises(KeyError, match="crash"):
            await buggy_decision()
        agent.outcome(0.0)
        error = await sup.next()
        assert error["type"] == "error"
        assert error["kind"] == "exception"
        assert error["message"] == "KeyError: 'crash'"
        assert 'payouts["crash"]' in error["traceback"]
        assert (await sup.next())["type"] == "outcome"  # and no decision before it


async def test_reports_carry_the_contract_fields(
    agent_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    async with supervised(monkeypatch) as (agent, sup):
        agent.execution("d-1", "order-1", 1)
        agent.outcome(-1, decision_id="d-1")
        agent.error("auth", "401 invalid API key")
        agent.escrow("escrow-1", "watch", due_at=1e9, gap_s=30)
        agent.context(volatility=0.02, disputes_open=0)
        await sup.next("hello")
        got = [await sup.next() for _ in range(5)]
        assert got == [
            {"type": "execution", "decision_id": "d-1", "key": "order-1", "amount": 1.0},
            {"type": "outcome", "pnl": -1.0, "decision_id": "d-1"},
            {"type": "error", "kind": "auth", "message": "401 invalid API key"},
            {"type": "escrow", "id": "escrow-1", "op": "watch", "due_at": 1e9, "gap_s": 30.0},
            {"type": "context", "volatility": 0.02, "disputes_open": 0},
        ]
        with pytest.raises(ValueError, match="kind"):
            agent.error("fatal", "no such kind")
        with pytest.raises(ValueError, match="op"):
            agent.escrow("escrow-1", "release")


async def test_heartbeats_arrive_by_themselves(
    agent_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    async with supervised(monkeypatch) as (_, sup):
        await sup.next("hello")
        await sup.next("heartbeat")
        await sup.next("heartbeat")


# ------------------------------------------------------------------------ the lease


async def test_a_closed_channel_is_the_loss_of_the_right_to_act(
    agent_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, r: redis.Redis
) -> None:
    async with supervised(monkeypatch) as (agent, sup):
        lost_roles: list[Role] = []
        await make_active(agent, sup, r)
        agent.on_role(lambda role, epoch, alloc: lost_roles.append(role))
        sup.writer.close()
        await asyncio.wait_for(agent.lost.wait(), WAIT)
        assert agent.role is Role.STANDBY
        assert agent.epoch is None
        assert lost_roles == [Role.STANDBY]
        permit = await agent.permit("order-1")
        assert permit.reason is PermitReason.UNAVAILABLE
        assert r.hgetall(KEYS.permit_stats) == {}  # refused without asking Redis
        assert await agent.wait_role("active", timeout=WAIT) is False
        agent.outcome(1.0)  # reporting into a closed channel never raises
        assert agent.dropped >= 1


async def test_closing_right_after_connect_stops_every_task(
    agent_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Closing while the SDK still connects to Redis: on Python 3.11 asyncio.wait_for (used by
    redis-py) can swallow that cancel; the SDK must still stop its tasks."""
    for epoch in range(1, 11):
        async with asyncio.timeout(WAIT), supervised(monkeypatch) as (agent, sup):
            await sup.role("active", epoch)
            assert await agent.wait_role("active", timeout=WAIT)
        assert not agent._tasks


# ------------------------------------------------------------------------ hooks


async def test_snapshot_restore_and_mirror_hooks_answer(
    agent_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    restored: list[Any] = []

    async def snapshot() -> tuple[str, dict[str, Any]]:
        return "demo/1", {"escrows": {"escrow-1": 1e9}}

    def restore(schema: Any, state: Any) -> str:
        restored.append((schema, state))
        return state_digest(state)

    hooks: dict[str, Any] = {
        "on_snapshot": snapshot,
        "on_restore": restore,
        "on_mirror": lambda inputs: {"bet": "under", "seen": inputs},
    }
    async with supervised(monkeypatch, **hooks) as (_, sup):
        await sup.send({"type": "snapshot_request", "request_id": "s1"})
        snap = await sup.next("snapshot")
        assert abs(snap.pop("taken_at") - time.time()) < 60  # when the hook read the state
        assert snap == {
            "type": "snapshot",
            "request_id": "s1",
            "schema": "demo/1",
            "state": {"escrows": {"escrow-1": 1e9}},
        }
        state = {"escrows": {"escrow-2": 2e9}, "rounds": 3}
        await sup.send({"type": "restore", "request_id": "r1", "schema": "demo/1", "state": state})
        done = await sup.next("restored")
        assert done == {"type": "restored", "request_id": "r1", "digest": state_digest(state)}
        assert restored == [("demo/1", state)]

        await sup.send({"type": "mirror", "request_id": "m1", "inputs": {"round": 4}})
        mirror = await sup.next("mirror_result")
        assert mirror["request_id"] == "m1"
        assert mirror["output"] == {"bet": "under", "seen": {"round": 4}}


async def test_a_failing_hook_is_reported_and_the_channel_survives(
    agent_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def mirror(inputs: Any) -> Any:
        raise RuntimeError("model not loaded")

    async with supervised(monkeypatch, on_mirror=mirror) as (agent, sup):
        await sup.send({"type": "mirror", "request_id": "m1", "inputs": {}})
        error = await sup.next("error")
        assert error["kind"] == "other"
        assert "model not loaded" in error["message"]
        await sup.role("active", 2)
        assert await agent.wait_role("active", timeout=WAIT)


# ------------------------------------------------------------------------ the demo agent


class DemoProcess:
    """``python -m supervisor.demo.agent`` on a socketpair, as the daemon would start it."""

    def __init__(self, proc: asyncio.subprocess.Process, sup: FakeSupervisor) -> None:
        self.proc = proc
        self.sup = sup


@contextlib.asynccontextmanager
async def demo_agent(
    redis_server: RedisServer, color: str = "blue", **demo_env: str
) -> AsyncIterator[DemoProcess]:
    parent, child = socket.socketpair()
    env = {
        **os.environ,
        "AGENTSUP_COLOR": color,
        "AGENTSUP_VERSION": "1.0.0" if color == "blue" else "2.0.0",
        "AGENTSUP_FD": str(child.fileno()),
        "AGENTSUP_REDIS_URL": redis_server.url,
        "AGENTSUP_NAMESPACE": NS,
        "AGENTSUP_ACTIVE_KEY": ACTIVE_KEY,
        "AGENTSUP_PERMIT_TTL_MS": "60000",
        "AGENTSUP_PERMITS": "direct",
        "AGENTSUP_DEMO_ROUND_S": "0.01",
        **{f"AGENTSUP_DEMO_{name.upper()}": value for name, value in demo_env.items()},
    }
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "supervisor.demo.agent",
            env=env,
            cwd=ROOT,
            pass_fds=(child.fileno(),),
            stdout=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
    finally:
        child.close()
    reader, writer = await asyncio.open_unix_connection(sock=parent, limit=4 * MAX_LINE)
    demo = DemoProcess(proc, FakeSupervisor(reader, writer))
    try:
        yield demo
    finally:
        writer.close()
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()


async def test_the_demo_agent_plays_rounds_and_stops_on_sigterm(
    redis_server: RedisServer, r: redis.Redis
) -> None:
    async with demo_agent(redis_server) as demo:
        hello = await demo.sup.next(heartbeats=True)
        assert hello["type"] == "hello"
        assert hello["capabilities"] == ["permit", "snapshot", "mirror"]
        r.set(ACTIVE_KEY, "blue")
        r.set(KEYS.owner, "blue")
        r.set(KEYS.epoch, 1)
        await demo.sup.role("active", 1)
        counts = {"decision": 0, "execution": 0, "outcome": 0}
        while min(counts.values()) < 3:
            msg = await demo.sup.next()
            if msg["type"] in counts:
                counts[msg["type"]] += 1
            if msg["type"] == "outcome":
                assert msg["pnl"] in (0.98, 1.0, -1.0)
        watched = {m["id"] for m in demo.sup.seen if m["type"] == "escrow" and m["op"] == "watch"}
        assert watched == {"escrow-1", "escrow-2"}
        keys = [m["key"] for m in demo.sup.seen if m["type"] == "execution"]
        assert len(keys) == len(set(keys))
        assert all(key.startswith(f"blue-1.0.0-{demo.proc.pid}-") for key in keys)

        demo.proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(demo.proc.wait(), 10) == 0
        assert demo.proc.stdout is not None
        out = (await demo.proc.stdout.read()).decode()
        assert "role active at epoch 1" in out
        assert "stopping: asked to stop" in out


async def test_the_demo_agent_answers_mirrors_while_standby(
    redis_server: RedisServer,
) -> None:
    async with demo_agent(redis_server, color="green") as demo:
        await demo.sup.role("standby", 1, 0.0)
        inputs = {"round": 2, "game": "crash", "target": 2.0, "stake": 1.0}
        await demo.sup.send({"type": "mirror", "request_id": "m1", "inputs": inputs})
        answer = await demo.sup.next("mirror_result")
        assert answer["output"] == {"bet": "cash_out", "at": 2.0, "stake": 1.0}
        assert not [m for m in demo.sup.seen if m["type"] in ("decision", "execution")]


async def test_the_demo_agent_exits_when_the_channel_closes(
    redis_server: RedisServer,
) -> None:
    async with demo_agent(redis_server) as demo:
        await demo.sup.next("hello")
        demo.sup.writer.close()
        assert await asyncio.wait_for(demo.proc.wait(), 10) == 0


async def test_the_exception_bug_is_reported_and_the_agent_goes_on(
    redis_server: RedisServer, r: redis.Redis
) -> None:
    async with demo_agent(redis_server, bug="exception", bug_after="2") as demo:
        r.set(ACTIVE_KEY, "blue")
        r.set(KEYS.owner, "blue")
        r.set(KEYS.epoch, 1)
        await demo.sup.role("active", 1)
        error = await demo.sup.next("error")
        assert error["kind"] == "exception"
        assert "KeyError" in error["message"]
        assert "Traceback" in error["traceback"]
        await demo.sup.next("error")  # it keeps running: the next round fails the same way
        assert demo.proc.returncode is None
        outcomes = [m for m in demo.sup.seen if m["type"] == "outcome"]
        assert len(outcomes) == 2


async def test_the_auth_bug_reports_once_and_stops_acting(
    redis_server: RedisServer, r: redis.Redis
) -> None:
    async with demo_agent(redis_server, bug="auth", bug_after="1") as demo:
        r.set(ACTIVE_KEY, "blue")
        r.set(KEYS.owner, "blue")
        r.set(KEYS.epoch, 1)
        await demo.sup.role("active", 1)
        error = await demo.sup.next("error")
        assert (error["kind"], error["message"]) == ("auth", "401 invalid API key")
        await demo.sup.next("heartbeat")  # alive, and nothing but heartbeats (and the
        await demo.sup.next("heartbeat")  # world, for the deploy gates) follow: no action
        later = demo.sup.seen[demo.sup.seen.index(error) + 1 :]
        assert "heartbeat" in {m["type"] for m in later}
        assert {m["type"] for m in later} <= {"heartbeat", "context"}


async def test_the_exit_bug_dies_mid_round(redis_server: RedisServer, r: redis.Redis) -> None:
    async with demo_agent(redis_server, bug="exit", bug_after="1") as demo:
        r.set(ACTIVE_KEY, "blue")
        r.set(KEYS.owner, "blue")
        r.set(KEYS.epoch, 1)
        await demo.sup.role("active", 1)
        assert await asyncio.wait_for(demo.proc.wait(), 10) == 3
        await demo.sup.until_eof()
        types = [m["type"] for m in demo.sup.seen if m["type"] != "heartbeat"]
        # round 1 complete, round 2 decided and permitted, then nothing
        assert types[-1] == "decision"
        assert types.count("outcome") == 1


async def test_the_double_spend_bug_executes_a_used_key_again(
    redis_server: RedisServer, r: redis.Redis
) -> None:
    async with demo_agent(redis_server, color="green", bug="double_spend", bug_after="1") as demo:
        r.set(ACTIVE_KEY, "green")
        r.set(KEYS.owner, "green")
        r.set(KEYS.epoch, 1)
        r.set(KEYS.permit("order-3"), "blue:0:earlier")  # blue executed order-3 before
        await demo.sup.role("active", 1)
        keys: list[str] = []
        while len(keys) < 5:
            keys.append((await demo.sup.next("execution"))["key"])
        assert keys[0].startswith("green-2.0.0-")  # round 1: healthy
        assert keys[1:5] == ["order-2", "order-2", "order-3", "order-4"]
