"""Blue-green end to end: the CLI, the arbiter, real Redis, real children."""

from __future__ import annotations

import json

from tests.harness import PY, agent, running_daemon
from tests.redis_server import RedisServer

RAW = [PY, "tests/agents/raw_agent.py"]


def raw(version: str, **env: str) -> dict[str, object]:
    return agent(RAW, version, env=env) if env else agent(RAW, version)


def told(d, color: str, role: str, epoch: int) -> object:  # type: ignore[no-untyped-def]
    """Wait until the child itself printed that it received this role push."""
    def match(r: dict[str, object]) -> bool:
        line = str(r.get("line", ""))
        if not line.startswith("recv "):
            return False
        msg = json.loads(line[5:])
        return msg.get("type") == "role" and msg["role"] == role and msg["epoch"] == epoch
    return d.wait_log("child_output", color=color, where=match)


async def test_switch_confirm_rollback_through_the_cli(redis_server: RedisServer) -> None:
    async with running_daemon(redis_url=redis_server.url, blue=raw("1.0.0"),
                              green=raw("2.0.0")) as d:
        st = await d.wait_status(lambda s: all(
            c["state"] == "RUNNING" and c["protocol"] for c in s["children"].values()))
        assert st["active"] == "blue"
        assert st["stable"] == "blue"
        epoch0 = st["epoch"]
        await told(d, "blue", "active", epoch0)
        await told(d, "green", "standby", epoch0)

        r = await d.cli("switch", "green")
        assert r.rc == 0, r.err
        assert "green is in charge" in r.out
        st = json.loads((await d.cli("status", "--json")).out)
        assert (st["active"], st["candidate"], st["stable"]) == ("green", "green", "blue")
        assert st["epoch"] == epoch0 + 1
        assert redis_server.cli("GET", "agent:active_version") == "green"
        await told(d, "green", "active", epoch0 + 1)
        await told(d, "blue", "standby", epoch0 + 1)

        again = await d.cli("switch", "green")
        assert again.rc == 1
        assert "already_active" in again.err

        r = await d.cli("rollback", "--reason", "numbers look off")
        assert r.rc == 0, r.err
        st = await d.status()
        assert (st["active"], st["candidate"], st["epoch"]) == ("blue", None, epoch0 + 2)
        assert st["flips"][0]["reason"] == "manual: numbers look off"
        assert st["rejected"] == {}  # an operator's rollback rejects nothing
        await told(d, "blue", "active", epoch0 + 2)

        assert (await d.cli("rollback")).rc == 1  # nothing to roll back now

        assert (await d.cli("switch", "green")).rc == 0
        r = await d.cli("confirm")
        assert r.rc == 0, r.err
        assert "green (2.0.0) is stable" in r.out
        st = await d.status()
        assert (st["active"], st["stable"], st["candidate"]) == ("green", "green", None)
        human = (await d.cli("status")).out
        assert "active: green" in human
        assert "COLOR" in human and "RUNNING" in human
        assert (await d.cli("confirm")).rc == 1
