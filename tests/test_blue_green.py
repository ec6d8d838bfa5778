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
    async with running_daemon(
        redis_url=redis_server.url, blue=raw("1.0.0"), green=raw("2.0.0")
    ) as d:
        st = await d.wait_status(
            lambda s: all(c["state"] == "RUNNING" and c["protocol"] for c in s["children"].values())
        )
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
        assert "COLOR" in human
        assert "RUNNING" in human
        assert (await d.cli("confirm")).rc == 1


async def test_operator_set_is_adopted_epoch_rises_and_both_children_are_told(
    redis_server: RedisServer,
) -> None:
    async with running_daemon(
        redis_url=redis_server.url, blue=raw("1.0.0"), green=raw("2.0.0")
    ) as d:
        st = await d.wait_status(lambda s: all(c["protocol"] for c in s["children"].values()))
        epoch0 = st["epoch"]
        # The seed's operator command, verbatim.
        assert redis_server.cli("SET", "agent:active_version", "green") == "OK"
        flip = await d.wait_log("flip", reason="external")
        assert flip["active"] == "green"
        assert flip["epoch"] == epoch0 + 1
        await told(d, "green", "active", epoch0 + 1)
        await told(d, "blue", "standby", epoch0 + 1)
        st = await d.status()
        assert (st["candidate"], st["stable"]) == ("green", "blue")
        assert st["flips"][0]["reason"] == "external"
        assert st["flips"][0]["from"] == "blue"
        assert int(redis_server.cli("GET", "t:epoch")) == epoch0 + 1

        # Setting it back to stable is adopted as an operator's rollback.
        redis_server.cli("SET", "agent:active_version", "blue")
        await told(d, "blue", "active", epoch0 + 2)
        st = await d.status()
        assert (st["active"], st["candidate"]) == ("blue", None)

        # A value that is not a color: nobody may act (fail closed) until a switch.
        redis_server.cli("SET", "agent:active_version", "purple")
        await told(d, "blue", "standby", epoch0 + 3)
        assert (await d.status())["active"] is None
        await d.wait_log("active_key_invalid", value="purple")
        assert (await d.cli("switch", "blue")).rc == 0
        await told(d, "blue", "active", epoch0 + 4)

        # A deleted key is put back, with a higher epoch.
        redis_server.cli("DEL", "agent:active_version")
        await d.wait_log("flip", reason="restored")
        assert redis_server.cli("GET", "agent:active_version") == "blue"
        await told(d, "blue", "active", epoch0 + 5)


async def test_after_a_flip_the_old_colors_permit_is_refused(redis_server: RedisServer) -> None:
    from tests.test_lifecycle import permit

    async with running_daemon(
        redis_url=redis_server.url, blue=raw("1.0.0"), green=raw("2.0.0")
    ) as d:
        st = await d.wait_status(lambda s: all(c["protocol"] for c in s["children"].values()))
        blue_epoch = st["children"]["blue"]["told_epoch"]
        assert permit(redis_server, "blue", blue_epoch, "order-1") == "ok"
        assert permit(redis_server, "blue", blue_epoch, "order-1") == "ok"  # its own retry
        assert (await d.cli("switch", "green")).rc == 0
        # Blue never heard of the flip (it asks with what it was told): refused.
        assert permit(redis_server, "blue", blue_epoch, "order-2") == "not_active"
        new = (await d.status())["epoch"]
        # Green with an epoch it was never told, and green reusing blue's key: refused.
        assert permit(redis_server, "green", blue_epoch, "order-2") == "stale_epoch"
        assert permit(redis_server, "green", new, "order-1", token="t9") == "duplicate"
        assert permit(redis_server, "green", new, "order-2") == "ok"
