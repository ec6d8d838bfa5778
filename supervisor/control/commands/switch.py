"""``switch COLOR``: put COLOR in charge. If it is not the stable color it becomes the candidate,
on probation, until ``confirm`` (or its probation passes) or a rollback.

Request: ``{"cmd": "switch", "args": {"color": "green"}}``. Result: ``active``, ``epoch``,
``previous``. Refused: ``already_active``; ``not_running`` (the color's process is not
RUNNING: switching to it would leave no one able to act).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from supervisor.config import Color
from supervisor.errors import Refused

if TYPE_CHECKING:
    from supervisor.daemon import Daemon


class Args(BaseModel):
    model_config = ConfigDict(extra="forbid")
    color: Color


async def run(daemon: Daemon, args: Args, *, by: str) -> dict[str, Any]:
    started = time.monotonic()
    child = daemon.children[args.color]
    if child.state.value != "RUNNING":
        raise Refused("not_running", f"{args.color} is {child.state.value}, not RUNNING")
    change = await daemon.rollout.switch(args.color, by, started)
    return {
        "active": args.color.value,
        "epoch": change.epoch,
        "previous": change.previous.value if change.previous else None,
    }
