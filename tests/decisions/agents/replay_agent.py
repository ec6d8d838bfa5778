"""An SDK agent for the replay tests: it answers mirrors with the demo agent's strategy
(``supervisor.demo.agent.strategy``), and plays nothing. With ``$REPLAY_PLANT=N`` its answer
differs on every round that N divides (twice the stake): a planted difference that
``agentsup decisions replay`` must report, and only there."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

from supervisor.agent import Agent
from supervisor.demo.agent import strategy

PLANT = int(os.environ.get("REPLAY_PLANT", "0"))


def mirror(inputs: dict[str, Any]) -> dict[str, Any]:
    out = strategy(inputs)
    if PLANT and int(inputs.get("round", 0)) % PLANT == 0:
        out = {**out, "stake": out["stake"] * 2}
    return out


async def main() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with Agent.connect(on_mirror=mirror) as agent:
        lost = asyncio.ensure_future(agent.lost.wait())
        stopped = asyncio.ensure_future(stop.wait())
        await asyncio.wait({lost, stopped}, return_when=asyncio.FIRST_COMPLETED)
        lost.cancel()
        stopped.cancel()


if __name__ == "__main__":
    asyncio.run(main())
