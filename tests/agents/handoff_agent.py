"""An SDK agent with a state to hand over, for the handoff tests.

While active it opens one position every $HA_ROUND_S (a permit, an execution, an outcome):
its state is ``{"positions": [...], "balance": ..., "opened": N, "pad": "..."}`` in schema
``book/1``, or, with $HA_SCHEMA=book/2, ``{"positions": {id: {...}}, ...}`` (a migration
book/1 <-> book/2 registered both ways, as a newer version would). It prints one line per
thing the tests look for (the daemon logs it as ``child_output``):

- ``restored schema=S positions=N digest=D ids=a,b,c`` after a restore (D: its own digest
  of the state it loaded, in its own schema);
- ``replayed N events positions=M`` after a restore that carried the supervisor's journal;
- ``opened ID`` for each position.

Faults, each an environment variable:

- ``HA_PAD_BYTES``: pad the state to about this size (chunked past 1 MiB);
- ``HA_QUIESCE_DELAY_S``, ``HA_SNAPSHOT_DELAY_S``, ``HA_RESTORE_DELAY_S``: answer that late
  (3600: never, in effect);
- ``HA_RESTORE_RAISES``: the restore hook raises (the venue disagrees with the balance);
- ``HA_CORRUPT``: the digest it reports is of something else (a state damaged on its way in);
- ``HA_TAKEN_AGO_S``: its snapshot says it was read that long ago (a cached state).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from typing import Any

import supervisor.agent.channel as sdk_channel
from supervisor.agent import Agent, state_digest

SCHEMA = os.environ.get("HA_SCHEMA", "book/1")
PAD = int(os.environ.get("HA_PAD_BYTES", "0"))
ROUND_S = float(os.environ.get("HA_ROUND_S", "0.05"))


def delay(name: str) -> float:
    return float(os.environ.get(f"HA_{name}_DELAY_S", "0"))


def up(state: dict[str, Any]) -> dict[str, Any]:
    return {**state, "positions": {p["id"]: p for p in state["positions"]}}


def down(state: dict[str, Any]) -> dict[str, Any]:
    return {**state, "positions": sorted(state["positions"].values(), key=lambda p: p["id"])}


class Book:
    def __init__(self, color: str) -> None:
        self.color = color
        self.positions: list[dict[str, Any]] = []
        self.balance = 100.0
        self.opened = 0

    def state(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "positions": self.positions,
            "balance": self.balance,
            "opened": self.opened,
            "pad": "x" * PAD,
        }
        return up(state) if SCHEMA == "book/2" else state

    def load(self, schema: str, state: dict[str, Any]) -> None:
        if schema != SCHEMA:
            raise ValueError(f"got {schema}, speak {SCHEMA}")
        positions = state["positions"]
        self.positions = list(positions.values()) if SCHEMA == "book/2" else list(positions)
        self.balance = float(state["balance"])
        self.opened = int(state["opened"])


async def main() -> None:
    agent = Agent.connect(heartbeat_interval=0.2, schema=SCHEMA)
    if SCHEMA == "book/2":
        agent.migrations.register("book/1", "book/2", up=up, down=down)
    book = Book(agent.color)
    if os.environ.get("HA_CORRUPT"):
        sdk_channel.digest = lambda data: "0" * 64  # type: ignore[assignment]

    async def snapshot() -> tuple[str, dict[str, Any], float] | tuple[str, dict[str, Any]]:
        await asyncio.sleep(delay("SNAPSHOT"))
        ago = float(os.environ.get("HA_TAKEN_AGO_S", "0"))
        if ago:
            return SCHEMA, book.state(), time.time() - ago
        return SCHEMA, book.state()

    async def restore(schema: str, state: dict[str, Any]) -> None:
        await asyncio.sleep(delay("RESTORE"))
        if os.environ.get("HA_RESTORE_RAISES"):
            raise RuntimeError("the venue says the balance is 0.00, not the snapshot's")
        book.load(schema, state)
        ids = ",".join(p["id"] for p in book.positions)
        print(
            f"restored schema={schema} positions={len(book.positions)} "
            f"digest={state_digest(book.state())} ids={ids}",
            flush=True,
        )

    def replay(events: list[dict[str, Any]]) -> None:
        known = {p["id"] for p in book.positions}
        for event in events:
            if event["type"] == "execution" and event["key"] not in known:
                book.positions.append({"id": event["key"], "size": event["amount"]})
                known.add(event["key"])
        print(f"replayed {len(events)} events positions={len(book.positions)}", flush=True)

    async def quiesce() -> None:
        await asyncio.sleep(delay("QUIESCE"))

    agent.on_snapshot(snapshot)
    agent.on_restore(restore)
    agent.on_replay(replay)
    agent.on_quiesce(quiesce)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    async with agent:

        async def play() -> None:
            n = 0
            while await agent.wait_role("active"):
                n += 1
                key = f"{agent.color}-{os.getpid()}-{n}"
                async with agent.in_flight():
                    permit = await agent.permit(key)
                    if permit and agent.still_valid(permit):
                        book.positions.append({"id": key, "size": 1.0})
                        book.opened += 1
                        book.balance -= 1.0
                        agent.execution(f"d-{key}", key, 1.0)
                        agent.outcome(0.0, decision_id=f"d-{key}")
                        print(f"opened {key}", flush=True)
                await asyncio.sleep(ROUND_S)

        player = asyncio.create_task(play())
        await asyncio.wait(
            [asyncio.create_task(stop.wait()), asyncio.create_task(agent.lost.wait())],
            return_when=asyncio.FIRST_COMPLETED,
        )
        player.cancel()
    sys.exit(0)


if __name__ == "__main__":
    asyncio.run(main())
