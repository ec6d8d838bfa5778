"""The SDK's side of a handoff, the test playing the supervisor on a real socketpair: quiesce
waits for the work in flight, migrations up and down, chunks both ways, a restore that raises
is answered at once, permits wait while a restore is applied."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import orjson
import pytest

from supervisor import protocol
from supervisor.agent import Agent, Migrations, NoMigration, state_digest
from tests.test_agent import WAIT, FakeSupervisor, agent_env, supervised

pytestmark = pytest.mark.timeout(30)
__all__ = ["agent_env"]  # the fixture, used by name


def book_migrations(agent: Agent) -> None:
    agent.migrations.register(
        "book/1",
        "book/2",
        up=lambda s: {**s, "positions": {p["id"]: p for p in s["positions"]}},
        down=lambda s: {**s, "positions": list(s["positions"].values())},
    )


async def reassemble(sup: FakeSupervisor) -> dict[str, Any]:
    parts: list[bytes] = []
    while True:
        frame = await sup.next("snapshot_chunk")
        assert frame["index"] == len(parts)
        parts.append(base64.b64decode(frame["data"]))
        if len(parts) == frame["total"]:
            return dict(orjson.loads(b"".join(parts)))


async def test_quiesce_is_answered_once_the_work_in_flight_is_done(
    agent_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    async with supervised(monkeypatch) as (agent, sup):
        release = asyncio.Event()

        async def work() -> None:
            async with agent.in_flight():
                await release.wait()

        busy = asyncio.create_task(work())
        await asyncio.sleep(0.05)
        await sup.send({"type": "quiesce", "request_id": "q1"})
        with pytest.raises(TimeoutError):
            await sup.next("quiesced", timeout=0.3)
        assert agent.quiesced  # refused from the quiesce on, before the answer
        assert not await agent.permit("k-1")
        release.set()
        await busy
        assert await sup.next("quiesced") == {"type": "quiesced", "request_id": "q1"}


async def test_a_restore_migrates_up_and_reports_the_digest_of_what_came(
    agent_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded: list[tuple[Any, Any]] = []
    async with supervised(
        monkeypatch,
        schema="book/2",
        on_snapshot=lambda: ("book/2", {}),
        on_restore=lambda schema, state: loaded.append((schema, state)),
    ) as (agent, sup):
        book_migrations(agent)
        sent = {"positions": [{"id": "a", "size": 1.0}], "balance": 9.5}
        await sup.send({"type": "restore", "request_id": "r1", "schema": "book/1", "state": sent})
        done = await sup.next("restored")
        assert done == {"type": "restored", "request_id": "r1", "digest": state_digest(sent)}
        assert loaded == [
            ("book/2", {"positions": {"a": {"id": "a", "size": 1.0}}, "balance": 9.5})
        ]
        # A schema no migration reaches is refused with a reason, at once.
        await sup.send({"type": "restore", "request_id": "r2", "schema": "other/7", "state": {}})
        refused = await sup.next("restored")
        assert refused["digest"] == ""
        assert "no migration from 'other/7'" in refused["error"]


async def test_hello_says_the_schema_and_what_it_reads(
    agent_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    migrations = Migrations()
    migrations.register("book/1", "book/2", up=dict, down=dict)
    async with supervised(monkeypatch, schema="book/2", migrations=migrations) as (_, sup):
        hello = await sup.next("hello", heartbeats=True)
        assert hello["schema"] == "book/2"
        assert hello["reads"] == ["book/1", "book/2"]


async def test_a_snapshot_asked_in_an_older_schema_is_migrated_down(
    agent_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    state = {"positions": {"a": {"id": "a"}, "b": {"id": "b"}}}
    async with supervised(
        monkeypatch,
        schema="book/2",
        on_snapshot=lambda: ("book/2", state),
        on_restore=lambda schema, state: None,
    ) as (agent, sup):
        book_migrations(agent)
        await sup.send({"type": "snapshot_request", "request_id": "s1", "accept": ["book/1"]})
        snap = await sup.next("snapshot")
        assert snap["schema"] == "book/1"
        assert snap["state"] == {"positions": [{"id": "a"}, {"id": "b"}]}
        await sup.send({"type": "snapshot_request", "request_id": "s2"})
        assert (await sup.next("snapshot"))["schema"] == "book/2"


async def test_a_state_over_one_line_goes_in_chunks_both_ways(
    agent_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    big = {"pad": "é" * (protocol.MAX_LINE), "n": 1}  # 2 MiB of UTF-8
    loaded: list[Any] = []
    async with supervised(
        monkeypatch, on_snapshot=lambda: ("s/1", big), on_restore=lambda s, st: loaded.append(st)
    ) as (_, sup):
        await sup.send({"type": "snapshot_request", "request_id": "s1"})
        body = await reassemble(sup)
        assert body["state"] == big
        assert body["schema"] == "s/1"
        payload = orjson.dumps({"schema": "s/1", "state": big})
        for frame in protocol.chunk_frames("restore_chunk", "r1", payload):
            await sup.send(frame)
        done = await sup.next("restored")
        assert done["digest"] == state_digest(big)
        assert loaded == [big]


async def test_chunks_past_the_cap_are_refused(
    agent_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENTSUP_HANDOFF_MAX_BYTES", str(1 << 20))
    big = {"pad": "x" * (3 << 20)}
    async with supervised(
        monkeypatch, on_snapshot=lambda: ("s/1", big), on_restore=lambda s, st: None
    ) as (_, sup):
        await sup.send({"type": "snapshot_request", "request_id": "s1"})
        refused = await sup.next("snapshot")
        assert refused["state"] is None
        assert "over 1048576" in refused["error"]
        payload = orjson.dumps({"schema": "s/1", "state": {"pad": "x" * (8 << 20)}})
        frames = list(protocol.chunk_frames("restore_chunk", "r1", payload))
        await sup.send(frames[0])  # the first says how many: more than the cap allows
        refused = await sup.next("restored")
        assert "chunked restore refused" in refused["error"]


async def test_a_restore_hook_that_raises_is_answered_with_the_reason(
    agent_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def restore(schema: Any, state: Any) -> None:
        raise ValueError("the venue disagrees with the balance")

    async with supervised(monkeypatch, on_snapshot=lambda: ("s/1", {}), on_restore=restore) as (
        _,
        sup,
    ):
        await sup.send({"type": "restore", "request_id": "r1", "schema": "s/1", "state": {}})
        refused = await sup.next("restored")
        assert "the venue disagrees with the balance" in refused["error"]
        assert (await sup.next("error"))["kind"] == "other"


async def test_a_permit_waits_while_a_restore_is_applied(
    agent_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENTSUP_PERMITS", "channel")
    loading = asyncio.Event()
    release = asyncio.Event()

    async def restore(schema: Any, state: Any) -> None:
        loading.set()
        await release.wait()

    async with supervised(monkeypatch, on_snapshot=lambda: ("s/1", {}), on_restore=restore) as (
        agent,
        sup,
    ):
        await sup.role("active", 3)
        assert await agent.wait_role("active", timeout=WAIT)
        await sup.send({"type": "restore", "request_id": "r1", "schema": "s/1", "state": {}})
        await asyncio.wait_for(loading.wait(), WAIT)
        asking = asyncio.create_task(agent.permit("k-1"))
        await asyncio.sleep(0.2)
        assert not asking.done()  # held
        assert not [m for m in sup.seen if m["type"] == "permit"]
        release.set()
        await sup.next("restored")
        ask = await sup.next("permit")  # asked only now
        await sup.send(
            {
                "type": "permit_result",
                "request_id": ask["request_id"],
                "granted": True,
                "reason": "ok",
                "epoch": 3,
            }
        )
        assert (await asyncio.wait_for(asking, WAIT)).granted


def test_migrations_find_no_chain_between_strangers() -> None:
    m = Migrations()
    m.register("a/1", "a/2", up=dict, down=dict)
    with pytest.raises(NoMigration):
        m.path("a/1", "b/1")
    assert m.first_reachable("a/2", ["b/1", "a/1"]) == "a/1"
