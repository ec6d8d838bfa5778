"""``ab start|report|stop``: two values of one flag, both colors acting within their share of
the capital, compared with statistics that stay valid while you look (docs/ab.md).

- ``ab start --flag NAME --a VALUE --b VALUE [--split PCT] [--min-rounds N]``: blue (arm A)
  gets ``--a`` as its value of the flag, green (arm B) ``--b`` (through the flags, pushed and
  in their history, reason ``ab test``); then one flip into the A/B mode: both act, green
  within ``PCT`` % of the capital (``[ab] split``, 50), blue within the rest, both fenced at the
  permit. Both colors must run the same version.
- ``ab report [--json] [--html FILE]`` (or ``ab`` alone): per arm its rounds, mean return per
  unit staked and win rate with intervals; B − A with its always-valid interval; the verdict
  (none before ``--min-rounds`` an arm); the sample-ratio checks on rounds and stake.
  ``--html`` writes one self-contained page with the plot (written by the CLI, from the JSON).
- ``ab stop [--winner a|b]``: the winner's value becomes the global flag (history); both
  per-color values are removed; one flip back to blue-green, blue in charge.

Request::

    {"cmd": "ab", "args": {"op": "start", "flag": "crash_target", "a": "2.0", "b": "3.0",
                           "split": 50, "min_rounds": 200}}
    {"cmd": "ab", "args": {"op": "report"}}
    {"cmd": "ab", "args": {"op": "stop", "winner": "b"}}

Result: the report (``running``, ``flag``, ``split``, ``min_rounds``, ``arms`` {a, b: ``color``,
``value``, ``share``, ``rounds``, ``pnl``, ``stake``, ``return``, ``win_rate``},
``difference``, ``verdict``, ``why_not``, ``srm``, ``fence``, ``series``, ``saved``,
``ended``). Refused: ``ab_in_progress``, ``canary_in_progress``, ``shadow_in_progress``,
``handoff_in_progress``, ``candidate_in_charge``, ``nobody_in_charge``, ``versions_differ``,
``not_running``, ``direct_permits``, ``unknown_flag``, ``kill_switch``, ``bad_value``,
``bad_split``, ``no_ab``, ``redis_unavailable``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from supervisor.ab.html import render
from supervisor.control.commands.base import Command, operations, with_page
from supervisor.control.context import Context
from supervisor.errors import Refused


@runtime_checkable
class _WithAb(Protocol):
    """A deployment that runs A/B tests (``Deployment.ab_*``)."""

    async def ab_start(
        self, flag: str, a: str, b: str, split: float | None, min_rounds: int | None, by: str
    ) -> dict[str, Any]: ...

    async def ab_stop(self, winner: Literal["a", "b"] | None, by: str) -> dict[str, Any]: ...

    async def ab_report(self) -> dict[str, Any]: ...


class Args(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    op: Literal["start", "stop", "report"] = "report"
    flag: str | None = Field(None, max_length=200)
    a: str | None = Field(None, max_length=1000)
    b: str | None = Field(None, max_length=1000)
    split: float | None = Field(None, gt=0, lt=100)
    min_rounds: int | None = Field(None, ge=2, le=1_000_000_000)
    winner: Literal["a", "b"] | None = None


# the daemon's half -------------------------------------------------------------------------


async def run(ctx: Context, args: Args) -> dict[str, Any]:
    d = ctx.deployment
    if not isinstance(d, _WithAb):
        raise Refused("no_ab", "this deployment runs no A/B tests")
    if args.op == "start":
        if args.flag is None or args.a is None or args.b is None:
            raise Refused("bad_request", "start needs --flag, --a and --b")
        return await d.ab_start(args.flag, args.a, args.b, args.split, args.min_rounds, ctx.by)
    if args.op == "stop":
        return await d.ab_stop(args.winner, ctx.by)
    return await d.ab_report()


# the operator's half -----------------------------------------------------------------------


def arguments(parser: argparse.ArgumentParser) -> None:
    # `agentsup ab` alone is `agentsup ab report`.
    sub = operations(parser, "report", "the report as JSON", html=None)

    sp = sub("start", "blue (A) and green (B) each with a value of FLAG, each within its share")
    sp.add_argument("--flag", required=True, metavar="NAME", help="a flag of [flags]")
    sp.add_argument("--a", required=True, metavar="VALUE", help="arm A's (blue's) value")
    sp.add_argument("--b", required=True, metavar="VALUE", help="arm B's (green's) value")
    sp.add_argument("--split", type=float, metavar="PCT", help="B's percent ([ab] split, 50)")
    sp.add_argument("--min-rounds", type=int, metavar="N", help="no verdict before N rounds an arm")
    sp = sub("report", "per arm, B − A valid at every look, the verdict, the split's checks")
    sp.add_argument("--html", type=Path, metavar="FILE", help="also write a page with the plot")
    sp = sub("stop", "end the test; --winner: its value becomes the flag for everyone")
    sp.add_argument("--winner", choices=["a", "b"])


def request(ns: argparse.Namespace) -> dict[str, Any]:
    args: dict[str, Any] = {"op": ns.op}
    if ns.op == "start":
        args.update({"flag": ns.flag, "a": ns.a, "b": ns.b})
        if ns.split is not None:
            args["split"] = ns.split
        if ns.min_rounds is not None:
            args["min_rounds"] = ns.min_rounds
    elif ns.op == "stop" and ns.winner:
        args["winner"] = ns.winner
    return args


def _ci(ci: list[float] | None) -> str:
    return "" if not ci else f" [{ci[0]:+.4g}, {ci[1]:+.4g}]"


def show(r: dict[str, Any], ns: argparse.Namespace) -> str:
    ended = r.get("ended") or {}
    if r["running"]:
        state = "running"
    else:
        state = "ended" + (f", winner {ended['winner']}" if ended.get("winner") else "")
    lines = [
        f"A/B test of {r['flag']} (v{r['version']}): {state}, {r['seconds']:.0f} s; B has "
        f"{r['split']:g} % of the capital; no verdict before {r['min_rounds']} rounds an arm"
    ]
    for arm, x in r["arms"].items():
        lines.append(
            f"  {arm.upper()} {x['color']:<5} {r['flag']}={x['value']:<8} {x['rounds']:>7} rounds"
            f"  return/unit {x['return']['mean']:+.4f}{_ci(x['return']['ci'])}"
            f"  win {x['win_rate']['mean']:.1%}{_ci(x['win_rate']['ci'])}"
        )
    for metric, d in r["difference"].items():
        verdict = r["verdict"][metric]
        if d is None:
            lines.append(f"  B − A {metric}: too few rounds; {verdict}")
        else:
            lines.append(
                f"  B − A {metric}: {d['b_minus_a']:+.4f}{_ci(d['ci'])} (valid at every look, "
                f"p {d['p']:.3g}): {verdict}"
            )
    if r.get("why_not"):
        lines.append(f"  no verdict yet: {r['why_not']}")
    for what, m in r["srm"].items():
        if m is not None:
            lines.append(
                f"  sample ratio ({what}): observed {m['observed']:.4g}, expected "
                f"{m['expected']:.4g}, p {m['p']:.3g}" + (": BROKEN" if m["broken"] else ": ok")
            )
    if ended.get("winner"):
        lines.append(f"  {r['flag']} = {ended['value']} for everyone now")
    return "\n".join(lines)


COMMAND = Command(
    "ab",
    "A/B tests of a flag: start, report (valid at every look), stop [--winner a|b]",
    Args,
    run,
    arguments=arguments,
    request=request,
    show=show,
    cli=with_page(render),
)
