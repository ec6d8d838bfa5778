"""The critical triggers: each misbehaving candidate is rolled back, the reason recorded in
the flips stream, the log and agentsup_rollbacks_total{trigger}."""

from __future__ import annotations

import urllib.request

import pytest

from tests.harness import agent, running_daemon
from tests.redis_server import RedisServer


def demo_agent(version: str, **env: str) -> dict[str, object]:
    return agent(None, version, env={"AGENTSUP_DEMO_ROUND_S": "0.02", **env})


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return str(r.read().decode())


@pytest.mark.parametrize(
    ("bug", "trigger", "reason_has"),
    [
        ("exception", "exception", "unhandled exception: KeyError"),
        ("auth", "auth", "auth failure: 401"),
        ("exit", "exit", "process exited while acting (exit code 3)"),
        ("silence", "heartbeat", "no heartbeat for"),
    ],
)
async def test_misbehaving_candidate_is_rolled_back(
    redis_server: RedisServer, bug: str, trigger: str, reason_has: str
) -> None:
    green = demo_agent("2.0.0", AGENTSUP_DEMO_BUG=bug, AGENTSUP_DEMO_BUG_AFTER="3")
    green["stop_timeout_s"] = 2.0
    async with running_daemon(
        redis_url=redis_server.url,
        blue=demo_agent("1.0.0"),
        green=green,
        sections={"triggers.heartbeat": {"timeout_s": 1.0}},
    ) as d:
        await d.wait_status(lambda s: all(c["protocol"] for c in s["children"].values()))
        switched = await d.cli("switch", "green")
        assert switched.rc == 0, switched.err
        flip = await d.wait_log("flip", trigger=trigger, timeout=20)
        assert flip["active"] == "blue"
        assert reason_has in flip["reason"]
        await d.wait_log("rolled_back", trigger=trigger)
        st = await d.status()
        assert (st["active"], st["stable"], st["candidate"]) == ("blue", "blue", None)
        assert st["rejected"] == {"green": "2.0.0"}
        newest = st["flips"][0]
        assert (newest["from"], newest["to"], newest["by"]) == ("green", "blue", "guard")
        assert reason_has in newest["reason"]
        port = int(d.find("metrics_listening")[0]["address"].rsplit(":", 1)[1])
        text = scrape(port)
        assert f'agentsup_rollbacks_total{{trigger="{trigger}"}} 1.0' in text
        assert 'agentsup_triggers_fired_total{severity="critical",trigger="' + trigger in text
        # A single rollback, however many verdicts the bug produced.
        assert len(d.find("flip", trigger=trigger)) == 1


async def test_a_healthy_candidate_is_kept(redis_server: RedisServer) -> None:
    async with running_daemon(
        redis_url=redis_server.url, blue=demo_agent("1.0.0"), green=demo_agent("2.0.0")
    ) as d:
        await d.wait_status(lambda s: all(c["protocol"] for c in s["children"].values()))
        assert (await d.cli("switch", "green")).rc == 0
        st = await d.wait_status(lambda s: s["children"]["green"]["rounds"] >= 60, timeout=30)
        assert st["active"] == "green"
        assert not d.find("trigger_fired")
