"""The daemon's own stalls (a VM freeze, a SIGSTOP, a long pause of its event loop) are never
counted against a child: after the pause it reads what the channels hold before it judges
silence, and every child's heartbeat clock moves on by the length of the pause. A child that
really went silent is still rolled back. Real daemon, real Redis, real demo agents."""

from __future__ import annotations

import asyncio
import os
import signal
import urllib.request
from typing import Any

from supervisor.config import Color, EscrowGapTrigger
from supervisor.guard.escrow import EscrowGap
from tests.harness import DaemonProcess, agent, running_daemon
from tests.redis_server import RedisServer

PAUSE_S = 8.0


def demo(version: str, **env: str) -> dict[str, Any]:
    return agent(None, version, env={"AGENTSUP_DEMO_ROUND_S": "0.05", **env})


def scrape(d: DaemonProcess) -> str:
    port = int(d.find("metrics_listening")[0]["address"].rsplit(":", 1)[1])
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return str(r.read().decode())


def metric(text: str, line_prefix: str) -> float:
    for line in text.splitlines():
        if line.startswith(line_prefix + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{line_prefix!r} not in the scrape")


async def green_in_charge(d: DaemonProcess) -> None:
    await d.wait_status(lambda s: all(c["protocol"] for c in s["children"].values()))
    switched = await d.cli("switch", "green")
    assert switched.rc == 0, switched.err


async def pause(d: DaemonProcess, seconds: float) -> None:
    """SIGSTOP the daemon alone (its children run on, in their own process groups)."""
    os.kill(d.pid, signal.SIGSTOP)
    try:
        await asyncio.sleep(seconds)
    finally:
        os.kill(d.pid, signal.SIGCONT)


async def test_a_paused_daemon_does_not_roll_back_a_healthy_candidate(
    redis_server: RedisServer,
) -> None:
    async with running_daemon(
        redis_url=redis_server.url,
        blue=demo("1.0.0"),
        green=demo("2.0.0"),
        sections={"triggers.heartbeat": {"timeout_s": 2.0}},
    ) as d:
        assert metric(scrape(d), "agentsup_loop_stalls_total") == 0
        await green_in_charge(d)
        await d.wait_status(lambda s: s["children"]["green"]["rounds"] >= 3)
        await pause(d, PAUSE_S)
        stalled = await d.wait_log("loop_stalled", timeout=20)
        assert PAUSE_S - 1 <= stalled["seconds"] <= PAUSE_S + 30
        # Several heartbeat timeouts after the wake, green is still in charge and still
        # playing: the daemon judged it on its own time, not on the pause.
        before = (await d.status())["children"]["green"]["rounds"]
        st = await d.wait_status(
            lambda s: s["children"]["green"]["rounds"] >= before + 60, timeout=30
        )
        assert (st["active"], st["candidate"]) == ("green", "green")
        assert st["rejected"] == {}
        assert not d.find("trigger_fired", trigger="heartbeat")
        assert not d.find("flip", trigger="heartbeat")
        text = scrape(d)
        assert metric(text, "agentsup_loop_stalls_total") == 1
        assert metric(text, 'agentsup_loop_stall_seconds_bucket{le="5.0"}') < metric(
            text, 'agentsup_loop_stall_seconds_bucket{le="+Inf"}'
        )


async def test_a_candidate_silent_across_the_pause_is_still_rolled_back(
    redis_server: RedisServer,
) -> None:
    # Green hangs (its loop blocked: no heartbeat) right after its third round, while the
    # daemon is paused or just before; the pause must not hide that.
    async with running_daemon(
        redis_url=redis_server.url,
        blue=demo("1.0.0"),
        green={
            **demo("2.0.0", AGENTSUP_DEMO_BUG="silence", AGENTSUP_DEMO_BUG_AFTER="3"),
            "stop_timeout_s": 2.0,
        },
        sections={"triggers.heartbeat": {"timeout_s": 4.0}},
    ) as d:
        await green_in_charge(d)
        await pause(d, PAUSE_S)
        stalled = await d.wait_log("loop_stalled", timeout=20)
        flip = await d.wait_log("flip", trigger="heartbeat", timeout=30)
        assert d.logs.index(flip) > d.logs.index(stalled)
        assert flip["active"] == "blue"
        assert "no heartbeat for" in flip["reason"]
        st = await d.status()
        assert st["rejected"] == {"green": "2.0.0"}


def test_an_escrow_gap_does_not_count_the_daemons_own_pause() -> None:
    guard = EscrowGap(EscrowGapTrigger(gap_s=60))
    guard.event(Color.BLUE, "esc-1", "watch", due_at=None, gap_s=None, now=0.0)
    guard.event(Color.BLUE, "esc-2", "watch", due_at=None, gap_s=None, now=0.0)
    assert guard.tick(1.0, Color.BLUE) is None
    # Blue checked esc-2 at 40 s; the daemon then stood still from 50 s to 80 s.
    guard.event(Color.BLUE, "esc-2", "check", due_at=None, gap_s=None, now=40.0)
    guard.paused(30.0, now=80.0)
    assert guard.tick(80.0, Color.BLUE) is None  # esc-1: 50 s of the daemon's time, not 80
    assert guard.tick(89.0, Color.BLUE) is None
    # After the pause the clock runs again: 61 s of the daemon's own time is overdue.
    verdict = guard.tick(91.0, Color.BLUE)
    assert verdict is not None
    assert verdict.message.startswith("escrow esc-1 unchecked by blue for 61 s")
    # esc-2, checked at 40 s, is due at 130 s: 40 + 30 of pause + 60.
    assert [e["id"] for e in guard.overdue(129.0)] == ["esc-1"]
    assert [e["id"] for e in guard.overdue(131.0)] == ["esc-1", "esc-2"]


def test_a_pause_never_moves_a_clock_past_the_present() -> None:
    # A "stall" spent handling the child's own lines (a check read late in it): the clock of
    # that check is the present at most, never the future.
    guard = EscrowGap(EscrowGapTrigger(gap_s=60))
    guard.event(Color.BLUE, "esc-1", "watch", due_at=None, gap_s=None, now=0.0)
    guard.event(Color.BLUE, "esc-1", "check", due_at=None, gap_s=None, now=10.0)
    guard.paused(5.0, now=12.0)
    assert guard.tick(72.0, Color.BLUE) is None
    assert guard.tick(73.0, Color.BLUE) is not None  # 61 s after 12 s, not after 15 s
