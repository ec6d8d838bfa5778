"""``handoff COLOR [--dry-run] [--json]``: hand the state of the color in charge to COLOR, then
flip to it: quiesce, snapshot, store, restore (COLOR migrates it), compare the digests, flip
(COLOR becomes the candidate, on probation), resume the old color as standby. See
docs/handoff.md.

Request: ``{"cmd": "handoff", "args": {"color": "green", "dry_run": false}}``. Result: ``id``,
``from``, ``to``, ``result`` (completed, dry_run), ``epoch``, ``snapshot`` (id, digest, bytes,
schema, taken_at...), ``steps`` (each ``{"step", "ms"}``), ``window_ms`` (from quiesce sent to
the new color told it is active). Refused: ``already_active``, ``not_running``,
``no_snapshot_capability`` (a color without the snapshot hooks, e.g. an agent written the
seed's way), ``no_common_schema``, ``handoff_in_progress``, ``state_write_failed``; and
``handoff_aborted`` when a step failed before the flip (the message says which step, why,
and each step's duration): the old color was resumed and is still in charge.
"""

from __future__ import annotations

import argparse
from typing import Any

from pydantic import BaseModel, ConfigDict

from supervisor.config import Color
from supervisor.control.commands.base import COLOR_CHOICES, Command, as_indented_json
from supervisor.control.context import Context


class Args(BaseModel):
    model_config = ConfigDict(extra="forbid")
    color: Color
    dry_run: bool = False


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("color", choices=COLOR_CHOICES)
    parser.add_argument(
        "--dry-run", action="store_true", help="stop after a verified restore; nothing flips"
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def request(ns: argparse.Namespace) -> dict[str, Any]:
    return {"color": ns.color, "dry_run": ns.dry_run}


async def run(ctx: Context, args: Args) -> dict[str, Any]:
    return await ctx.deployment.handoff_to(args.color, args.dry_run, ctx.by)


def show(r: dict[str, Any], ns: argparse.Namespace) -> str:
    if ns.json:
        return as_indented_json(r)
    snap = r["snapshot"]
    lines = [f"  {s['step']:<9} {s['ms']:>10.3f} ms" for s in r["steps"]]
    if r["dry_run"]:
        head = (
            f"dry run: {r['to']} restored {r['from']}'s state and the digests match; "
            "nothing flipped"
        )
    else:
        head = (
            f"handed over: {r['to']} is in charge at epoch {r['epoch']} with {r['from']}'s "
            f"state; {r['from']} resumed as standby"
        )
    return "\n".join(
        [
            head,
            *lines,
            f"  nobody could act for {r['window_ms']:.3f} ms",
            f"  snapshot {snap['id']}: {snap['bytes']} bytes, schema {snap['schema']}, "
            f"sha256 {snap['digest']}",
        ]
    )


COMMAND = Command(
    "handoff",
    "hand the state of the color in charge to COLOR, then flip to it",
    Args,
    run,
    arguments=arguments,
    request=request,
    show=show,
)
