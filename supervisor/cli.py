"""``agentsup``: the daemon, the demo, and the operator's commands.

Exit codes (contract): 0 done; 1 refused by the daemon (the reason is printed); 2 usage;
69 daemon unreachable; 78 invalid configuration.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from supervisor import __version__, config
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

    def control(name: str, help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help)
        where = sp.add_mutually_exclusive_group()
        where.add_argument("--socket", type=Path, help="the daemon's control socket")
        where.add_argument("-c", "--config", type=Path, help="find the socket in this config")
        return sp

    sp = sub.add_parser("run", help="run the daemon in the foreground (systemd runs it so)")
    sp.add_argument("-c", "--config", type=Path, required=True)
    sp = sub.add_parser("demo", help="the whole story on the embedded Redis, no config needed")
    sp.add_argument("--keep", action="store_true", help="keep the demo's state directory")
    sp = sub.add_parser("check-config", help="validate a config and print the effective one")
    sp.add_argument("-c", "--config", type=Path, required=True)

    sp = control("status", "who acts, the epoch, both children, the latest flips")
    sp.add_argument("--json", action="store_true", help="print the status object as JSON")
    sp.add_argument("--watch", action="store_true", help="a live view (Ctrl-C to leave)")
    sp = control("switch", "put COLOR in charge (as candidate, on probation)")
    sp.add_argument("color", choices=["blue", "green"])
    control("confirm", "make the candidate in charge the stable color")
    sp = control("rollback", "return control to the stable color now")
    sp.add_argument("--reason", help="recorded with the flip")
    sp = control("restart", "start a FATAL color again")
    sp.add_argument("color", choices=["blue", "green"])
    control("shutdown", "stop the daemon (as SIGTERM does)")
    sp = control("triggers", "every trigger: value against threshold, state, last fired")
    sp.add_argument("--json", action="store_true", help="print the triggers as JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            return _run(args.config)
        if args.command == "demo":
            from supervisor.demo.run import demo

            return int(demo(keep=args.keep))
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
    from supervisor.control.client import request

    path = _socket(args)
    cmd = args.command
    if cmd == "status":
        if args.watch:
            from supervisor.control.watch import watch

            return int(watch(path))
        result = request(path, "status")
        if args.json:
            print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
        else:
            print(render_status(result))
        return EX_OK
    if cmd == "triggers":
        result = request(path, "triggers")
        if args.json:
            print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
        else:
            print(render_triggers(result))
        return EX_OK
    payload: dict[str, Any] = {}
    if cmd in ("switch", "restart"):
        payload["color"] = args.color
    if cmd == "rollback" and args.reason:
        payload["reason"] = args.reason
    result = request(path, cmd, payload)
    print(_describe(cmd, result))
    return EX_OK


def _describe(cmd: str, r: dict[str, Any]) -> str:
    if cmd == "switch":
        return f"switched: {r['active']} is in charge at epoch {r['epoch']} (was {r['previous']})"
    if cmd == "confirm":
        return f"confirmed: {r['stable']} ({r['version']}) is stable"
    if cmd == "rollback":
        return f"rolled back: {r['active']} is in charge at epoch {r['epoch']} ({r['reason']})"
    if cmd == "restart":
        return f"restarting {r['color']}"
    if cmd == "shutdown":
        return "the daemon is stopping"
    return orjson.dumps(r).decode()


def span(seconds: float | None) -> str:
    """A duration the way the status table and the live view show it: 4.2s, 37s, 5m02s."""
    if seconds is None:
        return "-"
    s = int(seconds)
    if seconds < 10:
        return f"{seconds:.1f}s"
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def render_status(st: dict[str, Any]) -> str:
    """The human table of ``agentsup status``."""
    lines = [
        f"{st['name']}  active: {st['active'] or 'NONE'}  epoch: {st['epoch']}  "
        f"mode: {st['mode']}  redis: {st['redis']}",
    ]
    cand = st.get("candidate")
    probation = ""
    if cand and st.get("probation_since"):
        on = span(time.time() - st["probation_since"])
        window = st.get("probation_s") or 0
        probation = f" (on probation {on}" + (f" of {span(window)})" if window else ")")
    lines.append(f"stable: {st['stable']}  candidate: {cand or '-'}{probation}")
    if st.get("rejected"):
        rej = ", ".join(f"{c} {v}" for c, v in st["rejected"].items())
        lines.append(f"rejected (no automatic promotion): {rej}")
    if st.get("pending_rollback"):
        lines.append(f"PENDING ROLLBACK (Redis unreachable): {st['pending_rollback']}")
    lines.append("")
    header = ("COLOR", "ROLE", "VERSION", "STATE", "PID", "UPTIME", "RESTARTS", "PROTOCOL")
    rows = [header]
    for color in ("blue", "green"):
        c = st["children"][color]
        rows.append(
            (
                color,
                c["role"],
                c["version"],
                c["state"],
                str(c["pid"] or "-"),
                span(c["uptime_s"]),
                str(c["restarts"]),
                "yes" if c["protocol"] else "no",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    if st.get("flips"):
        lines += ["", "Recent flips (newest first):"]
        for f in st["flips"]:
            at = time.strftime("%H:%M:%S", time.localtime(float(f.get("at", 0))))
            lines.append(
                f"  {at}  epoch {f.get('epoch'):>4}  {f.get('from') or '-':>5} -> "
                f"{f.get('to') or '-':<5}  {f.get('reason')}  (by {f.get('by')})"
            )
    return "\n".join(lines)


def _num(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def render_triggers(triggers: dict[str, Any]) -> str:
    """The human table of ``agentsup triggers``."""
    header = ("TRIGGER", "SEVERITY", "THRESHOLD", "COLOR", "VALUE", "STATE", "LAST FIRED")
    rows = [header]
    for name, t in triggers.items():
        for color in ("blue", "green"):
            c = t["colors"][color]
            fired = c.get("last_fired")
            when = time.strftime("%H:%M:%S", time.localtime(fired)) if fired else "-"
            state = c.get("state", "ok") if t.get("enabled", True) else "disabled"
            rows.append(
                (
                    name if color == "blue" else "",
                    t["severity"] if color == "blue" else "",
                    _num(t.get("threshold")) if color == "blue" else "",
                    color,
                    _num(c.get("value")),
                    str(state),
                    when,
                )
            )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join(
        "  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


if __name__ == "__main__":
    raise SystemExit(main())
