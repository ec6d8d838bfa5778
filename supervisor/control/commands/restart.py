"""``restart COLOR``: start a FATAL color again (after its agent was fixed).

Request: ``{"cmd": "restart", "args": {"color": "green"}}``. Result: ``color``, ``state``.
Refused: ``not_fatal`` (the color is being supervised already).
"""

from __future__ import annotations

import argparse
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
    ctx.deployment.restart(args.color)
    return {"color": args.color.value, "state": "STARTING"}


def show(r: dict[str, Any], ns: argparse.Namespace) -> str:
    return f"restarting {r['color']}"


COMMAND = Command(
    "restart",
    "start a FATAL color again",
    Args,
    run,
    arguments=arguments,
    request=request,
    show=show,
)
