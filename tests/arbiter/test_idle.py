"""A daemon with nothing to decide costs next to no CPU: no loop of the arbiter's spins, not
the journal's group commit, not the tail of the grant log while Redis is away."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from tests.harness import PY, DaemonProcess, agent, running_daemon
from tests.redis_server import RedisServer

pytestmark = pytest.mark.timeout(120)

RAW = [PY, "tests/agents/raw_agent.py"]
# A loop that spins takes a whole core; an idle daemon takes a few per cent. The bound sits
# far from both, for a shared and busy machine.
MOST_CPU = 0.3


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


async def share_of_a_core(d: DaemonProcess, seconds: float) -> float:
    cpu, wall = cpu_seconds(d.pid), time.monotonic()
    await asyncio.sleep(seconds)  # the measurement window itself, not a wait for an event
    return (cpu_seconds(d.pid) - cpu) / (time.monotonic() - wall)


async def test_an_idle_daemon_and_one_waiting_for_redis_barely_use_the_cpu(
    redis_server: RedisServer,
) -> None:
    async with running_daemon(
        redis_url=redis_server.url,
        blue=agent(RAW, "1.0.0"),
        green=agent(RAW, "2.0.0"),
        # Direct permits: the daemon tails the grant log, the loop that must wait while Redis
        # is away.
        sections={"redis": {"child_access": "permit", "health_interval_s": 0.1}},
    ) as d:
        await d.wait_status(lambda s: all(c["protocol"] for c in s["children"].values()))
        assert await share_of_a_core(d, 2.0) < MOST_CPU
        redis_server.stop(signal.SIGKILL)
        try:
            await d.wait_status(lambda s: s["redis"] == "down")
            assert await share_of_a_core(d, 2.0) < MOST_CPU
        finally:
            redis_server.start()
        await d.wait_status(lambda s: s["redis"] == "up", timeout=30)
