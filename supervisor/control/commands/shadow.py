"""``shadow start|stop|report``: the standby decides on the live inputs, never acts
(docs/shadow.md).

- ``shadow start COLOR``: COLOR (the standby, RUNNING, answering mirrors) is told the role
  ``shadow``; every decision of the color in charge is mirrored to it and compared.
- ``shadow stop``: the mirrors stop, COLOR is told ``standby`` again; its report stays.
- ``shadow report [--json] [--html FILE]`` (or ``shadow`` alone): per kind and field the
  divergence rate against the noise floor, the largest divergences with their inputs, the
  would-be PnL against the real one, the latencies; ``--html`` writes one self-contained page
  with its plots (written by the CLI, from the JSON report).

Request::

    {"cmd": "shadow", "args": {"op": "start", "color": "green"}}
    {"cmd": "shadow", "args": {"op": "stop"}}
    {"cmd": "shadow", "args": {"op": "report"}}

Result: the report (``running``, ``color``, ``live``, ``mirrors``, ``floor``, ``kinds``,
``reported``, ``top``, ``pnl``, ``latency``, ``series``...; see docs/shadow.md). Refused:
``shadow_in_progress``, ``not_blue_green``, ``nobody_in_charge``, ``is_active``,
``not_running``, ``no_mirror``, ``no_shadow``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict

from supervisor.config import Color
from supervisor.control.commands.base import (
    COLOR_CHOICES,
    Command,
    operations,
    with_page,
)
from supervisor.control.context import Context
from supervisor.errors import Refused
from supervisor.shadow.html import render


@runtime_checkable
class _WithShadow(Protocol):
    """A deployment that runs a shadow (``Deployment.shadow_*``)."""

    async def shadow_start(self, color: Color, by: str) -> dict[str, Any]: ...

    async def shadow_stop(self, by: str) -> dict[str, Any]: ...

    def shadow_report(self) -> dict[str, Any]: ...


class Args(BaseModel):
    model_config = ConfigDict(extra="forbid")
    op: Literal["start", "stop", "report"] = "report"
    color: Color | None = None


# the daemon's half -------------------------------------------------------------------------


async def run(ctx: Context, args: Args) -> dict[str, Any]:
    d = ctx.deployment
    if not isinstance(d, _WithShadow):
        raise Refused("no_shadow", "this deployment runs no shadow")
    if args.op == "start":
        if args.color is None:
            raise Refused("bad_request", "start needs a color")
        return await d.shadow_start(args.color, ctx.by)
    if args.op == "stop":
        return await d.shadow_stop(ctx.by)
    return d.shadow_report()


# the operator's half -----------------------------------------------------------------------


def arguments(parser: argparse.ArgumentParser) -> None:
    # `agentsup shadow` alone is `agentsup shadow report`.
    sub = operations(parser, "report", "the report as JSON", html=None)

    sp = sub("start", "COLOR (the standby) decides on the live inputs, never acts")
    sp.add_argument("color", choices=COLOR_CHOICES)
    sub("stop", "end the shadow; COLOR stands by again")
    sp = sub("report", "divergences against the noise floor, would-be PnL, latency")
    sp.add_argument("--html", type=Path, metavar="FILE", help="also write a page with plots")


def request(ns: argparse.Namespace) -> dict[str, Any]:
    args: dict[str, Any] = {"op": ns.op}
    if ns.op == "start":
        args["color"] = ns.color
    return args


def show(r: dict[str, Any], ns: argparse.Namespace) -> str:
    state = "running" if r["running"] else f"ended ({r['stop_reason']})"
    m = r["mirrors"]
    lines = [
        f"shadow {r['color']} v{r['version']} beside {r['live']} v{r['live_version']}: {state}, "
        f"{r['seconds']:.0f} s",
        f"  mirrors: {m['answered']} answered, {m['dropped']} dropped, {m['timeout']} timed "
        f"out, {m['error']} failed, of {r['live_decisions']} live decisions",
        f"  floor: {r['floor']}",
        f"  compared {r['compared']}, divergent {r['diverged']}; above the floor: "
        f"{', '.join(r['reported']) or 'none'}",
    ]
    if r["executions"]:
        lines.append(f"  EXECUTIONS BY THE SHADOW: {r['executions']} (each alerted; none granted)")
    if ns.op == "start" or (ns.op == "stop" and not r["compared"]):
        return "\n".join(lines)
    rows = [(k, f) for k in r["kinds"] for f in k["fields"]]
    if rows:
        lines += ["", f"  {'KIND':<14}{'FIELD':<20}{'RATE':>8}{'FLOOR':>8}{'N':>8}  REPORTED"]
        for k, f in rows:
            lines.append(
                f"  {k['kind'][:13]:<14}{f['field'][:19]:<20}{_pct(f['rate']):>8}"
                f"{_pct(f['floor_rate']):>8}{k['compared']:>8}  {'yes' if f['reported'] else 'no'}"
            )
    p = r["pnl"]
    if p["scoring"] and p["rounds"]:
        real, would, gap = p["real"], p["would_be"], p["difference"]
        ci = gap["ci95"]
        lines += [
            "",
            f"  PnL over {p['rounds']} rounds: real {real['total']:.4g}, would-be "
            f"{would['total']:.4g}; per round would-be − real {gap['mean']:+.4g}"
            + (f" (95 % CI {ci[0]:+.4g} .. {ci[1]:+.4g})" if ci else ""),
        ]
        av = gap.get("always_valid_ci95")
        if av:
            lines.append(f"  valid at every look: {av[0]:+.4g} .. {av[1]:+.4g}: {gap['verdict']}")
        det = p.get("detector")
        if det is not None:
            fired = det["fired"]
            lines.append(
                f"  pnl_sigma on the would-be PnL: would have rolled it back at round "
                f"{fired['round']}: {fired['message']}"
                if fired
                else f"  pnl_sigma on the would-be PnL: quiet over {det['rounds']} rounds"
            )
    elif not p["scoring"]:
        lines.append("  PnL: the shadow does not score outcomes (no on_mirror_outcome hook)")
    lat = r["latency"]["shadow_mirror"]
    if lat["n"]:
        lines.append(
            f"  shadow mirror round trip: p50 {lat['p50_ms']:.3g} ms, p99 {lat['p99_ms']:.3g} ms"
        )
    for d in r["top"][:5]:
        fields = ", ".join(f"{f['field']} {f['live']!r} → {f['shadow']!r}" for f in d["fields"])
        lines.append(f"  {d['kind']} {d['decision_id']}: {fields}")
    return "\n".join(lines)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


COMMAND = Command(
    "shadow",
    "shadow mode: start COLOR, stop, report (divergences, would-be PnL)",
    Args,
    run,
    arguments=arguments,
    request=request,
    show=show,
    cli=with_page(render),
)
