"""Redis going away: permits refused, the daemon up and saying so, recovery by itself."""

from __future__ import annotations

import json
import os
import signal
import urllib.request

from tests.harness import PY, agent, running_daemon
from tests.redis_server import RedisServer

RAW = [PY, "tests/agents/raw_agent.py"]


def scrape_value(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
    raise AssertionError(name)


def permit_result(reason: str):  # type: ignore[no-untyped-def]
    def match(r: dict[str, object]) -> bool:
        line = str(r.get("line", ""))
        if not line.startswith("recv "):
            return False
        msg = json.loads(line[5:])
        return msg.get("type") == "permit_result" and msg["reason"] == reason

    return match


async def test_redis_down_refuses_permits_and_recovery_raises_the_epoch(
    redis_server: RedisServer,
) -> None:
    busy = agent(RAW, "1.0.0", env={"RAW_PERMIT_KEY": "bet", "RAW_PERMIT_EVERY_S": "0.1"})
    async with running_daemon(
        redis_url=redis_server.url,
        blue=busy,
        green=agent(RAW, "2.0.0"),
        sections={"redis": {"health_interval_s": 0.1}},
    ) as d:
        port = int(d.find("metrics_listening")[0]["address"].rsplit(":", 1)[1])
        await d.wait_log("child_output", color="blue", where=permit_result("ok"))
        before = (await d.status())["epoch"]
        assert scrape_value(port, "agentsup_redis_up") == 1

        redis_server.stop()
        mark = len(d.logs)
        await d.wait_log("redis_down")
        await d.wait_log(
            "child_output", color="blue", since=mark, where=permit_result("unavailable")
        )
        st = await d.status()  # the daemon answers and says so
        assert st["redis"] == "down"
        assert scrape_value(port, "agentsup_redis_up") == 0
        assert (await d.cli("switch", "green")).rc == 1  # no flip without Redis

        redis_server.start()  # back, and empty: no active key, no epoch
        mark = len(d.logs)
        await d.wait_log("redis_up", since=mark)
        restored = await d.wait_log("flip", reason="restored", since=mark)
        assert restored["epoch"] > before
        assert redis_server.cli("GET", "agent:active_version") == "blue"
        assert int(redis_server.cli("GET", "t:epoch")) > before
        mark = len(d.logs)
        await d.wait_log("child_output", color="blue", since=mark, where=permit_result("ok"))
        assert scrape_value(port, "agentsup_redis_up") == 1
        assert (await d.status())["redis"] == "up"


async def test_a_rollback_decided_while_redis_is_down_is_applied_when_it_returns(
    redis_server: RedisServer,
) -> None:
    async with running_daemon(
        redis_url=redis_server.url,
        blue=agent(RAW, "1.0.0"),
        green=agent(RAW, "2.0.0"),
        sections={"redis": {"health_interval_s": 0.1}},
    ) as d:
        await d.wait_status(lambda s: all(c["protocol"] for c in s["children"].values()))
        assert (await d.cli("switch", "green")).rc == 0
        green_pid = (await d.status())["children"]["green"]["pid"]
        redis_server.stop()
        await d.wait_log("redis_down")
        os.kill(green_pid, signal.SIGKILL)  # the candidate dies while nobody can flip
        await d.wait_log("rollback_pending")
        st = await d.status()
        assert st["pending_rollback"].startswith("exit: ")
        redis_server.start()  # empty: the pending rollback is what decides who acts
        flip = await d.wait_log("flip", trigger="exit")
        assert flip["active"] == "blue"
        st = await d.wait_status(lambda s: s["pending_rollback"] is None)
        assert (st["active"], st["candidate"], st["rejected"]) == ("blue", None, {"green": "2.0.0"})
        assert redis_server.cli("GET", "agent:active_version") == "blue"
