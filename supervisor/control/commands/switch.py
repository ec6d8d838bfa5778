"""``switch COLOR``: put COLOR in charge. If it is not the stable color it becomes the candidate,
on probation, until ``confirm`` (or its probation passes) or a rollback.

Request: ``{"cmd": "switch", "args": {"color": "green"}}``. Result: ``active``, ``epoch``,
``previous``. Refused: ``already_active``; ``not_running`` (the color's process is not
RUNNING: switching to it would leave no one able to act).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from pydantic import BaseModel, ConfigDict

from supervisor.config import Color
from supervisor.control.commands.base import COLOR_CHOICES, Command
from supervisor.control.context import Context


class Args(BaseModel):
    model_config = ConfigDict(extra="forbid")
    color: Color


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("color", choices=COLOR_CHOICES)


def request(ns: argparse.Namespace) -> dict[str, Any]:
    return {"color": ns.color}


async def run(ctx: Context, args: Args) -> dict[str, Any]:
    # Taken before the deployment's lock: the flip's latency includes waiting for it.
    started = time.monotonic()
    change = await ctx.deployment.switch(args.color, ctx.by, started)
    return {
        "active": args.color.value,
        "epoch": change.epoch,
        "previous": change.previous.value if change.previous else None,
    }


def show(r: dict[str, Any], ns: argparse.Namespace) -> str:
    return f"switched: {r['active']} is in charge at epoch {r['epoch']} (was {r['previous']})"


COMMAND = Command(
    "switch",
    "put COLOR in charge (as candidate, on probation)",
    Args,
    run,
    arguments=arguments,
    request=request,
    show=show,
)
