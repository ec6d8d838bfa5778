"""``status [--json] [--watch]``: the daemon's state.

Request: ``{"cmd": "status", "args": {"flips": 10}}`` (``flips``, optional: how many of the
latest flips to include, 0 to 100). Result: ``active``, ``epoch``, ``stable``, ``candidate``,
``mode``, ``redis`` ("up"/"down"), ``children`` (per color: state, pid, version, role,
uptime_s, restarts, protocol), ``flips`` (the latest, newest first), and more.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from supervisor.control.commands.base import Command, as_indented_json, ask
from supervisor.control.context import Context
from supervisor.control.views import render_status

MAX_FLIPS = 100  # a status is a glance, not the stream's history


class Args(BaseModel):
    model_config = ConfigDict(extra="forbid")
    flips: int = 10


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the status object as JSON")
    parser.add_argument("--watch", action="store_true", help="a live view (Ctrl-C to leave)")


async def run(ctx: Context, args: Args) -> dict[str, Any]:
    return await ctx.deployment.status(max(0, min(args.flips, MAX_FLIPS)))


def show(result: dict[str, Any], ns: argparse.Namespace) -> str:
    return as_indented_json(result) if ns.json else render_status(result)


def cli(command: Command[Any], ns: argparse.Namespace, path: Path) -> int:
    if ns.watch:
        # Imported here: rich is for the live view only, and every other command starts
        # faster without it.
        from supervisor.control.watch import watch

        return watch(path)
    return ask(command, ns, path)


COMMAND = Command(
    "status",
    "who acts, the epoch, both children, the latest flips",
    Args,
    run,
    arguments=arguments,
    show=show,
    cli=cli,
)
