"""``restart COLOR``: start a FATAL color again (after its agent was fixed).

Request: ``{"cmd": "restart", "args": {"color": "green"}}``. Result: ``color``, ``state``.
Refused: ``not_fatal`` (the color is being supervised already).
"""

from __future__ import annotations

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
    child = daemon.children[args.color]
    if not child.revive():
        raise Refused("not_fatal", f"{args.color} is {child.state.value}; only FATAL restarts")
    return {"color": args.color.value, "state": "STARTING"}
