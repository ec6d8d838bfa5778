"""A Sentinel failover under a real daemon whose two children ask for permits all the time,
and the judgement of what the children saw. Shared by tests/scale/test_sentinel.py and
bench/sentinel_failover.py.

The children are bench/chaos_agent.py: SDK agents that ask for permits on one key sequence
shared by both colors (so both ask for the same keys, and now and then for an old one) and
write every answer and every role push, with CLOCK_MONOTONIC times, to ``{color}.log``.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from supervisor.arbiter.scripts import Keys
from tests.harness import PY, DaemonProcess, agent
from tests.scale.sentinels import SERVICE, SentinelSet

ROOT = Path(__file__).resolve().parents[2]
CHAOS_AGENT = ROOT / "bench" / "chaos_agent.py"
NAMESPACE = "t"  # tests/harness.py's
ACTIVE_KEY = "agent:active_version"
KEYS = Keys(NAMESPACE, ACTIVE_KEY)


def daemon_settings(
    group: SentinelSet, evidence: Path, *, permits: str = "channel", lease_ttl_s: float = 1.0
) -> dict[str, Any]:
    """``running_daemon()`` arguments: both colors run the chaos agent, Redis is the
    sentinels' master. ``permits`` "direct" gives the children the right to call the permit
    script themselves (the SDK then connects to the master through the sentinels)."""
    env = {
        "CHAOS_DIR": str(evidence),
        "CHAOS_T0_NS": str(time.monotonic_ns()),
        "CHAOS_SLOT_MS": "25",
        "CHAOS_INTERVAL_MS": "5",
    }
    command = [PY, str(CHAOS_AGENT)]
    return {
        "redis_url": None,
        "blue": agent(command, "1.0.0", env=env),
        "green": agent(command, "2.0.0", env=env),
        "sections": {
            "supervisor": {"lease_ttl_s": lease_ttl_s},
            "redis": {
                "sentinels": group.addresses,
                "service_name": SERVICE,
                "child_access": "permit" if permits == "direct" else "read",
                "health_interval_s": 0.1,
                "reconcile_interval_s": 0.2,
                "socket_timeout_s": 0.5,
            },
        },
    }


@dataclass(frozen=True)
class Answer:
    """One line of a chaos agent's evidence."""

    t_ask: int  # CLOCK_MONOTONIC ns
    t: int
    proc: str
    color: str
    event: str  # permit, role, start, garbage
    key: str
    reason: str  # ok, not_active, ... for a permit; the role for a role push
    epoch: int  # -1: none held


def read_evidence(directory: Path) -> list[Answer]:
    answers = []
    for path in sorted(directory.glob("*.log")):
        for line in path.read_text().splitlines():
            t_ask, t, proc, _daemon, color, event, key, reason, epoch = line.split()
            answers.append(Answer(int(t_ask), int(t), proc, color, event, key, reason, int(epoch)))
    return sorted(answers, key=lambda a: a.t)


def grants(answers: list[Answer]) -> list[Answer]:
    return [a for a in answers if a.event == "permit" and a.reason == "ok"]


@dataclass
class Judgement:
    """What the children's own records say about the fence (empty lists: nothing wrong)."""

    granted_twice: dict[str, list[str]] = field(default_factory=dict)
    epoch_went_down: list[str] = field(default_factory=list)
    two_colors_at_once: dict[int, set[str]] = field(default_factory=dict)

    @property
    def violations(self) -> list[str]:
        out = [f"key {k} granted more than once: {v}" for k, v in self.granted_twice.items()]
        out += self.epoch_went_down
        out += [f"epoch {e} granted to {sorted(c)}" for e, c in self.two_colors_at_once.items()]
        return out


def judge(answers: list[Answer]) -> Judgement:
    """No key granted twice; the epoch a child was told never went down (per process, role
    pushes and the epochs its permits were asked at alike); one color granted per epoch."""
    verdict = Judgement()
    by_key: dict[str, list[str]] = defaultdict(list)
    colors: dict[int, set[str]] = defaultdict(set)
    for a in grants(answers):
        by_key[a.key].append(f"{a.color}@{a.epoch}")
        colors[a.epoch].add(a.color)
    verdict.granted_twice = {k: v for k, v in by_key.items() if len(v) > 1}
    verdict.two_colors_at_once = {e: c for e, c in colors.items() if len(c) > 1}
    highest: dict[str, tuple[int, Answer]] = {}
    # A permit carries the epoch its agent held when it asked: ordered by that instant (a
    # role push can arrive while the answer is on its way, and is no going down).
    for a in sorted(answers, key=lambda a: a.t_ask):
        if a.event not in ("role", "permit") or a.epoch < 0:
            continue
        before = highest.get(a.proc)
        if before is not None and a.epoch < before[0]:
            verdict.epoch_went_down.append(
                f"{a.color} ({a.proc}) told epoch {a.epoch} after {before[0]} ({before[1]})"
            )
        if before is None or a.epoch > before[0]:
            highest[a.proc] = (a.epoch, a)
    return verdict


@dataclass(frozen=True)
class Window:
    """How long nobody could act around a failover (seconds)."""

    nobody: float  # the last grant before the kill → the first grant after it
    kill_to_grant: float  # the kill → the first grant after it
    kill_to_switch: float  # the kill → the sentinels' +switch-master
    kill_to_daemon: float  # the kill → the daemon's redis_up on the new master


def window(answers: list[Answer], t_kill: int, t_switch: int, t_daemon: int) -> Window:
    ok = grants(answers)
    before = [a.t for a in ok if a.t < t_kill]
    after = [a.t for a in ok if a.t_ask > t_kill]
    assert before, "no grant before the kill"
    assert after, "no grant after the kill"
    return Window(
        nobody=(min(after) - max(before)) / 1e9,
        kill_to_grant=(min(after) - t_kill) / 1e9,
        kill_to_switch=(t_switch - t_kill) / 1e9,
        kill_to_daemon=(t_daemon - t_kill) / 1e9,
    )


async def wait_for(what: str, check: Callable[[], Any], timeout: float, every: float = 0.05) -> Any:
    """Until ``check()`` returns something true (a state with no event to wait on: a file the
    children append to, a setting in another process). Fails naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        found = await asyncio.to_thread(check)
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(every)


async def wait_granted(
    evidence: Path, color: str, after_ns: int, timeout: float, count: int = 1
) -> list[Answer]:
    """Until ``color`` holds ``count`` grants it asked for after ``after_ns``."""

    def found() -> list[Answer]:
        mine = [
            a for a in grants(read_evidence(evidence)) if a.color == color and a.t_ask > after_ns
        ]
        return mine if len(mine) >= count else []

    result: list[Answer] = await wait_for(
        f"{count} grant(s) to {color} after {after_ns}", found, timeout
    )
    return result


async def switch(daemon: DaemonProcess, color: str) -> dict[str, Any]:
    """``agentsup switch COLOR``; the daemon's flip record."""
    since = len(daemon.logs)
    result = await daemon.cli("switch", color)
    assert result.rc == 0, (result.out, result.err)
    return await daemon.wait_log("flip", since=since, active=color, reason="switch")


async def on_master(daemon: DaemonProcess, port: int, since: int, timeout: float) -> int:
    """Until the daemon logs Redis up on the master at ``port``; returns CLOCK_MONOTONIC ns."""
    await daemon.wait_log("redis_up", since=since, timeout=timeout, master=f"127.0.0.1:{port}")
    return time.monotonic_ns()
