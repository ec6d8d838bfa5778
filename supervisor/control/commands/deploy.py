"""``deploy COLOR [--strategy blue-green|canary] [--force --reason TEXT] [--json]``: the deploy
gates, then the handoff (when the color in charge has a state to hand over), then the switch;
or, with ``--strategy canary``, the canary's first step (docs/gates.md).

Refused (exit 1) naming every closed gate (``gates_closed``); ``--force`` goes past them and
needs ``--reason``: the override is recorded in the flips stream (the flip's ``by``), the
decision log (a ``deploy`` record), the log (``deploy_forced``) and an alert.

Request: ``{"cmd": "deploy", "args": {"color": "green", "strategy": "blue-green", "force":
false, "reason": null}}``. Result: ``target``, ``strategy``, ``forced``, ``closed`` (the gates
forced past), ``gates`` (as ``agentsup gates``), ``step`` (handoff, switch, canary_start) and
its result (``handoff``: as ``agentsup handoff``; else ``active``, ``epoch``, ``reason``).
Refused: ``gates_closed``, ``reason_required``, ``deploy_in_progress``, and whatever the step
refuses (``already_active``, ``not_running``, ``handoff_aborted``, ``canary_in_progress``...).
"""

from __future__ import annotations

import argparse
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from supervisor.config import Color
from supervisor.control.commands.base import COLOR_CHOICES, Command, as_indented_json
from supervisor.control.context import Context


class Args(BaseModel):
    model_config = ConfigDict(extra="forbid")
    color: Color
    strategy: Literal["blue-green", "canary"] = "blue-green"
    force: bool = False
    reason: str | None = Field(None, max_length=500)


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("color", choices=COLOR_CHOICES)
    parser.add_argument(
        "--strategy",
        choices=["blue-green", "canary"],
        default="blue-green",
        help="blue-green: hand over and switch (default); canary: the canary's first step",
    )
    parser.add_argument(
        "--force", action="store_true", help="go past closed gates (needs --reason; recorded)"
    )
    parser.add_argument("--reason", help="why the gates are overridden (with --force)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def request(ns: argparse.Namespace) -> dict[str, Any]:
    if ns.force and not ns.reason:
        raise SystemExit("agentsup deploy: --force needs --reason TEXT (it is recorded)")
    return {"color": ns.color, "strategy": ns.strategy, "force": ns.force, "reason": ns.reason}


async def run(ctx: Context, args: Args) -> dict[str, Any]:
    return await ctx.deployment.deploy(args.color, args.strategy, args.force, args.reason, ctx.by)


def show(r: dict[str, Any], ns: argparse.Namespace) -> str:
    if ns.json:
        return as_indented_json(r)
    forced = f" (FORCED past {', '.join(r['closed'])})" if r["forced"] else ""
    if r["step"] == "handoff":
        h = r["handoff"]
        return (
            f"deployed {r['target']}{forced}: handed over, in charge at epoch {h['epoch']}; "
            f"nobody could act for {h['window_ms']:.3f} ms"
        )
    if r["step"] == "canary_start":
        return f"deployed {r['target']}{forced}: canary started at epoch {r['epoch']}"
    return f"deployed {r['target']}{forced}: in charge at epoch {r['epoch']}"


COMMAND = Command(
    "deploy",
    "check the deploy gates, then hand over and switch to COLOR (or start a canary)",
    Args,
    run,
    arguments=arguments,
    request=request,
    show=show,
)
