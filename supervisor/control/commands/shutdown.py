"""``shutdown``: stop the daemon the way SIGTERM does (the same path, in order).

Request: ``{"cmd": "shutdown"}``. Result: ``{"stopping": true}``, sent before the stop begins.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from supervisor.daemon import Daemon


class Args(BaseModel):
    model_config = ConfigDict(extra="forbid")


async def run(daemon: Daemon, args: Args, *, by: str) -> dict[str, Any]:
    daemon.request_shutdown(f"control ({by})")
    return {"stopping": True}
