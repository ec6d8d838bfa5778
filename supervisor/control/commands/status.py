"""``status``: the daemon's state.

Request: ``{"cmd": "status"}``. Result: ``active``, ``epoch``, ``stable``, ``candidate``,
``mode``, ``redis`` ("up"/"down"), ``children`` (per color: state, pid, version, role,
uptime_s, restarts, protocol), ``flips`` (the latest, newest first), and more.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict
from redis.exceptions import RedisError

from supervisor import __version__

if TYPE_CHECKING:
    from supervisor.daemon import Daemon


class Args(BaseModel):
    model_config = ConfigDict(extra="forbid")
    flips: int = 10


async def run(daemon: Daemon, args: Args, *, by: str) -> dict[str, Any]:
    return await build(daemon, max(0, min(args.flips, 100)))


async def build(daemon: Daemon, flips: int) -> dict[str, Any]:
    """The status object: the rollout, both children, the latest flips, the triggers."""
    now = time.monotonic()
    children = {}
    for color, child in daemon.children.items():
        told = daemon.told[color]
        hb = child.last_heartbeat
        children[color.value] = {
            "state": child.state.value,
            "pid": child.pid,
            "version": child.cfg.version,
            "role": told[0] if told else daemon.rollout.role_of(color),
            "told_epoch": told[1] if told else None,
            "uptime_s": round(child.uptime, 3) if child.uptime is not None else None,
            "restarts": child.restarts,
            "last_exit": child.last_exit,
            "protocol": child.speaks_protocol,
            "heartbeat_age_s": round(now - hb, 3) if hb is not None else None,
            **daemon.pipeline.tally[color].as_dict(),
        }
    recent: list[dict[str, str]] = []
    if daemon.redis_is_up and flips:
        with contextlib.suppress(RedisError, OSError):
            recent = await daemon.arbiter.flips(flips)
    return {
        **daemon.rollout.describe(),
        "name": daemon.config.supervisor.name,
        "namespace": daemon.config.supervisor.namespace,
        "redis": "up" if daemon.redis_is_up else "down",
        "children": children,
        "flips": recent,
        "events": daemon.pipeline.events,
        "pid": os.getpid(),
        "version": __version__,
        "uptime_s": round(now - daemon.started_at, 3),
        "probation_s": daemon.config.rollout.probation_s,
        # None while state_dir takes writes; else what failed (flips past the reservation and
        # permits that cannot be journaled are refused meanwhile).
        "state_write_error": daemon.state_write_error,
        "lease": "held" if daemon.arbiter.holds_lease and not daemon.fenced_self else "lost",
        "triggers": daemon.pipeline.trigger_states(daemon.children, daemon.respond.fired),
    }
