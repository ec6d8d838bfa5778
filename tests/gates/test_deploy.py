"""``agentsup gates`` and ``agentsup deploy`` end to end: a real daemon, real children that
report the world as the test writes it, a real redis-server.

A deploy is refused for each gate that closes (the agents' volatility, an escrow dispute, an
auto-release due soon, a deny window, the cool-down after an automatic rollback, the target
already in charge), naming every closed gate; it goes once they open; context that went stale
closes its gates; a forced deploy is recorded in the flips stream, the decision log, the log
and an alert; a stateful pair is handed over; a canary step that passes while a gate is closed
waits for it (held, not aborted) and moves on by itself once it opens.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest
import redis

from supervisor.control.client import request
from tests.canary.test_canary import CANARY_AGENT, scrape
from tests.harness import PY, DaemonProcess, agent, running_daemon
from tests.redis_server import RedisServer, short_tempdir

CONTEXT_AGENT = [PY, str(Path(__file__).parent.parent / "agents" / "context_agent.py")]
CALM = {"volatility": 0.1, "disputes_open": 0, "auto_releases": []}


class World:
    """The file the context agents report from."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "world.json"
        self.version = 0
        self.write(context=None)

    def write(self, **world: Any) -> None:
        self.version += 1
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({**world, "version": self.version}))
        tmp.replace(self.path)  # never half a file


@pytest.fixture
def world() -> Iterator[World]:
    directory = short_tempdir("as-g-")
    yield World(directory)
    shutil.rmtree(directory, ignore_errors=True)


def pair(world: World, **env: str) -> dict[str, dict[str, Any]]:
    both = {"CTX_FILE": str(world.path), **env}
    return {
        "blue": agent(CONTEXT_AGENT, "1.0.0", env=both),
        "green": agent(CONTEXT_AGENT, "2.0.0", env=both),
    }


async def gates(d: DaemonProcess, target: str | None = None) -> dict[str, dict[str, Any]]:
    result = await asyncio.to_thread(request, d.socket, "gates", {"color": target})
    return {g["gate"]: g for g in result["gates"]}


async def until_gates(
    d: DaemonProcess, check: Callable[[dict[str, dict[str, Any]]], bool], timeout: float = 15.0
) -> dict[str, dict[str, Any]]:
    """Poll the gates until ``check`` holds (they are judged on the agents' latest reports)."""
    last: dict[str, dict[str, Any]] = {}
    try:
        async with asyncio.timeout(timeout):
            while not check(last := await gates(d)):
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"gates never got there: {last}") from None
    return last


def closed_in(err: str) -> set[str]:
    """The gates a refusal names (one ``  gate: why`` line each)."""
    return {
        line.strip().split(":", 1)[0]
        for line in err.splitlines()
        if line.startswith("  ") and ":" in line
    }


async def running(d: DaemonProcess) -> None:
    await d.wait_status(
        lambda s: all(c["state"] == "RUNNING" and c["protocol"] for c in s["children"].values())
    )


async def test_a_deploy_is_refused_naming_every_closed_gate_and_goes_once_they_open(
    redis_server: RedisServer, world: World
) -> None:
    async with running_daemon(
        redis_url=redis_server.url,
        **pair(world),
        sections={"gates": {"volatility_max": 0.5}},
    ) as d:
        await running(d)
        # Nothing reported yet: the agents' three gates cannot know, so they are closed.
        r = await d.cli("deploy", "green")
        assert r.rc == 1, r.out
        assert "refused (gates_closed)" in r.err
        assert closed_in(r.err) == {"volatility", "escrow_dispute", "auto_release"}
        assert "not knowing is not permission" in r.err

        soon = time.time() + 600
        world.write(context={"volatility": 0.9, "disputes_open": 1, "auto_releases": [soon]})
        await until_gates(d, lambda g: g["volatility"]["value"] == 0.9)
        r = await d.cli("deploy", "green")
        assert r.rc == 1
        assert closed_in(r.err) == {"volatility", "escrow_dispute", "auto_release"}
        assert "volatility 0.9 > 0.5" in r.err
        assert "1 escrow dispute(s) open" in r.err
        assert "due in 10 min" in r.err

        world.write(context={**CALM, "auto_releases": [time.time() + 1200]})
        await until_gates(d, lambda g: g["escrow_dispute"]["open"] and g["volatility"]["open"])
        r = await d.cli("deploy", "green")
        assert r.rc == 1
        assert closed_in(r.err) == {"auto_release"}  # only the one still closed
        r = await d.cli("deploy", "blue")  # already in charge
        assert r.rc == 1
        assert "children" in closed_in(r.err)

        world.write(context={**CALM, "auto_releases": [time.time() + 7200]})
        shown = await until_gates(d, lambda g: all(x["open"] for x in g.values()))
        assert shown["auto_release"]["threshold"] == 1800
        table = await d.cli("gates")
        assert table.rc == 0
        assert "a deploy may go ahead" in table.out
        r = await d.cli("deploy", "green", "--json")
        assert r.rc == 0, r.err
        done = r.json()
        assert (done["step"], done["active"], done["forced"]) == ("switch", "green", False)
        st = await d.status()
        assert (st["active"], st["candidate"]) == ("green", "green")
        assert all(st["gates"][g] for g in st["gates"] if g != "children")
        metrics = scrape(d)
        assert metrics['agentsup_deploys_total{result="refused",strategy="blue-green"}'] == 4
        assert metrics['agentsup_deploys_total{result="ok",strategy="blue-green"}'] == 1


async def test_context_that_went_stale_closes_its_gates(
    redis_server: RedisServer, world: World
) -> None:
    async with running_daemon(
        redis_url=redis_server.url,
        **pair(world),
        sections={"gates": {"context_max_age_s": 1.0, "volatility_max": 0.5}},
    ) as d:
        world.write(context=CALM)
        await until_gates(d, lambda g: g["escrow_dispute"]["open"])
        world.write(context=None)  # the agents go quiet about the world
        shut = await until_gates(d, lambda g: not g["escrow_dispute"]["open"])
        for gate in ("volatility", "escrow_dispute", "auto_release"):
            assert not shut[gate]["open"]
            assert "older than 1 s" in shut[gate]["reason"]
        r = await d.cli("deploy", "green")
        assert r.rc == 1
        assert closed_in(r.err) == {"volatility", "escrow_dispute", "auto_release"}


async def test_a_forced_deploy_is_recorded_in_the_flips_the_decision_log_the_log_and_an_alert(
    redis_server: RedisServer, world: World
) -> None:
    async with running_daemon(redis_url=redis_server.url, **pair(world)) as d:
        # An escrow the agent watches is due in five minutes: no deploy (the One Rule).
        world.write(context=CALM, escrows=[{"id": "esc-7", "due_at": time.time() + 300}])
        await until_gates(d, lambda g: "esc-7" in g["auto_release"]["reason"])
        r = await d.cli("deploy", "green", "--force")
        assert r.rc != 0
        assert "--force needs --reason" in r.err
        assert (await d.status())["active"] == "blue"
        why = "esc-7 settled by hand with the counterparty"
        r = await d.cli("deploy", "green", "--force", "--reason", why, "--json")
        assert r.rc == 0, r.err
        done = r.json()
        assert (done["forced"], done["closed"], done["active"]) == (True, ["auto_release"], "green")
        logged = await d.wait_log("deploy_forced")
        assert (logged["reason"], logged["closed"]) == (why, ["auto_release"])
        client = redis.Redis.from_url(redis_server.url, decode_responses=True)
        try:
            flips = client.xrevrange("t:flips", count=1)
        finally:
            client.close()
        by = flips[0][1]["by"]
        assert "forced past auto_release" in by
        assert why in by
        metrics = scrape(d)
        assert metrics['agentsup_alerts_total{trigger="deploy_forced"}'] == 1
        assert metrics['agentsup_deploys_total{result="forced",strategy="blue-green"}'] == 1
        deploys = await _logged(d, "deploy")
        assert len(deploys) == 1
        assert (deploys[0]["forced"], deploys[0]["reason"], deploys[0]["closed"]) == (
            True,
            why,
            ["auto_release"],
        )


async def _logged(d: DaemonProcess, kind: str) -> list[dict[str, Any]]:
    """The decision log's records of ``kind``, once there is one (written within its fsync
    interval)."""
    path = d.state_dir / "decisions.jsonl"
    async with asyncio.timeout(15):
        while True:
            lines = path.read_bytes().splitlines() if path.exists() else []
            found = [r for r in map(orjson.loads, lines) if r["kind"] == kind]
            if found:
                return found
            await asyncio.sleep(0.05)


async def test_a_deny_window_across_midnight_in_another_time_zone_refuses_a_deploy(
    redis_server: RedisServer, world: World
) -> None:
    # A window that began an hour ago, local time in Tokyo, and lasts two hours: whatever
    # the hour, it is open now (and on most days it runs across a midnight somewhere).
    tokyo = datetime.now(ZoneInfo("Asia/Tokyo")) - timedelta(hours=1)
    window = {
        "name": "exchange maintenance",
        "days": [tokyo.strftime("%a").lower()],
        "start": tokyo.strftime("%H:%M"),
        "duration_s": 7200,
        "timezone": "Asia/Tokyo",
    }
    async with running_daemon(
        redis_url=redis_server.url, **pair(world), sections={"gates": {"windows": [window]}}
    ) as d:
        world.write(context=CALM)
        await until_gates(d, lambda g: g["escrow_dispute"]["open"])
        r = await d.cli("deploy", "green")
        assert r.rc == 1
        assert closed_in(r.err) == {"freeze_window"}
        assert "exchange maintenance" in r.err


async def test_too_few_redis_replicas_and_a_snapshot_that_cannot_be_taken_refuse_a_deploy(
    redis_server: RedisServer, world: World
) -> None:
    async with running_daemon(
        redis_url=redis_server.url,
        **pair(world, CTX_STATE="1", CTX_SNAPSHOT_FAILS="1"),
        sections={"gates": {"min_replicas": 1}},
    ) as d:
        world.write(context=CALM)
        await running(d)
        await until_gates(d, lambda g: g["escrow_dispute"]["open"])
        r = await d.cli("deploy", "green")
        assert r.rc == 1
        # The deploy tried a fresh snapshot first; it failed, so the gate stays closed.
        assert closed_in(r.err) == {"redis", "snapshot"}
        assert "0 replica(s) connected" in r.err
        assert "no snapshot of blue yet" in r.err
        await d.wait_log("deploy_snapshot_failed")
        assert (await d.status())["active"] == "blue"


async def test_after_an_automatic_rollback_the_cooldown_refuses_a_deploy(
    redis_server: RedisServer, world: World
) -> None:
    async with running_daemon(
        redis_url=redis_server.url,
        **pair(world),
        sections={"gates": {"cooldown_s": 600}},
    ) as d:
        world.write(context=CALM)
        await running(d)
        await until_gates(d, lambda g: all(x["open"] for x in g.values()))
        r = await d.cli("deploy", "green")
        assert r.rc == 0, r.err
        green = await d.wait_status(lambda s: s["children"]["green"]["pid"] is not None)
        os.kill(green["children"]["green"]["pid"], signal.SIGKILL)  # the candidate dies acting
        await d.wait_log("flip", by="guard")
        await running(d)
        shut = await until_gates(d, lambda g: not g["cooldown"]["open"])
        assert "automatic rollback" in shut["cooldown"]["reason"]
        r = await d.cli("deploy", "green")
        assert r.rc == 1
        assert closed_in(r.err) == {"cooldown"}


async def test_a_stateful_pair_is_handed_over_after_a_fresh_snapshot(
    redis_server: RedisServer, world: World
) -> None:
    async with running_daemon(
        redis_url=redis_server.url, **pair(world, CTX_STATE="1"), sections={}
    ) as d:
        world.write(context=CALM)
        await running(d)
        shown = await until_gates(d, lambda g: g["escrow_dispute"]["open"])
        assert not shown["snapshot"]["open"]  # none taken yet: the deploy takes one first
        assert shown["snapshot"]["reason"] == "no snapshot of blue yet"
        r = await d.cli("deploy", "green", "--json")
        assert r.rc == 0, r.err
        done = r.json()
        assert done["step"] == "handoff"
        assert done["handoff"]["to"] == "green"
        await d.wait_log("child_output", color="green", where=lambda x: "restored" in x["line"])
        assert (await d.status())["active"] == "green"


async def test_a_canary_step_the_judge_passes_waits_for_the_gates(
    redis_server: RedisServer, world: World
) -> None:
    disputes = world.path.parent / "disputes"
    disputes.write_text("1")
    env = {
        "CANARY_DIR": str(world.path.parent),
        "CANARY_ROUND_S": "0.003",
        "CANARY_DISPUTES_FILE": str(disputes),
    }
    async with running_daemon(
        redis_url=redis_server.url,
        blue=agent(CANARY_AGENT, "1.0.0", env=env),
        green=agent(CANARY_AGENT, "2.0.0", env=env),
        sections={
            "canary": {
                "steps": [5.0, 20.0, 100.0],
                "min_rounds": 40,
                "min_seconds": 0.5,
                "judge": {"look_s": 0.25},
            },
            "gates": {"disabled": ["volatility", "auto_release"]},
        },
    ) as d:
        await running(d)
        await until_gates(d, lambda g: not g["escrow_dispute"]["open"])
        r = await d.cli("deploy", "green", "--strategy", "canary")
        assert r.rc == 1
        assert closed_in(r.err) == {"escrow_dispute"}
        r = await d.cli(
            "deploy", "green", "--strategy", "canary", "--force", "--reason", "test", "--json"
        )
        assert r.rc == 0, r.err
        assert r.json()["step"] == "canary_start"
        gated = await d.wait_log("canary_step_gated", timeout=30)
        assert gated["percent"] == 5.0
        assert gated["closed"][0].startswith("escrow_dispute")
        st = await d.status()
        assert (st["mode"], st["canary"]["percent"], st["canary"]["state"]) == (
            "canary",
            5.0,
            "gated",
        )
        assert not d.find("flip", reason="canary_step: 20% (judge: pass)")
        disputes.write_text("0")  # the dispute is settled: the step moves on by itself
        await d.wait_log("canary_step_ungated", timeout=15)
        await d.wait_log("flip", reason="canary_step: 20% (judge: pass)", timeout=30)
