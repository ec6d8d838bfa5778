"""``canary start|set|promote|abort|status``: capital to the candidate step by step, the split
enforced at the permit (docs/canary.md).

- ``canary start COLOR [--steps 5,20,50,100]``: COLOR gets the first step's share; stable keeps
  the rest and the active key. Steps default to ``[canary] steps``.
- ``canary set PCT``: that share now, as a new step (its stakes count from zero); 100 promotes.
- ``canary promote [--full]``: the next step now; ``--full``: straight to 100 % (the candidate
  in charge alone, on probation, as after a switch).
- ``canary abort [--reason TEXT]``: stable takes the whole capital back now. An operator's abort
  rejects nothing; the judge's rejects the candidate's version.
- ``canary status [--json]`` (or ``canary`` alone): the step, the allocation against the
  stake actually taken per color, the judge's table; or how the last canary ended.

Each change is one flip: the epoch rises with it, so a permit asked under the old split is
refused.

Request::

    {"cmd": "canary", "args": {"op": "start", "color": "green", "steps": [5, 20, 50, 100]}}
    {"cmd": "canary", "args": {"op": "set", "percent": 20}}
    {"cmd": "canary", "args": {"op": "promote", "full": false}}
    {"cmd": "canary", "args": {"op": "abort", "reason": "stakes look off"}}
    {"cmd": "canary", "args": {"op": "status"}}

Result: for a change, ``active``, ``epoch``, ``mode``, ``candidate``, ``percent`` (the
candidate's share now; 100 once promoted, 0 once aborted), ``reason``; for ``status``, ``mode``,
``canary`` (null when none runs: ``candidate``, ``step``, ``steps``, ``percent``,
``allocation``, ``stakes``, ``share``, ``permits``, ``rounds``, ``state``, ``judge``), ``last``.
Refused: ``no_canary``, ``canary_in_progress``, ``candidate_in_charge``, ``already_active``,
``not_running``, ``bad_steps``, ``direct_permits``, ``nobody_in_charge``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from supervisor.config import Color
from supervisor.control.client import request as send
from supervisor.control.commands.base import (
    COLOR_CHOICES,
    Command,
    as_indented_json,
    operations,
)
from supervisor.control.context import Context
from supervisor.errors import Refused

if TYPE_CHECKING:
    from supervisor.rollout import Change


class Args(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    op: Literal["start", "set", "promote", "abort", "status"]
    color: Color | None = None
    steps: list[float] | None = Field(None, max_length=100)
    percent: float | None = Field(None, gt=0, le=100)
    full: bool = False
    reason: str | None = Field(None, max_length=500)


# the daemon's half -------------------------------------------------------------------------


async def run(ctx: Context, args: Args) -> dict[str, Any]:
    d = ctx.deployment
    if args.op == "status":
        return await d.canary_status()
    if args.op == "start":
        if args.color is None:
            raise _bad("start needs a color")
        change = await d.canary_start(args.color, args.steps, ctx.by)
    elif args.op == "set":
        if args.percent is None:
            raise _bad("set needs a percent")
        change = await d.canary_set(args.percent, ctx.by)
    elif args.op == "promote":
        change = await d.canary_promote(args.full, ctx.by)
    else:
        reason = f"canary_abort: {args.reason}" if args.reason else "canary_abort: by an operator"
        change = await d.canary_abort(reason, ctx.by, time.monotonic())
    return await _changed(ctx, change)


def _bad(message: str) -> Refused:
    return Refused("bad_request", message)


async def _changed(ctx: Context, change: Change) -> dict[str, Any]:
    status = await ctx.deployment.canary_status()
    canary = status["canary"]
    if canary is not None:
        percent: float = canary["percent"]
    else:
        percent = 100.0 if change.reason.startswith(("canary_promote", "switch")) else 0.0
    return {
        "active": change.active.value if change.active else None,
        "epoch": change.epoch,
        "mode": status["mode"],
        "candidate": canary["candidate"] if canary is not None else None,
        "percent": percent,
        "reason": change.reason,
    }


# the operator's half -----------------------------------------------------------------------


def arguments(parser: argparse.ArgumentParser) -> None:
    # `agentsup canary` alone is `agentsup canary status`.
    sub = operations(parser, "status", "the result as JSON")

    sp = sub("start", "COLOR gets the first step's share of the capital")
    sp.add_argument("color", choices=COLOR_CHOICES)
    sp.add_argument("--steps", type=_steps, help="percents, e.g. 5,20,50,100 (the last 100)")
    sp = sub("set", "the candidate's share, in percent, now (100: promoted)")
    sp.add_argument("percent", type=float)
    sp = sub("promote", "the next step now")
    sp.add_argument("--full", action="store_true", help="straight to 100 %% (in charge alone)")
    sp = sub("abort", "stable takes the whole capital back now")
    sp.add_argument("--reason", help="recorded with the flip")
    sub("status", "the step, the split against the stakes taken, the judge's table")


def _steps(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of percents") from None


def request(ns: argparse.Namespace) -> dict[str, Any]:
    args: dict[str, Any] = {"op": ns.op}
    if ns.op == "start":
        args["color"] = ns.color
        if ns.steps:
            args["steps"] = ns.steps
    elif ns.op == "set":
        args["percent"] = ns.percent
    elif ns.op == "promote":
        args["full"] = ns.full
    elif ns.op == "abort" and ns.reason:
        args["reason"] = ns.reason
    return args


def cli(command: Command[Any], ns: argparse.Namespace, socket: Path) -> int:
    if ns.op == "set" and not 0 < ns.percent <= 100:
        print("agentsup: canary set: PCT must be in (0, 100]", file=sys.stderr)
        return 2
    result = send(socket, command.name, request(ns))
    print(as_indented_json(result) if ns.json else show(result, ns))
    return 0


def show(r: dict[str, Any], ns: argparse.Namespace) -> str:
    if ns.op == "status":
        return show_status(r)
    if r["mode"] == "canary":
        return (
            f"canary: {r['candidate']} has {r['percent']:g}% of the capital, {r['active']} the "
            f"rest, at epoch {r['epoch']} ({r['reason']})"
        )
    return f"canary over: {r['active']} is in charge at epoch {r['epoch']} ({r['reason']})"


def show_status(r: dict[str, Any]) -> str:
    """``canary status`` in words and a table."""
    c = r["canary"]
    if c is None:
        lines = [f"no canary running (mode {r['mode']})"]
        last = r.get("last")
        if last and last.get("ended"):
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(last["ended_at"] or 0))
            lines.append(f"the last one ended at {when}: {last['ended']}")
        return "\n".join(lines)
    steps = " -> ".join(
        f"[{p:g}%]" if i + 1 == c["step"] else f"{p:g}%" for i, p in enumerate(c["steps"])
    )
    age = time.time() - c["since"]
    lines = [
        f"canary: {c['candidate']} v{c['version']} against {c['stable']}, step {c['step']} of "
        f"{len(c['steps'])}: {steps}",
        f"  {c['percent']:g}% for {age:.0f} s; state {c['state']}; judged at "
        f"{c['min_rounds']} candidate rounds and {c['min_seconds']:g} s "
        f"(auto_promote {'on' if c['auto_promote'] else 'off'})",
        "",
        f"  {'COLOR':<7}{'ALLOCATION':>11}{'STAKED':>14}{'SHARE':>9}{'PERMITS':>9}{'ROUNDS':>8}",
    ]
    for color in ("blue", "green"):
        staked = c["stakes"].get(color)
        share = c["share"].get(color)
        lines.append(
            f"  {color:<7}{c['allocation'][color]:>11.1%}"
            f"{'-' if staked is None else f'{staked:,.2f}':>14}"
            f"{'-' if share is None else f'{share:.1%}':>9}"
            f"{c['permits'][color]:>9}{c['rounds'][color]:>8}"
        )
    judge = c.get("judge")
    if judge is None:
        lines.append("\n  the judge has not looked yet")
        return "\n".join(lines)
    lines += [
        "",
        f"  judge ({judge['look']} look): {judge['verdict']}",
        f"  {'METRIC':<12}{'STABLE':>12}{'CANDIDATE':>12}{'EFFECT':>9}{'P':>10}{'N':>12}  VERDICT",
    ]
    for m in judge["metrics"]:
        lines.append(
            f"  {m['metric']:<12}{_num(m['stable']):>12}{_num(m['candidate']):>12}"
            f"{m['effect']:>+9.2f}{m['p']:>10.2g}{m['n_candidate']:>6}/{m['n_stable']:<5}"
            f"  {m['verdict']}"
        )
    return "\n".join(lines)


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.4g}"


COMMAND = Command(
    "canary",
    "canary by capital fraction: start, set, promote, abort, status",
    Args,
    run,
    arguments=arguments,
    request=request,
    show=show,
    cli=cli,
)
