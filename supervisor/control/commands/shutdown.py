"""``shutdown``: stop the daemon the way SIGTERM does (the same path, in order).

Request: ``{"cmd": "shutdown"}``. Result: ``{"stopping": true}``, sent before the stop begins.
"""

from __future__ import annotations

import argparse
from typing import Any

from pydantic import BaseModel, ConfigDict

from supervisor.control.commands.base import Command
from supervisor.control.context import Context


class Args(BaseModel):
    model_config = ConfigDict(extra="forbid")


async def run(ctx: Context, args: Args) -> dict[str, Any]:
    ctx.request_shutdown(f"control ({ctx.by})")
    return {"stopping": True}


def show(r: dict[str, Any], ns: argparse.Namespace) -> str:
    return "the daemon is stopping"


COMMAND = Command("shutdown", "stop the daemon (as SIGTERM does)", Args, run, show=show)
