"""``gates [COLOR] [--json]``: every deploy gate, open or closed, its value against its
threshold and since when (docs/gates.md). COLOR: the color a deploy would put in charge (the
one not in charge by default); only the ``children`` gate depends on it.

Request: ``{"cmd": "gates", "args": {"color": null}}``. Result: ``gates``, a list of ``{"gate",
"open", "enabled", "value", "threshold", "reason", "since"}`` in a fixed order (volatility,
escrow_dispute, auto_release, freeze_window, cooldown, redis, children, snapshot); ``open``:
whether a deploy may go ahead now. Refused: nothing (a gate that cannot know is closed).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from pydantic import BaseModel, ConfigDict

from supervisor.config import Color
from supervisor.control.commands.base import COLOR_CHOICES, Command, as_indented_json
from supervisor.control.context import Context


class Args(BaseModel):
    model_config = ConfigDict(extra="forbid")
    color: Color | None = None


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "color", nargs="?", choices=COLOR_CHOICES, help="the deploy's target (default: standby)"
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def request(ns: argparse.Namespace) -> dict[str, Any]:
    return {"color": ns.color}


async def run(ctx: Context, args: Args) -> dict[str, Any]:
    gates = ctx.deployment.gates_list(args.color)
    return {"open": all(g["open"] for g in gates), "gates": gates}


def show(r: dict[str, Any], ns: argparse.Namespace) -> str:
    if ns.json:
        return as_indented_json(r)
    return (
        table(r["gates"], time.time())
        + "\n"
        + ("a deploy may go ahead" if r["open"] else "a deploy is refused (or --force --reason)")
    )


def table(gates: list[dict[str, Any]], now: float) -> str:
    """One line per gate: its state, since how long, and why."""
    width = max(len(g["gate"]) for g in gates)
    lines = []
    for g in gates:
        state = "open" if g["open"] else "CLOSED"
        if not g["enabled"]:
            state = "off"
        since = g["since"]
        ago = "" if since is None else _ago(now - since)
        lines.append(f"{g['gate']:<{width}}  {state:<6}  {ago:>8}  {g['reason']}")
    return "\n".join(lines)


def _ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


COMMAND = Command(
    "gates",
    "show the deploy gates: open or closed, value, threshold, since when",
    Args,
    run,
    arguments=arguments,
    request=request,
    show=show,
)
