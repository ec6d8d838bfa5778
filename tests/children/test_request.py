"""Request and reply with a real child: ``Child.request`` waits for the answer that carries
its ``request_id``, times out when none comes, and fails at once when the child goes."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest

from supervisor.children.process import Child, ChildUnavailable
from supervisor.config import AgentSection, Color

pytestmark = pytest.mark.timeout(60)

REPLIES = frozenset({"snapshot", "restored", "mirror_result"})


@pytest.fixture
async def demo_child() -> AsyncIterator[Child]:
    """The demo agent as blue, supervised by a bare Child (no daemon, no Redis needed: its
    permits would go through the channel, and it is never made active here)."""
    hello = asyncio.Event()

    def on_message(child: Child, msg: dict[str, Any]) -> None:
        if msg["type"] == "hello":
            child.said_hello(msg)
            hello.set()
        elif msg["type"] in REPLIES:
            child.resolve(msg)

    env = {
        **os.environ,
        "AGENTSUP_COLOR": "blue",
        "AGENTSUP_VERSION": "1.0.0",
        "AGENTSUP_REDIS_URL": "unix:///nonexistent.sock",
        "AGENTSUP_PERMITS": "channel",
    }
    child = Child(
        Color.BLUE,
        AgentSection(command=[sys.executable, "-m", "supervisor.demo.agent"], version="1.0.0"),
        env,
        on_message=on_message,
        on_protocol_error=lambda child, kind, detail: None,
        on_state=lambda child: None,
        on_exit=lambda child, code: None,
        on_orphan_killed=lambda: None,
    )
    supervising = asyncio.create_task(child.supervise())
    try:
        await asyncio.wait_for(hello.wait(), 20)
        yield child
    finally:
        await child.stop()
        await supervising


async def test_a_request_gets_the_reply_with_its_id(demo_child: Child) -> None:
    reply = await demo_child.request({"type": "snapshot_request"}, timeout=10)
    assert reply["type"] == "snapshot"
    assert reply["schema"] == "demo/1"
    assert set(reply["state"]) >= {"casino", "escrows", "trading", "ops"}  # demo/book.py
    mirrored = await demo_child.request(
        {"type": "mirror", "inputs": {"game": "dice", "target": 49.5, "stake": 1.0}}, timeout=10
    )
    assert mirrored["output"] == {"bet": "roll_under", "target": 49.5, "stake": 1.0}
    assert mirrored["request_id"] != reply["request_id"]


async def test_an_unanswered_request_times_out(demo_child: Child) -> None:
    # A request of a type the SDK does not know: no reply comes.
    with pytest.raises(TimeoutError):
        await demo_child.request({"type": "teleport"}, timeout=0.5)
    assert demo_child._waiting == {}  # nothing left behind


async def test_a_request_fails_at_once_when_the_child_goes(demo_child: Child) -> None:
    asking = asyncio.create_task(demo_child.request({"type": "teleport"}, timeout=30))
    await asyncio.sleep(0)  # let it run up to its wait: the request is sent
    assert demo_child._waiting
    assert demo_child.pid is not None
    os.kill(demo_child.pid, 9)
    with pytest.raises(ChildUnavailable):
        await asyncio.wait_for(asking, 10)
