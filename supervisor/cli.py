"""``agentsup``: the daemon, the demo, and the operator's commands.

The control commands are not written here: each is one module of
:mod:`supervisor.control.commands` (its arguments, its request, its printing), and this file
only builds a subcommand per entry of ``COMMANDS`` and finds the daemon's socket for it
(``--socket``, ``-c FILE``, ``$AGENTSUP_SOCKET``, or the default path).

Exit codes (contract): 0 done; 1 refused by the daemon (the reason is printed); 2 usage;
69 daemon unreachable; 78 invalid configuration.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import orjson

from supervisor import __version__, config
from supervisor.control.commands import COMMANDS
from supervisor.errors import ConfigError, ControlUnreachable, Refused, SupervisorError

EX_OK, EX_REFUSED, EX_USAGE, EX_UNAVAILABLE, EX_CONFIG = 0, 1, 2, 69, 78
DEFAULT_SOCKET = Path("/run/agent-supervisor/control.sock")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="agentsup",
        description="Run two versions of a money-handling agent, fence who may act, roll back.",
    )
    p.add_argument("--version", action="version", version=f"agentsup {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sp = sub.add_parser("run", help="run the daemon in the foreground (systemd runs it so)")
    sp.add_argument("-c", "--config", type=Path, required=True)
    sp = sub.add_parser("demo", help="the whole story on the embedded Redis, no config needed")
    sp.add_argument("--keep", action="store_true", help="keep the demo's state directory")
    sp.add_argument(
        "story",
        nargs="?",
        choices=["rollback", "handoff", "canary", "ab"],
        default="rollback",
        help="rollback (default): a bug rolled back; handoff: the state handed over and back; "
        "canary: 5 %% of the capital first, a bug aborted by the judge; "
        "ab: crash at 2.0x against 3.0x, half the capital each, a winner's flag set",
    )
    sp = sub.add_parser("check-config", help="validate a config and print the effective one")
    sp.add_argument("-c", "--config", type=Path, required=True)

    # Every control command, from its own module: how to find the daemon, then its arguments.
    for command in COMMANDS.values():
        sp = sub.add_parser(command.name, help=command.help, description=command.help)
        where = sp.add_mutually_exclusive_group()
        where.add_argument("--socket", type=Path, help="the daemon's control socket")
        where.add_argument("-c", "--config", type=Path, help="find the socket in this config")
        command.arguments(sp)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            return _run(args.config)
        if args.command == "demo":
            from supervisor.daemon import Daemon
            from supervisor.demo.run import demo

            if args.story == "canary":
                from supervisor.demo import canary

                return int(canary.demo(Daemon, keep=args.keep))
            if args.story == "ab":
                from supervisor.demo import ab

                return int(ab.demo(Daemon, keep=args.keep))
            return int(demo(Daemon, keep=args.keep, story=args.story))
        if args.command == "check-config":
            return _check_config(args.config)
        return _control(args)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"agentsup: invalid configuration: {problem}", file=sys.stderr)
        return EX_CONFIG
    except ControlUnreachable as exc:
        print(f"agentsup: {exc}", file=sys.stderr)
        return EX_UNAVAILABLE
    except Refused as exc:
        print(f"agentsup: refused ({exc.code}): {exc}", file=sys.stderr)
        return EX_REFUSED
    except SupervisorError as exc:
        print(f"agentsup: {exc}", file=sys.stderr)
        return EX_REFUSED
    except KeyboardInterrupt:
        return 130


def _run(path: Path) -> int:
    cfg = config.load(path)
    from supervisor import daemon, logs

    logs.configure(cfg.supervisor.log_level)
    return daemon.run(cfg)


def _check_config(path: Path) -> int:
    cfg = config.load(path)
    sys.stdout.write(orjson.dumps(config.effective(cfg), option=orjson.OPT_INDENT_2).decode())
    sys.stdout.write("\n")
    print(f"agentsup: {path} is valid", file=sys.stderr)
    return EX_OK


def _socket(args: argparse.Namespace) -> Path:
    if args.socket is not None:
        return Path(args.socket)
    if args.config is not None:
        return config.load(args.config).supervisor.control_socket
    env = os.environ.get("AGENTSUP_SOCKET")
    return Path(env) if env else DEFAULT_SOCKET


def _control(args: argparse.Namespace) -> int:
    command = COMMANDS[args.command]
    return command.cli(command, args, _socket(args))


if __name__ == "__main__":
    raise SystemExit(main())
