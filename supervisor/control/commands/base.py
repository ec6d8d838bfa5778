"""What a control command is: both of its halves, the operator's and the daemon's, in one value.

A command lives in one module, as in circus: reading that one file tells what the operator
types, what goes over the socket, what the daemon does and what the operator sees. Its
docstring documents its message (request, result, refusals). The module declares:

* ``Args``: the pydantic model of the request's ``args``, validated by the server before
  anything runs (``extra="forbid"``: a misspelt argument is a ``bad_request``, not ignored);
* ``async def run(ctx, args)``: the daemon's half. It sees a
  :class:`~supervisor.control.context.Context` (the deployment it commands, the way to ask
  for a stop, and who asks), never the daemon, and refuses by raising
  :class:`~supervisor.errors.Refused` with a stable code;
* the operator's half, each part optional: ``arguments`` adds its CLI arguments to its
  subparser, ``request`` turns the parsed namespace into the request's ``args``, ``show``
  turns the result into what is printed, and ``cli`` replaces the whole round (one request,
  one print) for a command that does more (``status --watch``);
* ``COMMAND = Command(...)``, which ties them together under the name that goes over the
  socket; the registry (``COMMANDS`` in :mod:`supervisor.control.commands`) lists it.

Adding a command is that one file and one line in the registry. A ``pause`` command, say::

    '''``pause COLOR``: ... Request: ``{"cmd": "pause", "args": {"color": "green"}}``...'''

    class Args(BaseModel):
        model_config = ConfigDict(extra="forbid")
        color: Color

    def arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("color", choices=COLOR_CHOICES)

    def request(ns: argparse.Namespace) -> dict[str, Any]:
        return {"color": ns.color}

    async def run(ctx: Context, args: Args) -> dict[str, Any]:
        await ctx.deployment.pause(args.color)  # a new DeploymentView method
        return {"color": args.color.value}

    def show(result: dict[str, Any], ns: argparse.Namespace) -> str:
        return f"paused {result['color']}"

    COMMAND = Command("pause", "stop COLOR taking new actions", Args, run,
                      arguments=arguments, request=request, show=show)

and ``pause.COMMAND,`` in ``COMMANDS``. The CLI's subcommand, its ``--socket``/``-c``, the
server's validation, error codes and metrics come from there.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import orjson
from pydantic import BaseModel

from supervisor.config import Color
from supervisor.control.client import request as send
from supervisor.control.context import Context

A = TypeVar("A", bound=BaseModel)

# What argparse offers for a COLOR argument, in Color's order.
COLOR_CHOICES = [c.value for c in Color]


def no_arguments(parser: argparse.ArgumentParser) -> None:
    """The command takes no CLI arguments beyond ``--socket``/``-c``."""


def operations(
    parser: argparse.ArgumentParser, default: str, json_help: str, **defaults: Any
) -> Callable[[str, str], argparse.ArgumentParser]:
    """A command with operations (``canary start``, ``flags set``...): returns ``sub(name,
    help)``, which adds one and gives it ``--socket``/``-c`` (also after the operation: the
    one given before it is kept) and ``--json``. The command alone is ``default``."""
    ops = parser.add_subparsers(dest="op", metavar="OP")
    parser.set_defaults(op=default, json=False, **defaults)

    def sub(name: str, help: str) -> argparse.ArgumentParser:
        sp = ops.add_parser(name, help=help, description=help)
        where = sp.add_mutually_exclusive_group()
        where.add_argument("--socket", type=Path, default=argparse.SUPPRESS)
        where.add_argument("-c", "--config", type=Path, default=argparse.SUPPRESS)
        sp.add_argument("--json", action="store_true", help=json_help)
        return sp

    return sub


def with_page(
    render: Callable[[Any], str],
) -> Callable[[Command[Any], argparse.Namespace, Path], int]:
    """The usual round, and with ``--html FILE`` the result also written as one page by
    ``render`` (the shadow's and the A/B test's reports)."""

    def cli(command: Command[Any], ns: argparse.Namespace, socket: Path) -> int:
        result = send(socket, command.name, command.request(ns))
        page: Path | None = getattr(ns, "html", None)
        if page is not None:
            try:
                page.write_text(render(result), encoding="utf-8")
            except OSError as exc:
                print(f"agentsup: {command.name}: cannot write {page}: {exc}", file=sys.stderr)
                return 1
        if ns.json:
            print(as_indented_json(result))
            return 0
        print(command.show(result, ns))
        if page is not None:
            print(f"written to {page}")
        return 0

    return cli


def no_request_args(ns: argparse.Namespace) -> dict[str, Any]:
    """The command sends no ``args``."""
    return {}


def as_json(result: Any, ns: argparse.Namespace) -> str:
    """The result as one line of JSON: for a command with no words of its own."""
    return orjson.dumps(result).decode()


def as_indented_json(result: Any) -> str:
    """What ``--json`` prints: the result, indented, for people and for ``jq`` alike."""
    return orjson.dumps(result, option=orjson.OPT_INDENT_2).decode()


def ask(command: Command[Any], ns: argparse.Namespace, path: Path) -> int:
    """The usual operator's round: one request to the daemon on ``path``, its result printed.

    Returns 0; a refusal or an unreachable daemon raises (``Refused``, ``ControlUnreachable``)
    and the CLI turns that into its exit code (1 or 69) and message."""
    result = send(path, command.name, command.request(ns))
    print(command.show(result, ns))
    return 0


@dataclass(frozen=True, slots=True)
class Command(Generic[A]):
    """One control command, both halves (see the module's docstring)."""

    name: str  # the ``cmd`` on the socket and the CLI's subcommand
    help: str  # the CLI's help line and the subcommand's description
    Args: type[A]
    run: Callable[[Context, A], Awaitable[Any]]
    arguments: Callable[[argparse.ArgumentParser], None] = no_arguments
    request: Callable[[argparse.Namespace], dict[str, Any]] = no_request_args
    show: Callable[[Any, argparse.Namespace], str] = as_json
    cli: Callable[[Command[Any], argparse.Namespace, Path], int] = ask
