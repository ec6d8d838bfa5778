"""Feature flags end to end: a real daemon, real children, a real redis-server.

An agent written the seed's way (its ``Flags`` class, verbatim) reads what ``agentsup flags
set`` writes, and the CLI reads what the seed's ``Flags.set`` writes; an operator's
``redis-cli SET`` reaches SDK agents, pushed, and is in the history with ``who=redis``; a value
that does not fit is refused by ``flags set`` and, written raw, leaves the children on the last
good value and is counted; a per-color value overrides the global one for that color only.
"""

from __future__ import annotations

import asyncio
import json
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.harness import DaemonProcess, agent, running_daemon
from tests.redis_server import RedisServer

AGENTS = Path(__file__).parent.parent / "agents"
SEED_FLAGS_AGENT = [sys.executable, str(AGENTS / "flags_seed_agent.py")]
SDK_FLAGS_AGENT = [sys.executable, str(AGENTS / "flags_agent.py")]
# Both colors run the SDK agent that prints every flags push it gets.
SDK_PAIR = {
    "blue": agent(SDK_FLAGS_AGENT, version="1.0.0"),
    "green": agent(SDK_FLAGS_AGENT, version="2.0.0"),
}

# The seed's DEFAULTS as the schema (DESIGN.md's example), the escrows flag a kill switch.
FLAGS: dict[str, Any] = {
    "game": {"type": "choice", "choices": ["coinflip", "dice", "crash"], "default": "coinflip"},
    "crash_target": {"type": "float", "default": 2.0, "min": 1.01},
    "accept_escrows": {"type": "bool", "default": True, "kill_switch": True},
    "max_session_bets": {"type": "int", "default": 50, "min": 1},
}


@pytest.fixture
def r(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    yield client
    client.close()


def _pushed(d: DaemonProcess, color: str, since: int = 0, **want: Any) -> Any:
    """Wait until ``color``'s SDK agent printed a flags push holding ``want``."""

    def holds(rec: dict[str, Any]) -> bool:
        words = rec.get("line", "").split(" ", 2)
        if len(words) < 3 or words[0] != "flags" or words[1] != color:
            return False
        values = json.JSONDecoder().raw_decode(words[2])[0]
        return all(values.get(k) == v for k, v in want.items())

    return d.wait_log("child_output", color=color, since=since, where=holds)


def _seed_read(d: DaemonProcess, color: str, since: int = 0, **want: Any) -> Any:
    def holds(rec: dict[str, Any]) -> bool:
        line = rec.get("line", "")
        prefix = f"seed-flags {color} "
        if not line.startswith(prefix):
            return False
        values = json.loads(line[len(prefix) :])
        return all(values.get(k) == v and type(values.get(k)) is type(v) for k, v in want.items())

    return d.wait_log("child_output", color=color, since=since, where=holds)


def _scrape(d: DaemonProcess) -> str:
    port = int(d.find("metrics_listening")[0]["address"].rsplit(":", 1)[1])
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text: str = resp.read().decode()
    return text


async def test_a_seed_agent_reads_what_flags_set_writes_and_the_cli_reads_the_seeds(
    redis_server: RedisServer,
) -> None:
    async with running_daemon(
        redis_url=redis_server.url,
        blue=agent(SEED_FLAGS_AGENT, version="1.0.0"),
        green=agent(SEED_FLAGS_AGENT, version="2.0.0"),
        sections={"flags": FLAGS},
    ) as d:
        await _seed_read(d, "blue", game="coinflip", crash_target=2.0)
        for name, value in (("game", "dice"), ("crash_target", "3"), ("accept_escrows", "no")):
            res = await d.cli("flags", "set", name, value, "--reason", "test")
            assert res.rc == 0, res.err
        # Read by the seed's own Flags.get: the text, a float, a bool.
        for color in ("blue", "green"):
            await _seed_read(d, color, game="dice", crash_target=3.0, accept_escrows=False)

        # The other way: the seed's Flags.set, then the CLI.
        sys.path.insert(0, str(AGENTS))
        try:
            import flags_seed_agent as seed  # type: ignore[import-not-found]
        finally:
            sys.path.remove(str(AGENTS))
        seed.URL = redis_server.url
        since = len(d.logs)
        await asyncio.to_thread(lambda: seed.Flags().set("max_session_bets", 80))
        await d.wait_log("flag_changed", since=since, flag="max_session_bets", who="redis")
        got = (await d.cli("flags", "get", "max_session_bets", "--json")).json()
        assert got["global"] == 80
        assert got["effective"]["blue"] == {"value": 80, "source": "global"}
        await asyncio.to_thread(lambda: seed.Flags().set("crash_target", 2.5))
        await d.wait_log("flag_changed", since=since, flag="crash_target", who="redis")
        listed = (await d.cli("flags", "list", "--json")).json()["flags"]
        assert {f["name"]: f["global"] for f in listed}["crash_target"] == 2.5
        # The seed's Flags.set(k, Flags.get(k)) of an int writes "80.0": still 80, no change.
        await asyncio.to_thread(lambda: seed.Flags().set("max_session_bets", 80.0))
        history = (await d.cli("flags", "history", "--json")).json()["entries"]
        assert [e["name"] for e in history[:2]] == ["crash_target", "max_session_bets"]
        assert history[0]["who"] == "redis"
        assert history[0]["old"] == "3.0"
        assert history[0]["new"] == "2.5"
        by_cli = next(e for e in history if e["name"] == "game")
        assert by_cli["who"].startswith("uid:")
        assert by_cli["reason"] == "test"


async def test_a_redis_cli_change_is_pushed_logged_and_a_bad_one_is_held_back(
    redis_server: RedisServer, r: redis.Redis
) -> None:
    async with running_daemon(
        redis_url=redis_server.url,
        **SDK_PAIR,
        sections={"flags": FLAGS},
    ) as d:
        # After hello: the defaults, typed.
        first = await _pushed(d, "blue", game="coinflip", crash_target=2.0, max_session_bets=50)
        assert '"accept_escrows": true' in first["line"]
        await _pushed(d, "green", game="coinflip")

        since = len(d.logs)
        r.set("flag:game", "dice")  # the operator's redis-cli SET
        for color in ("blue", "green"):
            await _pushed(d, color, since=since, game="dice")
        history = (await d.cli("flags", "history", "game", "--json")).json()["entries"]
        assert history[0]["who"] == "redis"
        assert (history[0]["old"], history[0]["new"]) == ("", "dice")

        # Text the schema refuses: the children stay on dice; counted, logged, shown.
        since = len(d.logs)
        r.set("flag:game", "roulette")
        bad = await d.wait_log("flag_value_invalid", since=since, flag="game")
        assert bad["kept"] == "dice"
        st = await d.status()
        assert st["flags"]["values"]["blue"]["game"] == "dice"
        assert st["flags"]["invalid"] == {"flag:game": "roulette"}
        assert 'agentsup_flag_invalid_total{flag="game"} 1.0' in _scrape(d)
        assert 'agentsup_flag_value_invalid{flag="game"} 1.0' in _scrape(d)
        pushed = [rec for rec in d.find("child_output", since=since) if "roulette" in rec["line"]]
        assert pushed == []
        got = (await d.cli("flags", "get", "game")).out
        assert "INVALID flag:game = 'roulette'" in got

        # Fixed: taken in, pushed, the alert's gauge back to 0.
        since = len(d.logs)
        r.set("flag:game", "crash")
        await _pushed(d, "green", since=since, game="crash")
        await d.wait_log("flag_value_fixed", since=since, flag="game")
        assert 'agentsup_flag_value_invalid{flag="game"} 0.0' in _scrape(d)
        assert 'agentsup_flag_changes_total{flag="game",source="redis"} 2.0' in _scrape(d)


async def test_flags_set_refuses_what_does_not_fit_and_a_color_value_overrides(
    redis_server: RedisServer, r: redis.Redis
) -> None:
    async with running_daemon(
        redis_url=redis_server.url,
        **SDK_PAIR,
        sections={"flags": FLAGS},
    ) as d:
        await _pushed(d, "green", game="coinflip")
        for args, why in (
            (("crash_target", "0.5"), "must be at least 1.01"),
            (("game", "roulette"), "must be one of coinflip, dice, crash"),
            (("max_session_bets", "2.5"), "is not an integer"),
            (("accept_escrows", "maybe"), "is not a bool"),
            (("nope", "1"), "no flag 'nope'"),
        ):
            res = await d.cli("flags", "set", *args)
            assert res.rc == 1, (args, res.out)
            assert why in res.err, res.err
        assert r.keys("flag:*") == []
        res = await d.cli("flags", "set", "accept_escrows", "false", "--color", "green")
        assert res.rc == 1
        assert "kill switch" in res.err

        # Green's own crash target; blue keeps the default.
        since = len(d.logs)
        res = await d.cli("flags", "set", "crash_target", "3.5", "--color", "green", "--json")
        assert res.rc == 0, res.err
        assert res.json() == {"name": "crash_target", "color": "green", "old": None, "new": "3.5"}
        line = (await _pushed(d, "green", since=since, crash_target=3.5))["line"]
        assert '"crash_target": "color"' in line
        assert r.get("t:flags:color:green:crash_target") == "3.5"
        assert r.get("flag:crash_target") is None
        # The global value: blue takes it, green keeps its own.
        since = len(d.logs)
        assert (await d.cli("flags", "set", "crash_target", "2.5")).rc == 0
        await _pushed(d, "blue", since=since, crash_target=2.5)
        st = await d.status()
        assert st["flags"]["values"]["green"]["crash_target"] == 3.5
        assert st["flags"]["values"]["blue"]["crash_target"] == 2.5
        # Unset green's own: the global one applies to it too.
        since = len(d.logs)
        assert (await d.cli("flags", "unset", "crash_target", "--color", "green")).rc == 0
        await _pushed(d, "green", since=since, crash_target=2.5)
        # The kill switch: off for everyone at once.
        since = len(d.logs)
        assert (await d.cli("flags", "set", "accept_escrows", "false")).rc == 0
        for color in ("blue", "green"):
            await _pushed(d, color, since=since, accept_escrows=False)
        assert r.get("flag:accept_escrows") == "False"
        text = (await d.cli("flags", "list")).out
        assert "crash_target" in text
        assert "global/global" in text


async def test_after_a_redis_restart_changes_are_picked_up_again_and_recorded(
    redis_server: RedisServer, r: redis.Redis
) -> None:
    async with running_daemon(
        redis_url=redis_server.url,
        **SDK_PAIR,
        sections={"flags": FLAGS, "redis": {"health_interval_s": 0.1}},
    ) as d:
        await _pushed(d, "blue", game="coinflip")
        assert (await d.cli("flags", "set", "game", "dice", "--reason", "before")).rc == 0
        await _pushed(d, "blue", game="dice")
        # The decision log has the change, as a `flag` record.
        log_path = d.state_dir / "decisions.jsonl"
        async with asyncio.timeout(10):
            while '"kind":"flag"' not in (log_path.read_text() if log_path.exists() else ""):
                await asyncio.sleep(0.05)
        record = next(
            json.loads(line) for line in log_path.read_text().splitlines() if '"flag"' in line
        )
        assert (record["name"], record["new"], record["reason"]) == ("game", "dice", "before")

        redis_server.stop()
        await d.wait_log("redis_down")
        since = len(d.logs)
        redis_server.start()  # empty: the daemon puts the flags back (test_flags_redis_lost.py)
        await d.wait_log("redis_up", since=since)
        await d.wait_log("flag_put_back", since=since, key="flag:game", now="dice")
        since = len(d.logs)
        r.set("flag:game", "crash")  # the watch is back: picked up and pushed
        for color in ("blue", "green"):
            await _pushed(d, color, since=since, game="crash")
        history = (await d.cli("flags", "history", "game", "--json")).json()["entries"]
        assert (history[0]["who"], history[0]["new"]) == ("redis", "crash")
