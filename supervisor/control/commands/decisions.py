"""``decisions tail|query|verify|replay``: the versioned decision log (docs/decisions.md).

``tail``, ``query`` and ``verify`` only read files, so they run in the CLI's own process,
with or without a daemon: an audit after a crash must not need the daemon it audits, and a
query over a large log must not load it. The log is found by ``--path``, else in the config
of ``-c FILE``, else by asking the daemon on the socket where it writes (``where``).
``verify`` also asks a reachable daemon for the head it has written (``head``), so that a log
cut short at a line boundary is found too. ``replay`` needs the daemon: it sends the logged
inputs to the standby child as mirrors.

Request (the daemon's half)::

    {"cmd": "decisions", "args": {"op": "where"}}
    {"cmd": "decisions", "args": {"op": "head"}}
    {"cmd": "decisions", "args": {"op": "replay", "color": "green", "since": 1767225600.0,
                                  "until": null, "of": "other", "version": null,
                                  "limit": 10000}}

Results: ``where`` → ``path``, ``enabled``; ``head`` → ``path``, ``seq``, ``hash`` (the last
record written), ``synced_seq``; ``replay`` → the replay report (``decisions``, ``same``,
``different``, ``failed``, ``differences``...). Refused: ``decision_log_disabled``,
``is_active`` (replay goes to the standby), ``not_running``, ``no_mirror`` (the child does not
answer mirrors), ``nothing_to_replay``.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from pathlib import Path
from typing import Any, Final, Literal, Protocol, runtime_checkable

import orjson
from pydantic import BaseModel, ConfigDict, Field

from supervisor import config as config_module
from supervisor.config import Color
from supervisor.control.client import request as send
from supervisor.control.commands.base import COLOR_CHOICES, Command, as_indented_json
from supervisor.control.context import Context
from supervisor.decisions import DecisionLog
from supervisor.decisions.query import (
    Filter,
    QueryError,
    follow,
    last_records,
    parse_epochs,
    parse_time,
    python_query,
    query,
    render_table,
    row_line,
)
from supervisor.decisions.replay import replay
from supervisor.decisions.verify import Report, verify
from supervisor.errors import ControlUnreachable, Refused, SupervisorError

MAX_REPLAY: Final = 100_000
REPLAY_TIMEOUT_S: Final = 600.0
_ROTATED = re.compile(r"\.\d{12,}-\d{12,}\.")


@runtime_checkable
class _WithDecisionLog(Protocol):
    """A deployment that writes a decision log (``Deployment.decisions``)."""

    decisions: DecisionLog


class Args(BaseModel):
    model_config = ConfigDict(extra="forbid")
    op: Literal["where", "head", "replay"] = "where"
    color: Color | None = None
    since: float | None = None
    until: float | None = None
    of: Literal["other", "blue", "green", "any"] = "other"
    version: str | None = Field(None, max_length=200)
    limit: int = Field(10_000, ge=1, le=MAX_REPLAY)


# the daemon's half -------------------------------------------------------------------------


async def run(ctx: Context, args: Args) -> dict[str, Any]:
    deployment = ctx.deployment
    if not isinstance(deployment, _WithDecisionLog):
        raise Refused("decision_log_disabled", "this deployment writes no decision log")
    log = deployment.decisions
    if args.op == "where":
        return {"path": str(log.path), "enabled": log.enabled}
    if not log.enabled:
        raise Refused("decision_log_disabled", "[decision_log] enabled = false")
    if args.op == "head":
        await log.flush()
        return {
            "path": str(log.path),
            "seq": log.written_seq,
            "hash": log.written_hash,
            "synced_seq": log.synced_seq,
        }
    return await _replay(ctx, log, args)


async def _replay(ctx: Context, log: DecisionLog, args: Args) -> dict[str, Any]:
    if args.color is None:
        raise Refused("bad_request", "replay needs a color (--color)")
    color = args.color
    status = await ctx.deployment.status(0)
    if status.get("active") == color.value:
        raise Refused("is_active", f"{color} is in charge: replay goes to the standby")
    child = ctx.deployment.children[color]
    if child.state.value != "RUNNING" or child.hello is None:
        raise Refused("not_running", f"{color} is {child.state.value} and has not said hello")
    if "mirror" not in (child.hello.get("capabilities") or []):
        raise Refused("no_mirror", f"{color} does not answer mirrors (no on_mirror hook)")
    of = {"other": (color.other.value,), "any": (), "blue": ("blue",), "green": ("green",)}
    f = Filter(
        since=args.since,
        until=args.until,
        colors=of[args.of],
        versions=(args.version,) if args.version else (),
        kinds=("decision",),
        limit=args.limit,
    )
    await log.flush()
    records = await asyncio.to_thread(_decisions, log.path, f)
    if not records:
        raise Refused("nothing_to_replay", "no logged decision matches")
    report = await replay(records, child)
    out = report.as_dict()
    out.update(of=args.of, since=args.since, until=args.until)
    return out


def _decisions(path: Path, f: Filter) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in python_query(path, f)]


# the operator's half -----------------------------------------------------------------------


def arguments(parser: argparse.ArgumentParser) -> None:
    # Not required to argparse (cli() says what is missing, exit 2), so that the command
    # parses with no words at all, as every command does for the registry's checks.
    ops = parser.add_subparsers(dest="op", metavar="{tail,query,verify,replay}")

    def sub(name: str, help: str) -> argparse.ArgumentParser:
        sp = ops.add_parser(name, help=help, description=help)
        # Also after the op (`decisions verify --socket S`); SUPPRESS keeps the value given
        # before it when this one is absent.
        where = sp.add_mutually_exclusive_group()
        where.add_argument(
            "--socket", type=Path, default=argparse.SUPPRESS, help="the daemon's control socket"
        )
        where.add_argument(
            "-c",
            "--config",
            type=Path,
            default=argparse.SUPPRESS,
            help="the log (and socket) of this config",
        )
        sp.add_argument("--json", action="store_true", help="JSON instead of a table or text")
        return sp

    sp = sub("tail", "the latest records; -f to follow")
    sp.add_argument("-n", "--lines", type=int, default=10, help="how many (default 10)")
    sp.add_argument("-f", "--follow", action="store_true", help="print new records as they come")
    sp.add_argument("--path", type=Path, help="the log's current file (default: found)")

    sp = sub("query", "records by time, color, version, kind, key, epoch")
    _filters(sp)
    sp.add_argument("--limit", type=int, help="only the latest N")
    sp.add_argument(
        "--engine", choices=["auto", "python", "duckdb"], default="auto", help="(default auto)"
    )
    sp.add_argument("--path", type=Path, help="the log's current file (default: found)")

    sp = sub("verify", "check the chain across every file; name what was changed")
    sp.add_argument("path", nargs="?", type=Path, help="the log (or one rotated file)")
    sp.add_argument("--head", help="SEQ:HASH the log must reach (default: asked of the daemon)")
    sp.add_argument("--no-daemon", action="store_true", help="do not ask a daemon for its head")

    sp = sub("replay", "send logged decisions to the standby as mirrors; compare the outputs")
    sp.add_argument("--color", required=True, choices=COLOR_CHOICES, help="the standby to ask")
    sp.add_argument("--since", help="from (unix seconds, ISO 8601 or an age: 1d)")
    sp.add_argument("--until", help="up to")
    sp.add_argument(
        "--of",
        choices=["other", "blue", "green", "any"],
        default="other",
        help="whose decisions (default: the other color's)",
    )
    sp.add_argument("--version", help="only decisions made under this agent version")
    sp.add_argument("--limit", type=int, default=10_000, help="the latest N (default 10000)")
    sp.add_argument("--check", action="store_true", help="exit 1 when any output differs")


def _filters(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--since", help="from (unix seconds, ISO 8601 or an age: 15m, 2h, 1d)")
    sp.add_argument("--until", help="up to (same forms)")
    sp.add_argument("--color", action="append", choices=COLOR_CHOICES, help="repeatable")
    sp.add_argument("--version", action="append", help="agent_version; repeatable")
    sp.add_argument("--kind", action="append", help="decision, execution, flip...; repeatable")
    sp.add_argument("--key", help="an idempotency key or a decision id")
    sp.add_argument("--epoch", help="N or N..M")


def cli(command: Command[Any], ns: argparse.Namespace, socket: Path) -> int:
    if ns.op is None:
        print("agentsup decisions: choose one of tail, query, verify, replay", file=sys.stderr)
        return 2
    try:
        if ns.op == "replay":
            return _cli_replay(ns, socket)
        path = _log_path(ns, socket)
        if ns.op == "tail":
            return _cli_tail(ns, path)
        if ns.op == "query":
            return _cli_query(ns, path)
        return _cli_verify(ns, path, socket)
    except QueryError as exc:
        print(f"agentsup: {exc}", file=sys.stderr)
        return 2


def _explicit_socket(ns: argparse.Namespace) -> bool:
    return getattr(ns, "socket", None) is not None or getattr(ns, "config", None) is not None


def _log_path(ns: argparse.Namespace, socket: Path) -> Path:
    given: Path | None = getattr(ns, "path", None)
    if given is not None:
        return given
    cfg_path = getattr(ns, "config", None)
    if cfg_path is not None:
        return config_module.load(cfg_path).decision_log_path
    try:
        where = send(socket, "decisions", {"op": "where"}, timeout=5.0)
    except ControlUnreachable as exc:
        raise SupervisorError(
            f"cannot find the decision log: give its path (--path or PATH), -c FILE, or "
            f"--socket of a running daemon ({exc})"
        ) from None
    return Path(where["path"])


def _filter(ns: argparse.Namespace) -> Filter:
    return Filter(
        since=parse_time(ns.since) if ns.since else None,
        until=parse_time(ns.until) if ns.until else None,
        colors=tuple(ns.color or ()),
        versions=tuple(ns.version or ()),
        kinds=tuple(ns.kind or ()),
        key=ns.key,
        epochs=parse_epochs(ns.epoch) if ns.epoch else None,
        limit=ns.limit,
    )


def _emit(lines: list[bytes], as_json: bool) -> None:
    if as_json:
        out = sys.stdout.buffer
        for line in lines:
            out.write(line + b"\n")
        out.flush()
    elif lines:
        print(render_table(lines))


def _cli_tail(ns: argparse.Namespace, path: Path) -> int:
    _emit(last_records(path, max(0, ns.lines)), ns.json)
    if not ns.follow:
        return 0

    def emit(line: bytes) -> None:
        if ns.json:
            sys.stdout.buffer.write(line + b"\n")
            sys.stdout.buffer.flush()
        else:
            print(row_line(line), flush=True)

    follow(path, emit, stop=lambda: False)
    return 0


def _cli_query(ns: argparse.Namespace, path: Path) -> int:
    if ns.limit is not None and ns.limit < 1:
        raise QueryError("--limit must be at least 1")
    engine, lines = query(path, _filter(ns), ns.engine)
    if ns.json:
        out = sys.stdout.buffer
        for line in lines:
            out.write(line + b"\n")
        out.flush()
        return 0
    rows = list(lines)
    _emit(rows, False)
    print(f"{len(rows)} record(s) ({engine})", file=sys.stderr)
    return 0


def _cli_verify(ns: argparse.Namespace, path: Path, socket: Path) -> int:
    head: tuple[int, str] | None = None
    if ns.head:
        seq, _, digest = ns.head.partition(":")
        if not seq.isdigit() or not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise QueryError("--head must be SEQ:HASH (the hash in 64 hex digits)")
        head = (int(seq), digest)
    elif not ns.no_daemon and (_explicit_socket(ns) or socket.exists()):
        try:
            got = send(socket, "decisions", {"op": "head"}, timeout=10.0)
            if Path(got["path"]) == path.absolute() and got["seq"]:
                head = (int(got["seq"]), str(got["hash"]))
        except (ControlUnreachable, Refused):
            pass  # no daemon to ask: the files alone
    whole = not _ROTATED.search(path.name)
    report = verify(path, whole_log=whole, head=head)
    print(as_indented_json(report.as_dict()) if ns.json else describe(report, head))
    return 0 if report.ok else 1


def describe(report: Report, head: tuple[int, str] | None) -> str:
    """The verify report in words."""
    lines = []
    span = (
        f"seqs {report.first_seq}..{report.last_seq}"
        if report.first_seq is not None
        else "no records"
    )
    verdict = "intact" if report.ok else f"BROKEN: {report.problems_total} problem(s)"
    lines.append(
        f"{verdict}: {report.records:,} records ({span}) in {len(report.files)} file(s), "
        f"{report.bytes / 1e6:.1f} MB in {report.seconds:.2f} s ({report.mb_per_s:.0f} MB/s)"
    )
    for p in report.problems:
        lines.append(f"  {p.kind}: {p.message}")
    if report.problems_total > len(report.problems):
        lines.append(f"  ... and {report.problems_total - len(report.problems)} more")
    if report.torn_tail:
        t = report.torn_tail
        lines.append(
            f"  torn tail: {t['bytes']} bytes after seq {t['after_seq']} at {t['file']}:"
            f"{t['line']} (a write cut short, e.g. kill -9; not a record, not tampering)"
        )
    for gap in report.gaps:
        lines.append(
            f"  gap at seq {gap['seq']}: {gap['count']} record(s) not written {gap['by_kind']}"
        )
    for note in report.notes:
        lines.append(f"  note: {note}")
    if head is not None:
        lines.append(f"  checked against the head seq {head[0]} ({head[1][:16]}…)")
    if report.head:
        lines.append(f"  head: seq {report.last_seq} {report.head}")
    return "\n".join(lines)


def _cli_replay(ns: argparse.Namespace, socket: Path) -> int:
    if not 1 <= ns.limit <= MAX_REPLAY:
        raise QueryError(f"--limit must be between 1 and {MAX_REPLAY}")
    args = {
        "op": "replay",
        "color": ns.color,
        "since": parse_time(ns.since) if ns.since else None,
        "until": parse_time(ns.until) if ns.until else None,
        "of": ns.of,
        "version": ns.version,
        "limit": ns.limit,
    }
    result = send(socket, "decisions", args, timeout=REPLAY_TIMEOUT_S)
    print(as_indented_json(result) if ns.json else show_replay(result))
    return 1 if ns.check and (result["different"] or result["failed"]) else 0


def show_replay(r: dict[str, Any]) -> str:
    lines = [
        f"replayed {r['decisions']} decision(s) of {r['of']} on {r['color']} v{r['version']}: "
        f"{r['same']} the same, {r['different']} different, {r['failed']} failed "
        f"({r['seconds']:.2f} s)"
    ]
    if r.get("stopped"):
        lines.append(f"  stopped early: {r['stopped']}")
    for d in r["differences"]:
        lines.append(
            f"  seq {d['seq']} {d['decision_type']} (decided by {d['color']} "
            f"v{d['agent_version']}): inputs {orjson.dumps(d['inputs']).decode()}"
        )
        lines.append(f"      decided  {orjson.dumps(d['decided']).decode()}")
        lines.append(f"      replayed {orjson.dumps(d['replayed']).decode()}")
    if r["different"] > len(r["differences"]):
        lines.append(f"  ... and {r['different'] - len(r['differences'])} more")
    for fail in r["failures"]:
        lines.append(f"  failed: seq {fail['seq']}: {fail['why']}")
    return "\n".join(lines)


COMMAND = Command(
    "decisions",
    "the decision log: tail, query, verify (files only), replay (to the standby)",
    Args,
    run,
    arguments=arguments,
    cli=cli,
)
