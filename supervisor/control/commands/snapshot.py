"""``snapshot [COLOR] [--json]``: take COLOR's state now (the color in charge by default) and
store it (Redis ``{ns}:snapshot:{color}`` and state_dir). The color is not quiesced: the
snapshot is what its hook returns at that instant.

Request: ``{"cmd": "snapshot", "args": {"color": "blue"}}`` (``color`` optional). Result: the
stored snapshot's ``id``, ``color``, ``version``, ``schema``, ``digest``, ``bytes``,
``taken_at``, ``stored_at``, ``age_s``. Refused: ``no_color_active`` (and no COLOR given),
``no_snapshot_capability``, ``snapshot_failed`` (no answer, refused, too large),
``handoff_in_progress``.
"""

from __future__ import annotations

import argparse
from typing import Any

from pydantic import BaseModel, ConfigDict

from supervisor.config import Color
from supervisor.control.commands.base import COLOR_CHOICES, Command, as_indented_json
from supervisor.control.context import Context


class Args(BaseModel):
    model_config = ConfigDict(extra="forbid")
    color: Color | None = None


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("color", nargs="?", choices=COLOR_CHOICES)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def request(ns: argparse.Namespace) -> dict[str, Any]:
    return {"color": ns.color} if ns.color else {}


async def run(ctx: Context, args: Args) -> dict[str, Any]:
    return await ctx.deployment.snapshot(args.color)


def show(r: dict[str, Any], ns: argparse.Namespace) -> str:
    if ns.json:
        return as_indented_json(r)
    return (
        f"snapshot {r['id']} of {r['color']} v{r['version']}: {r['bytes']} bytes, schema "
        f"{r['schema']}, sha256 {r['digest']}"
    )


COMMAND = Command(
    "snapshot",
    "take and store the state of COLOR (the color in charge by default) now",
    Args,
    run,
    arguments=arguments,
    request=request,
    show=show,
)
