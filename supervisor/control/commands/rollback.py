"""``rollback [--reason TEXT]``: return control to the stable color now.

Request: ``{"cmd": "rollback", "args": {"reason": "PnL looks off"}}``. Result: ``active``,
``epoch``, ``reason``. Refused: ``nothing_to_roll_back`` (stable is in charge already).
An operator's rollback does not reject the candidate's version; an automatic one does.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from supervisor.control.commands.base import Command
from supervisor.control.context import Context


class Args(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str | None = Field(None, max_length=500)


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reason", help="recorded with the flip")


def request(ns: argparse.Namespace) -> dict[str, Any]:
    return {"reason": ns.reason} if ns.reason else {}


async def run(ctx: Context, args: Args) -> dict[str, Any]:
    reason = f"manual: {args.reason}" if args.reason else "manual"
    change = await ctx.deployment.rollback(reason, ctx.by, time.monotonic())
    return {
        "active": change.active.value if change.active else None,
        "epoch": change.epoch,
        "reason": reason,
    }


def show(r: dict[str, Any], ns: argparse.Namespace) -> str:
    return f"rolled back: {r['active']} is in charge at epoch {r['epoch']} ({r['reason']})"


COMMAND = Command(
    "rollback",
    "return control to the stable color now",
    Args,
    run,
    arguments=arguments,
    request=request,
    show=show,
)
