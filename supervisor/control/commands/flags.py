"""``flags list|get|set|unset|history``: the feature flags (docs/flags.md).

- ``flags list [--json]`` (or ``flags`` alone): every flag of ``[flags]``, its type and
  default, the values set (global, per color), each color's effective value and its source.
- ``flags get NAME [--json]``: one of them.
- ``flags set NAME VALUE [--color C] [--reason TEXT]``: written in the seed's encoding
  (``flag:NAME``, or the color's own key), logged in ``{ns}:flags:log``, pushed to both children.
  A value that does not fit the schema is refused (exit 1, naming why).
- ``flags unset NAME [--color C] [--reason TEXT]``: the next one down applies (the global
  value, then the default).
- ``flags history [NAME] [--count N] [--json]``: the latest changes, newest first, with who
  made them (``uid:N`` for agentsup, ``redis`` for a change made in Redis directly).

Request::

    {"cmd": "flags", "args": {"op": "list"}}
    {"cmd": "flags", "args": {"op": "get", "name": "game"}}
    {"cmd": "flags", "args": {"op": "set", "name": "game", "value": "dice", "color": "green",
                              "reason": "try dice"}}
    {"cmd": "flags", "args": {"op": "unset", "name": "game", "color": "green"}}
    {"cmd": "flags", "args": {"op": "history", "name": "game", "count": 20}}

Result: ``list``: ``{"flags": [...]}``; ``get``: one flag (``name``, ``type``, ``default``,
``global``, ``colors``, ``effective``, ``invalid``...); ``set``/``unset``: ``name``, ``color``,
``old``, ``new`` (raw text, null when none); ``history``: ``{"entries": [...]}``.
Refused: ``unknown_flag``, ``bad_value``, ``kill_switch_global``, ``redis_unavailable``,
``bad_request``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, Literal

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


class Args(BaseModel):
    model_config = ConfigDict(extra="forbid")
    op: Literal["list", "get", "set", "unset", "history"]
    name: str | None = Field(None, min_length=1, max_length=100)
    value: str | None = Field(None, max_length=10_000)
    color: Color | None = None
    reason: str | None = Field(None, max_length=500)
    count: int = Field(20, ge=1, le=1000)


# the daemon's half -------------------------------------------------------------------------


async def run(ctx: Context, args: Args) -> dict[str, Any]:
    d = ctx.deployment
    if args.op == "list":
        return {"flags": d.flags_list()}
    if args.op == "history":
        return {"entries": await d.flags_history(args.name, args.count)}
    if args.name is None:
        raise Refused("bad_request", f"{args.op} needs a flag name")
    if args.op == "get":
        return d.flags_get(args.name)
    reason = args.reason or "by an operator"
    if args.op == "set":
        if args.value is None:
            raise Refused("bad_request", "set needs a value")
        return await d.flags_set(args.name, args.value, args.color, reason, ctx.by)
    return await d.flags_unset(args.name, args.color, reason, ctx.by)


# the operator's half -----------------------------------------------------------------------


def arguments(parser: argparse.ArgumentParser) -> None:
    sub = operations(parser, "list", "the result as JSON")

    sub("list", "every flag: type, default, values set, each color's effective value")
    sp = sub("get", "one flag")
    sp.add_argument("name")
    sp = sub("set", "set a flag (for one color with --color), pushed to both children")
    sp.add_argument("name")
    sp.add_argument("value")
    sp.add_argument("--color", choices=COLOR_CHOICES, help="for this color only")
    sp.add_argument("--reason", help="recorded in the history")
    sp = sub("unset", "remove a flag's value (the global, or one color's with --color)")
    sp.add_argument("name")
    sp.add_argument("--color", choices=COLOR_CHOICES, help="this color's own value")
    sp.add_argument("--reason", help="recorded in the history")
    sp = sub("history", "the latest changes, newest first")
    sp.add_argument("name", nargs="?")
    sp.add_argument("--count", type=int, default=20, help="how many (default 20)")


def request(ns: argparse.Namespace) -> dict[str, Any]:
    args: dict[str, Any] = {"op": ns.op}
    for field in ("name", "value", "color", "reason"):
        if getattr(ns, field, None) is not None:
            args[field] = getattr(ns, field)
    if ns.op == "history":
        args["count"] = ns.count
    return args


def cli(command: Command[Any], ns: argparse.Namespace, socket: Path) -> int:
    result = send(socket, command.name, request(ns))
    print(as_indented_json(result) if ns.json else show(result, ns))
    return 0


def show(r: dict[str, Any], ns: argparse.Namespace) -> str:
    if ns.op == "list":
        lines = [f"{'NAME':<20}{'TYPE':<8}{'BLUE':>14}{'GREEN':>14}  SOURCE (blue/green)"]
        lines += [_row(f) for f in r["flags"]] or ["no flags in [flags]"]
        return "\n".join(lines)
    if ns.op == "get":
        return _one(r)
    if ns.op == "history":
        return "\n".join(_entry(e) for e in r["entries"]) or "no changes recorded"
    where = f" for {r['color']}" if r["color"] else ""
    if ns.op == "set":
        return f"flag {r['name']}{where}: {r['old']!s} -> {r['new']}"
    return f"flag {r['name']}{where} unset (was {r['old']})"


def _row(f: dict[str, Any]) -> str:
    eff = f["effective"]
    blue, green = eff["blue"], eff["green"]
    bad = "  INVALID in Redis: " + ", ".join(f["invalid"]) if f["invalid"] else ""
    return (
        f"{f['name']:<20}{f['type']:<8}{blue['value']!s:>14}{green['value']!s:>14}"
        f"  {blue['source']}/{green['source']}{bad}"
    )


def _one(f: dict[str, Any]) -> str:
    lines = [f"{f['name']} ({f['type']}{', kill switch' if f['kill_switch'] else ''})"]
    if f["description"]:
        lines.append(f"  {f['description']}")
    lines.append(f"  default {f['default']!s}; global {f['global']!s}")
    for color, e in f["effective"].items():
        lines.append(f"  {color}: {e['value']!s} ({e['source']})")
    for key, bad in f["invalid"].items():
        lines.append(f"  INVALID {key} = {bad['raw']!r}: {bad['why']} (ignored)")
    return "\n".join(lines)


def _entry(e: dict[str, Any]) -> str:
    try:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(e.get("at", 0))))
    except ValueError:
        when = "?"
    where = f" [{e['color']}]" if e.get("color") else ""
    new = e.get("new") if e.get("op") != "unset" else "(unset)"
    return (
        f"{when} {e.get('name')}{where}: {e.get('old') or '(none)'} -> {new}"
        f"  by {e.get('who')} ({e.get('reason')})"
    )


COMMAND = Command(
    "flags",
    "feature flags: list, get, set, unset, history",
    Args,
    run,
    arguments=arguments,
    request=request,
    show=show,
    cli=cli,
)
