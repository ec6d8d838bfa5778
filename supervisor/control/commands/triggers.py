"""``triggers [--json]``: every trigger, its threshold, and for both colors its current value,
state and when it last fired.

Request: ``{"cmd": "triggers"}``. Result: ``{trigger: {"severity", "enabled", "threshold",
"colors": {"blue": {"value", "state", "last_fired", ...}, "green": {...}}}}``; ``last_fired``
is unix time or null, ``state`` one of ok, alert, fired.
"""

from __future__ import annotations

import argparse
from typing import Any

from pydantic import BaseModel, ConfigDict

from supervisor.control.commands.base import Command, as_indented_json
from supervisor.control.context import Context
from supervisor.control.views import render_triggers


class Args(BaseModel):
    model_config = ConfigDict(extra="forbid")


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the triggers as JSON")


async def run(ctx: Context, args: Args) -> dict[str, Any]:
    return ctx.deployment.triggers()


def show(result: dict[str, Any], ns: argparse.Namespace) -> str:
    return as_indented_json(result) if ns.json else render_triggers(result)


COMMAND = Command(
    "triggers",
    "every trigger: value against threshold, state, last fired",
    Args,
    run,
    arguments=arguments,
    show=show,
)
