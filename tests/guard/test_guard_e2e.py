"""The rollback guard end to end: a misbehaving variant of the demo agent for each trigger,
rolled back within its bound with its reason recorded; a healthy candidate kept; the webhook
told. Real daemon, real Redis, real child processes; deterministic seeds."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any, ClassVar

import pytest

from tests.harness import DaemonProcess, agent, running_daemon
from tests.redis_server import RedisServer

# The demo's rounds pay +0.98/+1.0 or -1.0 with a 1 % house edge: mean about -0.01, σ about 1.
CASINO_BASELINE = {"baseline_mean": -0.01, "baseline_std": 1.0}


def demo(version: str, **env: str) -> dict[str, Any]:
    return agent(None, version, env={"AGENTSUP_DEMO_ROUND_S": "0.01", **env})


async def switch_to_green(d: DaemonProcess, blue_rounds: int = 0) -> None:
    await d.wait_status(lambda s: all(c["protocol"] for c in s["children"].values()))
    if blue_rounds:
        await d.wait_status(lambda s: s["children"]["blue"]["rounds"] >= blue_rounds, 30)
    r = await d.cli("switch", "green")
    assert r.rc == 0, r.err


async def rolled_back(d: DaemonProcess, trigger: str, timeout: float = 30) -> dict[str, Any]:
    flip = await d.wait_log("flip", trigger=trigger, timeout=timeout)
    assert flip["active"] == "blue"
    st = await d.status()
    assert st["rejected"] == {"green": "2.0.0"}
    assert st["flips"][0]["reason"].startswith(f"{trigger}: ")
    assert st["triggers"][trigger]["colors"]["green"]["last_fired"] is not None
    return flip


async def test_drifting_pnl_is_rolled_back_by_pnl_sigma(redis_server: RedisServer) -> None:
    async with running_daemon(
        redis_url=redis_server.url,
        blue=demo("1.0.0"),
        green=demo("2.0.0", AGENTSUP_DEMO_BUG="drift", AGENTSUP_DEMO_BUG_AFTER="0"),
        sections={"triggers.pnl_sigma": CASINO_BASELINE},
    ) as d:
        await switch_to_green(d)
        flip = await rolled_back(d, "pnl_sigma")
        assert "below baseline" in flip["reason"]
        # The seed's bound: after 10 rounds (the sequential detector needs a few more for
        # a -0.8σ drift; well under 60 s either way).
        rounds = (await d.status())["children"]["green"]["rounds"]
        assert 6 <= rounds <= 80


async def test_slow_decisions_alert_at_once_and_roll_back_when_they_last(
    redis_server: RedisServer,
) -> None:
    async with running_daemon(
        redis_url=redis_server.url,
        blue=demo("1.0.0"),
        green=demo("2.0.0", AGENTSUP_DEMO_BUG="slow", AGENTSUP_DEMO_BUG_AFTER="0"),
        sections={"triggers.latency": {"persist_s": 1.5, "min_samples": 10, "window": 20}},
    ) as d:
        await switch_to_green(d, blue_rounds=15)
        alert = await d.wait_log("trigger_fired", trigger="latency", action="alert")
        assert alert["value"] > 2.0
        flip = await rolled_back(d, "latency")
        assert "stable" in flip["reason"]
        # The rollback waited for persist_s after the alert.
        assert len(d.find("trigger_fired", trigger="latency", action="rollback")) == 1


async def test_a_key_executed_by_blue_then_by_green_is_a_double_spend(
    redis_server: RedisServer,
) -> None:
    async with running_daemon(
        redis_url=redis_server.url,
        blue=demo("1.0.0", AGENTSUP_DEMO_KEYS="order"),
        green=demo("2.0.0", AGENTSUP_DEMO_BUG="double_spend", AGENTSUP_DEMO_BUG_AFTER="0"),
    ) as d:
        await switch_to_green(d, blue_rounds=3)
        flip = await rolled_back(d, "double_spend", timeout=15)
        assert "executed twice: by blue" in flip["reason"]
        assert "now by green" in flip["reason"]
        fired = d.find("trigger_fired", trigger="double_spend")[0]
        switched = d.find("flip", reason="switch")[0]
        # Detected as soon as green reported the execution: the whole flip within a second.
        assert fired["timestamp"] >= switched["timestamp"]


async def test_an_escrow_left_unchecked_is_rolled_back_and_listed(
    redis_server: RedisServer,
) -> None:
    async with running_daemon(
        redis_url=redis_server.url,
        blue=demo("1.0.0", AGENTSUP_DEMO_ESCROW_CHECK_S="0.2"),
        green=demo(
            "2.0.0",
            AGENTSUP_DEMO_BUG="escrow_gap",
            AGENTSUP_DEMO_BUG_AFTER="0",
            AGENTSUP_DEMO_ESCROW_CHECK_S="0.2",
        ),
        sections={"triggers.escrow_gap": {"gap_s": 1.0}},
    ) as d:
        await switch_to_green(d, blue_rounds=3)
        flip = await rolled_back(d, "escrow_gap", timeout=20)
        assert "escrow-1" in flip["reason"]
        assert "escrow-2" in flip["reason"]


@pytest.mark.slow
async def test_a_healthy_candidate_is_kept_through_1500_rounds(redis_server: RedisServer) -> None:
    fast = {"AGENTSUP_DEMO_ROUND_S": "0", "AGENTSUP_DEMO_THINK_MS": "0.5"}
    async with running_daemon(
        redis_url=redis_server.url,
        blue=agent(None, "1.0.0", env=fast),
        green=agent(None, "2.0.0", env={**fast, "AGENTSUP_DEMO_SEED": "11"}),
        sections={"triggers.pnl_sigma": CASINO_BASELINE},
    ) as d:
        await switch_to_green(d, blue_rounds=100)
        st = await d.wait_status(lambda s: s["children"]["green"]["rounds"] >= 1500, 120)
        assert st["active"] == "green"
        assert st["candidate"] == "green"
        fired = [r for r in d.find("trigger_fired") if r["trigger"] != "pnl_ok"]
        assert fired == []
        triggers = (await d.cli("triggers", "--json")).json()
        assert triggers["pnl_sigma"]["colors"]["green"]["rounds"] >= 1500
        assert triggers["pnl_sigma"]["colors"]["green"]["state"] == "ok"
        table = (await d.cli("triggers")).out
        assert "pnl_sigma" in table
        assert "latency" in table
        assert "escrow_gap" in table


class Hook(BaseHTTPRequestHandler):
    received: ClassVar[list[dict[str, Any]]] = []
    arrived: ClassVar[threading.Event] = threading.Event()

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Hook.received.append(json.loads(body))
        Hook.arrived.set()
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def webhook() -> Iterator[str]:
    server = HTTPServer(("127.0.0.1", 0), Hook)
    Hook.received = []
    Hook.arrived.clear()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/alerts"
    finally:
        server.shutdown()
        server.server_close()


async def test_the_webhook_receives_the_alert(redis_server: RedisServer, webhook: str) -> None:
    async with running_daemon(
        redis_url=redis_server.url,
        blue=demo("1.0.0"),
        green=demo("2.0.0", AGENTSUP_DEMO_BUG="exception", AGENTSUP_DEMO_BUG_AFTER="2"),
        sections={"alerts": {"webhook_url": webhook}},
    ) as d:
        await switch_to_green(d)
        await rolled_back(d, "exception")
        assert await asyncio.to_thread(Hook.arrived.wait, 10)
        alert = Hook.received[0]
        assert alert["trigger"] == "exception"
        assert alert["severity"] == "critical"
        assert alert["color"] == "green"
        assert alert["version"] == "2.0.0"
        assert alert["rollback"] is True
        assert alert["supervisor"] == "test"
        assert "KeyError" in alert["message"]
