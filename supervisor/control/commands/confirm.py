"""``confirm``: make the candidate in charge the stable color (ends its probation).

Request: ``{"cmd": "confirm"}``. Result: ``stable``, ``version``, ``epoch``.
Refused: ``no_candidate``.
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
    change = await ctx.deployment.confirm(ctx.by)
    assert change.active is not None  # a candidate was in charge: someone acts
    return {
        "stable": change.active.value,
        "version": ctx.deployment.versions[change.active],
        "epoch": change.epoch,
    }


def show(r: dict[str, Any], ns: argparse.Namespace) -> str:
    return f"confirmed: {r['stable']} ({r['version']}) is stable"


COMMAND = Command("confirm", "make the candidate in charge the stable color", Args, run, show=show)
