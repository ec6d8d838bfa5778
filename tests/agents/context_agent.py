"""An SDK agent that reports the world as the test writes it, for the deploy gates' tests.

Every ``CTX_EVERY_S`` (0.1) it reads ``$CTX_FILE`` (JSON) and reports what it says:

- ``context``: sent as the ``context`` message's fields (volatility, disputes_open,
  auto_releases); ``null`` or missing: nothing is sent (an agent gone quiet);
- ``escrows``: ``[{"id", "due_at"}]``, each watched once (and checked every round).

It prints ``reported N`` the first time it sent the file's N-th version (``version`` in the
file), so a test can wait for the daemon to have heard it. With ``CTX_STATE=1`` it has a state
to hand over (snapshot and restore hooks) and prints ``restored`` after a restore; with
``CTX_SNAPSHOT_FAILS=1`` as well, its snapshot hook raises (the venue does not answer).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from pathlib import Path
from typing import Any

from supervisor.agent import Agent

EVERY_S = float(os.environ.get("CTX_EVERY_S", "0.1"))


def read_world(path: Path) -> dict[str, Any]:
    """What the test wrote (it replaces the file whole); nothing yet, or unreadable: {}."""
    try:
        world: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return world


async def main() -> None:
    path = Path(os.environ["CTX_FILE"])
    agent = Agent.connect(heartbeat_interval=0.2, schema="ctx/1")
    state: dict[str, Any] = {"rounds": 0}
    if os.environ.get("CTX_STATE") == "1":

        def snapshot() -> tuple[str, dict[str, Any]]:
            if os.environ.get("CTX_SNAPSHOT_FAILS") == "1":
                raise RuntimeError("the venue does not answer: no state to give")
            return "ctx/1", dict(state)

        def restore(schema: str, given: dict[str, Any]) -> None:
            state.update(given)
            print(f"restored rounds={state['rounds']}", flush=True)

        agent.on_snapshot(snapshot)
        agent.on_restore(restore)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    watched: set[str] = set()
    reported = -1
    async with agent:
        while not stop.is_set():
            world = read_world(path)
            context = world.get("context")
            if context is not None:
                agent.context(**context)
            for escrow in world.get("escrows", []):
                if escrow["id"] not in watched:
                    agent.escrow(escrow["id"], "watch", due_at=escrow["due_at"])
                    watched.add(escrow["id"])
                else:
                    agent.escrow(escrow["id"], "check")
            version = int(world.get("version", 0))
            if version != reported:
                reported = version
                print(f"reported {version}", flush=True)
            state["rounds"] += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), EVERY_S)


if __name__ == "__main__":
    asyncio.run(main())
