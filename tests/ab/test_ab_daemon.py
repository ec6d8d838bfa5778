"""A/B tests end to end: a real daemon, real SDK children playing crash rounds as fast as the
fence lets them, a real redis-server. What must hold: each arm stays within its share of the
test's stake, the winner's value reaches both children as the global flag, a restart (clean
or kill -9) keeps the arms and their sums, and every refusal is a clear code."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import PY, DaemonProcess, agent, running_daemon
from tests.redis_server import RedisServer, short_tempdir

AB_AGENT = [PY, "tests/agents/ab_agent.py"]
ALLOWANCE = 0.01
FLAGS = {
    "crash_target": {"type": "float", "default": 2.0, "min": 1.01},
    "accept_escrows": {"type": "bool", "default": True, "kill_switch": True},
}


@pytest.fixture
def plays() -> Iterator[Path]:
    """Where the agents write every permit's answer."""
    directory = short_tempdir("as-ab-")
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def agents(
    plays: Path, green_version: str = "1.0.0", **env: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Blue's and green's ``[agents.COLOR]`` tables."""
    both = {"AB_DIR": str(plays), **env}
    # Two slots may not be identical (the config refuses it): each knows its arm.
    return (
        agent(AB_AGENT, "1.0.0", env={**both, "AB_ARM": "a"}),
        agent(AB_AGENT, green_version, env={**both, "AB_ARM": "b"}),
    )


def answers(plays: Path, color: str) -> list[tuple[int, str, float]]:
    """Every permit answer a color heard: (epoch asked with, reason, amount)."""
    path = plays / f"{color}.permits"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] != "None":
            out.append((int(parts[0]), parts[1], float(parts[2])))
    return out


def granted(plays: Path) -> dict[int, dict[str, float]]:
    """Stake granted per epoch and color."""
    per: dict[int, dict[str, float]] = defaultdict(lambda: {"blue": 0.0, "green": 0.0})
    for color in ("blue", "green"):
        for epoch, reason, amount in answers(plays, color):
            if reason == "ok":
                per[epoch][color] += amount
    return per


def grants(plays: Path, color: str, epoch: int) -> int:
    return sum(1 for e, r, _ in answers(plays, color) if e == epoch and r == "ok")


async def until(check: Any, what: str, timeout: float = 20.0) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not check():
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


def told(d: DaemonProcess, color: str, value: str, since: int = 0) -> bool:
    """Whether ``color``'s child printed a flags push with crash_target = ``value``."""
    line = f"flags {color} crash_target={value}"
    return any(line in str(r.get("line", "")) for r in d.find("child_output", since))


async def both_running(d: DaemonProcess) -> None:
    await d.wait_status(
        lambda s: all(c["state"] == "RUNNING" and c["protocol"] for c in s["children"].values())
    )


async def ab_start(d: DaemonProcess, *args: str) -> dict[str, Any]:
    await both_running(d)
    r = await d.cli("ab", "start", "--flag", "crash_target", "--a", "2.0", "--b", "3", *args)
    assert r.rc == 0, r.err
    st = await d.status()
    assert (st["mode"], st["active"], st["candidate"]) == ("ab", "blue", "green")
    return st


async def report(d: DaemonProcess) -> dict[str, Any]:
    r = await d.cli("ab", "report", "--json")
    assert r.rc == 0, r.err
    result: dict[str, Any] = r.json()
    return result


async def test_the_split_holds_at_full_speed_and_the_winner_becomes_everyones_flag(
    redis_server: RedisServer, plays: Path, tmp_path: Path
) -> None:
    blue, green = agents(plays)
    async with running_daemon(
        redis_url=redis_server.url, blue=blue, green=green, sections={"flags": FLAGS}
    ) as d:
        st = await ab_start(d, "--min-rounds", "50")
        epoch = st["epoch"]
        assert st["allocation"] == {"blue": 0.5, "green": 0.5}
        assert st["ab"]["flag"] == "crash_target"
        # Each arm was pushed its own value (3 is stored as 3.0: a float flag).
        await until(lambda: told(d, "blue", "2.0") and told(d, "green", "3.0"), "the arms' values")
        await until(
            lambda: grants(plays, "blue", epoch) >= 150 and grants(plays, "green", epoch) >= 150,
            "both arms playing",
            timeout=40,
        )
        # The page plots the sampled series (a point per save): wait for two with rounds.
        async with asyncio.timeout(20):
            while True:
                r = await report(d)
                if len([p for p in r["series"] if p[1] >= 2 and p[5] >= 2]) >= 2:
                    break
                await asyncio.sleep(0.1)
        assert r["running"] is True
        assert (r["arms"]["a"]["value"], r["arms"]["b"]["value"]) == ("2.0", "3.0")
        assert r["arms"]["a"]["rounds"] > 0
        assert r["arms"]["b"]["rounds"] > 0
        assert r["fence"]["in_force"] is True
        for metric in ("return", "win_rate"):
            assert r["verdict"][metric] in ("a_better", "b_better", "not_yet")
            low, high = r["difference"][metric]["ci"]
            assert low <= r["difference"][metric]["b_minus_a"] <= high
        assert r["srm"]["rounds"] is not None
        human = await d.cli("ab", "report", "--html", str(tmp_path / "ab.html"))
        assert human.rc == 0, human.err
        assert "B − A return" in human.out
        page = (tmp_path / "ab.html").read_text()
        assert page.startswith("<!DOCTYPE html>")
        assert "<polygon" in page

        mark = len(d.logs)
        stop = await d.cli("ab", "stop", "--winner", "b", "--json")
        assert stop.rc == 0, stop.err
        assert stop.json()["ended"]["value"] == "3.0"
        await until(
            lambda: told(d, "blue", "3.0", mark) and told(d, "green", "3.0", mark),
            "both children told the winner's value",
        )
        st = await d.status()
        assert (st["mode"], st["active"], st["candidate"]) == ("blue-green", "blue", None)
        assert st["epoch"] == epoch + 1
        assert st["flags"]["values"] == {
            "blue": {"crash_target": 3.0, "accept_escrows": True},
            "green": {"crash_target": 3.0, "accept_escrows": True},
        }
        assert redis_server.cli("GET", "flag:crash_target") == "3.0"
        assert redis_server.cli("EXISTS", "t:flags:color:green:crash_target") == "0"
        history = (await d.cli("flags", "history", "crash_target", "--json")).json()["entries"]
        reasons = [(h["op"], h["color"] or None, h["reason"]) for h in history]
        assert ("set", "blue", "ab test") in reasons
        assert ("set", "green", "ab test") in reasons
        assert ("set", None, "ab test: winner b") in reasons
        assert ("unset", "green", "ab test ended") in reasons
        assert all(re.fullmatch(r"uid:\d+", h["who"]) for h in history)
        again = await d.cli("ab", "stop")
        assert (again.rc, "no_ab" in again.err) == (1, True)

    # The fence's promise, from what the agents heard: each arm within its share plus the
    # allowance of the test's stake (start_amount is 0).
    stakes = granted(plays)[epoch]
    total = stakes["blue"] + stakes["green"]
    assert stakes["blue"] > 0
    assert stakes["green"] > 0
    for color in ("blue", "green"):
        assert stakes[color] <= (0.5 + ALLOWANCE) * total + 1e-6, stakes
    refused = [a for c in ("blue", "green") for a in answers(plays, c) if a[1] == "over_allocation"]
    assert refused  # at full speed the fence had to hold one arm back


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill-9"])
async def test_a_restart_mid_test_keeps_the_arms_and_their_sums(
    redis_server: RedisServer, plays: Path, sig: int
) -> None:
    blue, green = agents(plays, AB_ROUND_S="0.002")
    async with running_daemon(
        redis_url=redis_server.url, blue=blue, green=green, sections={"flags": FLAGS}
    ) as d:
        st = await ab_start(d, "--split", "30", "--min-rounds", "20")
        epoch = st["epoch"]
        before: dict[str, Any] = {}

        async def saved_enough() -> bool:
            before.update(await report(d))
            saved = before["saved"]["rounds"]
            return bool(saved["a"] >= 30 and saved["b"] >= 30)

        async with asyncio.timeout(30):
            while not await saved_enough():
                await asyncio.sleep(0.2)
        saved = before["saved"]["rounds"]
        await d.signal(sig)
        await d.wait()
        again = DaemonProcess(d.dir, d.config, d.env)
        await again.start()
        st = await again.wait_status(lambda s: s["epoch"] > epoch)
        assert (st["mode"], st["active"], st["candidate"]) == ("ab", "blue", "green")
        assert st["allocation"] == {"blue": 0.7, "green": 0.3}
        assert st["ab"]["flag"] == "crash_target"
        after = await report(again)
        assert after["since"] == before["since"]
        assert (after["arms"]["a"]["value"], after["arms"]["b"]["value"]) == ("2.0", "3.0")
        for arm in ("a", "b"):
            assert after["arms"][arm]["rounds"] >= saved[arm], (arm, saved, after["arms"])
        # The arms play on with their own values, and the sums grow from where they were.
        await until(lambda: told(again, "green", "3.0"), "green told its value again")
        later: dict[str, Any] = {}

        async def grew() -> bool:
            later.update(await report(again))
            return all(later["arms"][a]["rounds"] > saved[a] + 20 for a in ("a", "b"))

        async with asyncio.timeout(30):
            while not await grew():
                await asyncio.sleep(0.2)
        stop = await again.cli("ab", "stop", "--winner", "a")
        assert stop.rc == 0, stop.err
        assert redis_server.cli("GET", "flag:crash_target") == "2.0"
        await again.stop()


async def test_refusals_are_clear_codes(redis_server: RedisServer, plays: Path) -> None:
    blue, green = agents(plays, green_version="2.0.0", AB_ROUND_S="0.01")
    async with running_daemon(
        redis_url=redis_server.url,
        blue=blue,
        green=green,
        sections={"flags": FLAGS},
    ) as d:
        await both_running(d)
        r = await d.cli("ab", "start", "--flag", "crash_target", "--a", "2", "--b", "3")
        assert (r.rc, "versions_differ" in r.err) == (1, True), r.err
        assert (await d.status())["mode"] == "blue-green"
        # Nothing was written: no per-color value.
        assert redis_server.cli("EXISTS", "t:flags:color:blue:crash_target") == "0"


async def test_refusals_with_one_version(redis_server: RedisServer, plays: Path) -> None:
    blue, green = agents(plays, AB_ROUND_S="0.01")
    # After the switch below green plays arm B's value against blue's baseline: pnl_sigma could
    # roll it back (rightly) before the last refusal is asked, which is not what this tests.
    quiet = {"pnl_sigma": {"enabled": False}, "latency": {"enabled": False}}
    async with running_daemon(
        redis_url=redis_server.url,
        blue=blue,
        green=green,
        sections={"flags": FLAGS, "triggers": quiet},
    ) as d:
        await both_running(d)
        cases = [
            (["--flag", "nope", "--a", "1", "--b", "2"], "unknown_flag"),
            (["--flag", "crash_target", "--a", "2.0", "--b", "0.5"], "bad_value"),
            (["--flag", "crash_target", "--a", "two", "--b", "3"], "bad_value"),
            (["--flag", "accept_escrows", "--a", "true", "--b", "false"], "kill_switch"),
        ]
        for args, code in cases:
            r = await d.cli("ab", "start", *args)
            assert (r.rc, code in r.err) == (1, True), (args, r.err)
        assert (await d.status())["mode"] == "blue-green"
        r = await d.cli("ab", "stop")
        assert (r.rc, "no_ab" in r.err) == (1, True), r.err
        await ab_start(d)
        r = await d.cli("ab", "start", "--flag", "crash_target", "--a", "2", "--b", "3")
        assert (r.rc, "ab_in_progress" in r.err) == (1, True), r.err
        r = await d.cli("canary", "start", "green")
        assert (r.rc, "ab_in_progress" in r.err) == (1, True), r.err
        r = await d.cli("shadow", "start", "green")
        assert r.rc == 1, r.err
        # Stopped without a winner: the per-color values go, no global value is written.
        stop = await d.cli("ab", "stop")
        assert stop.rc == 0, stop.err
        assert redis_server.cli("EXISTS", "t:flags:color:blue:crash_target") == "0"
        assert redis_server.cli("EXISTS", "flag:crash_target") == "0"
        assert (await d.status())["mode"] == "blue-green"
        # An operator's switch ends a test as it ends a canary; its report stays readable.
        await ab_start(d)
        r = await d.cli("switch", "green")
        assert r.rc == 0, r.err
        st = await d.status()
        assert (st["mode"], st["active"], st["candidate"], st["ab"]) == (
            "blue-green",
            "green",
            "green",
            None,
        )
        ended = await report(d)
        assert ended["running"] is False
        assert ended["ended"]["reason"] == "switch"
        r = await d.cli("ab", "start", "--flag", "crash_target", "--a", "2", "--b", "3")
        after = await d.status()
        assert (r.rc, "candidate_in_charge" in r.err) == (1, True), (
            r.err,
            after["active"],
            after["candidate"],
            after["flips"][:2],
        )


@pytest.mark.parametrize("arm", ["a", "b"])
async def test_an_arm_whose_process_dies_ends_the_test(
    redis_server: RedisServer, plays: Path, arm: str
) -> None:
    """Killed with -9, an arm's process is restarted; the test does not wait for it: the arms
    no longer ran side by side, and the other arm was held at its share meanwhile. It ends
    with no winner (blue in charge alone, green standing by), its sums kept for the report."""
    blue, green = agents(plays)
    async with running_daemon(
        redis_url=redis_server.url, blue=blue, green=green, sections={"flags": FLAGS}
    ) as d:
        st = await ab_start(d)
        color = "blue" if arm == "a" else "green"
        await until(lambda: grants(plays, color, st["epoch"]) >= 5, f"{color} playing")
        os.kill(d.child_pids()[color], signal.SIGKILL)
        stopped = await d.wait_log("ab_stopped", timeout=20)
        assert stopped["winner"] is None
        assert stopped["by"] == "supervisor"
        st = await d.status()
        assert (st["mode"], st["active"], st["candidate"]) == ("blue-green", "blue", None)
        flip = d.find("flip", epoch=stopped["epoch"])[0]
        assert flip["reason"] == f"ab_stop: arm {arm} ({color}) exited with -9"
        r = await report(d)
        assert r["running"] is False
        assert r["ended"]["reason"] == flip["reason"]
        assert r["arms"][arm]["rounds"] > 0  # the sums were kept
        # Neither arm keeps a value of its own: both read the global flag again.
        assert redis_server.cli("EXISTS", f"t:flags:color:{color}:crash_target") == "0"
        await d.wait_status(lambda s: s["children"][color]["state"] == "RUNNING")
