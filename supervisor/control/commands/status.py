"""``status``: the daemon's state.

Request: ``{"cmd": "status"}``. Result: ``active``, ``epoch``, ``stable``, ``candidate``,
``mode``, ``redis`` ("up"/"down"), ``children`` (per color: state, pid, version, role,
uptime_s, restarts, protocol), ``flips`` (the latest, newest first), and more.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from supervisor.daemon import Daemon


class Args(BaseModel):
    model_config = ConfigDict(extra="forbid")
    flips: int = 10


async def run(daemon: Daemon, args: Args, *, by: str) -> dict[str, Any]:
    return await daemon.status(flips=max(0, min(args.flips, 100)))
