"""An SDK agent for the flags tests: prints every ``flags`` push it gets as
``flags <color> <json values> <json sources>`` (keys sorted, flushed), so that a test can see
in the daemon's captured stdout what this color was told, and when. It never acts.

Run by the supervisor as ``python tests/agents/flags_agent.py``.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Mapping
from typing import Any

from supervisor.agent import Agent


async def main() -> None:
    color = os.environ["AGENTSUP_COLOR"]
    async with Agent.connect() as agent:

        @agent.on_flags
        def show(values: Mapping[str, Any]) -> None:
            print(
                f"flags {color} {json.dumps(dict(values), sort_keys=True)} "
                f"{json.dumps(dict(agent.flag_sources), sort_keys=True)}",
                flush=True,
            )

        await agent.lost.wait()


if __name__ == "__main__":
    asyncio.run(main())
