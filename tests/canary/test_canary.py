"""Canary end to end: a real daemon, real SDK children asking for permits as fast as they
can, a real redis-server. What must hold is the fence's promise: the candidate never takes
more than its share of a step's stake, and every change of the split is one epoch."""

from __future__ import annotations

import asyncio
import shutil
import signal
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis import Redis

from supervisor.arbiter.scripts import PERMIT, Keys
from tests.harness import PY, DaemonProcess, agent, running_daemon
from tests.redis_server import RedisServer, short_tempdir

CANARY_AGENT = [PY, "tests/agents/canary_agent.py"]
KEYS = Keys("t", "agent:active_version")
ALLOWANCE = 0.01
# The judge never decides in the tests that drive the steps by hand.
BY_HAND = {"min_rounds": 1_000_000, "min_seconds": 0.0, "auto_promote": False}


@pytest.fixture
def plays() -> Iterator[Path]:
    """Where the canary agents write every permit's answer."""
    directory = short_tempdir("as-c-")
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def agents(
    plays: Path, green: dict[str, str] | None = None, both: dict[str, str] | None = None
) -> dict[str, dict[str, Any]]:
    env = {"CANARY_DIR": str(plays), **(both or {})}
    return {
        "blue": agent(CANARY_AGENT, "1.0.0", env=env),
        "green": agent(CANARY_AGENT, "2.0.0", env={**env, **(green or {})}),
    }


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


async def until(check: Any, what: str, timeout: float = 20.0) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not check():
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


def permit(server: RedisServer, color: str, epoch: int, key: str, amount: float) -> str:
    """The permit script called as the daemon calls it (the fence itself)."""
    r = Redis.from_url(server.url)
    try:
        answer = r.register_script(PERMIT)(
            keys=KEYS.permit_keys(key, color),
            args=[color, str(epoch), "60000", "t", "0", key, "1000", repr(amount)],
        )[0]
        return answer.decode() if isinstance(answer, bytes) else str(answer)
    finally:
        r.close()


def scrape(d: DaemonProcess) -> dict[str, float]:
    """The daemon's /metrics, as {series: value}."""
    port = int(d.find("metrics_listening")[0]["address"].rsplit(":", 1)[1])
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


async def start_canary(d: DaemonProcess, *args: str) -> dict[str, Any]:
    await d.wait_status(
        lambda s: all(c["state"] == "RUNNING" and c["protocol"] for c in s["children"].values())
    )
    r = await d.cli("canary", "start", "green", *args, "--json")
    assert r.rc == 0, r.err
    result: dict[str, Any] = r.json()
    assert (result["mode"], result["candidate"], result["active"]) == ("canary", "green", "blue")
    return result


async def test_both_colors_at_full_speed_stay_within_their_shares_in_every_step(
    redis_server: RedisServer, plays: Path
) -> None:
    async with running_daemon(
        redis_url=redis_server.url, **agents(plays), sections={"canary": BY_HAND}
    ) as d:
        first = await start_canary(d)
        assert first["percent"] == 5
        epochs = {first["epoch"]: 0.05}

        def green_grants(epoch: int, at_least: int) -> bool:
            return sum(1 for e, r, _ in answers(plays, "green") if e == epoch and r == "ok") >= (
                at_least
            )

        await until(lambda: green_grants(first["epoch"], 40), "green's grants at 5 %")
        for percent in ("20", "50"):
            r = await d.cli("canary", "set", percent, "--json")
            assert r.rc == 0, r.err
            step = r.json()
            assert step["epoch"] == max(epochs) + 1  # one flip each
            epochs[step["epoch"]] = float(percent) / 100
            await until(lambda e=step["epoch"]: green_grants(e, 40), f"grants at {percent} %")
        metrics = scrape(d)
        assert metrics['agentsup_canary_allocation{color="green"}'] == 0.5
        assert metrics['agentsup_canary_allocation{color="blue"}'] == 0.5
        assert metrics["agentsup_canary_step"] == 3
        assert metrics['agentsup_stake_total{color="green"}'] > 0
        assert metrics['agentsup_flips_total{reason="canary_step"}'] == 2
        status = (await d.cli("canary", "status", "--json")).json()["canary"]
        assert status["percent"] == 50
        assert status["step"] == 3
        assert status["allocation"] == {"blue": 0.5, "green": 0.5}
        human = (await d.cli("canary", "status")).out
        assert "step 3 of 4" in human
        assert "[50%]" in human
        abort = await d.cli("canary", "abort", "--reason", "enough")
        assert abort.rc == 0, abort.err
        await d.wait_log("flip", reason="canary_abort: enough")

    per = granted(plays)
    for epoch, allocation in epochs.items():
        stakes = per[epoch]
        total = stakes["blue"] + stakes["green"]
        assert stakes["green"] > 0, (epoch, stakes)
        assert stakes["blue"] > 0, (epoch, stakes)
        # The fence's promise, from what the agents heard: within the share plus the
        # allowance (the start amount is 0 by default).
        assert stakes["green"] <= (allocation + ALLOWANCE) * total + 1e-6, (epoch, stakes)
    # Stable is never refused for its share; the candidate was, at full speed.
    assert not [a for a in answers(plays, "blue") if a[1] == "over_allocation"]
    assert [a for a in answers(plays, "green") if a[1] == "over_allocation"]
    # No grant at an epoch that was not the canary's (nor before it, for green).
    assert {e for e, r, _ in answers(plays, "green") if r == "ok"} <= set(epochs)


async def test_an_abort_mid_step_refuses_the_candidates_next_permit(
    redis_server: RedisServer, plays: Path
) -> None:
    async with running_daemon(
        redis_url=redis_server.url, **agents(plays), sections={"canary": BY_HAND}
    ) as d:
        started = await start_canary(d, "--steps", "10,100")
        epoch = started["epoch"]
        assert started["percent"] == 10
        await until(
            lambda: any(r == "ok" for e, r, _ in answers(plays, "green")), "green's first grant"
        )
        assert permit(redis_server, "green", epoch, "by-hand-1", 0.01) == "ok"
        r = await d.cli("canary", "abort", "--reason", "stakes look off")
        assert r.rc == 0, r.err
        assert "canary over: blue is in charge" in r.out
        # The very next permit green asks, with the epoch it was told or any other: refused.
        assert permit(redis_server, "green", epoch, "by-hand-2", 0.01) == "not_active"
        assert permit(redis_server, "green", epoch + 1, "by-hand-3", 0.01) == "not_active"
        st = await d.status()
        assert (st["mode"], st["active"], st["candidate"], st["epoch"]) == (
            "blue-green",
            "blue",
            None,
            epoch + 1,
        )
        assert st["rejected"] == {}  # an operator's abort rejects nothing
        assert st["flips"][0]["reason"] == "canary_abort: stakes look off"
        assert redis_server.cli("HGET", "t:alloc", "mode") == "off"
        await d.wait_log(
            "child_output",
            color="green",
            where=lambda x: x["line"].startswith(f"role standby {epoch + 1}"),
        )
        # Blue takes the whole capital back, in blue-green, without having to say its stake.
        assert permit(redis_server, "blue", epoch + 1, "by-hand-4", 5.0) == "ok"
        again = await d.cli("canary", "abort")
        assert again.rc == 1
        assert "no_canary" in again.err


async def test_a_restart_mid_canary_resumes_the_step(
    redis_server: RedisServer, plays: Path
) -> None:
    async with running_daemon(
        redis_url=redis_server.url, **agents(plays), sections={"canary": BY_HAND}
    ) as d:
        await start_canary(d)
        r = await d.cli("canary", "set", "20", "--json")
        assert r.rc == 0, r.err
        step = r.json()
        await until(
            lambda: float(redis_server.cli("HGET", "t:alloc", "stake_green") or 0) > 0,
            "green's stakes in the step",
        )
        await d.signal(signal.SIGKILL)
        await d.wait()
        kept = float(redis_server.cli("HGET", "t:alloc", "stake_green"))
        again = DaemonProcess(d.dir, d.config, d.env)
        await again.start()
        st = await again.wait_status(lambda s: s["epoch"] > step["epoch"])
        assert (st["mode"], st["candidate"], st["active"]) == ("canary", "green", "blue")
        assert st["canary_percent"] == 20
        assert st["allocation"] == {"blue": 0.8, "green": 0.2}
        epoch = st["epoch"]
        # The same step: its stakes kept, the split written again at the new epoch.
        assert redis_server.cli("HGET", "t:alloc", "epoch") == str(epoch)
        assert float(redis_server.cli("HGET", "t:alloc", "stake_green")) >= kept
        await until(
            lambda: any(e == epoch and r == "ok" for e, r, _ in answers(plays, "green")),
            "green acting again as a canary",
        )
        canary = (await again.cli("canary", "status", "--json")).json()["canary"]
        assert (canary["step"], canary["percent"]) == (2, 20)
        await again.stop()
    # The fence counts the step's stakes, kept across the restart: the step spans the epoch
    # it began at and the one the restarted daemon wrote it again at.
    per = granted(plays)
    green = per[step["epoch"]]["green"] + per[epoch]["green"]
    total = green + per[step["epoch"]]["blue"] + per[epoch]["blue"]
    assert green <= (0.2 + ALLOWANCE) * total + 1e-6  # canary.start_amount is 0 here


async def test_redis_down_mid_canary_fails_closed(redis_server: RedisServer, plays: Path) -> None:
    async with running_daemon(
        redis_url=redis_server.url,
        **agents(plays, {"CANARY_ROUND_S": "0.01"}),
        sections={"canary": BY_HAND, "redis": {"health_interval_s": 0.1}},
    ) as d:
        started = await start_canary(d, "--steps", "50,100")
        await until(
            lambda: any(r == "ok" for e, r, _ in answers(plays, "green")), "green's first grant"
        )
        redis_server.stop()
        await d.wait_log("redis_down")
        seen = {c: len(answers(plays, c)) for c in ("blue", "green")}
        await until(
            lambda: all(
                any(r == "unavailable" for _, r, _ in answers(plays, c)[seen[c] :])
                for c in ("blue", "green")
            ),
            "both colors refused while Redis is down",
        )
        mark = {c: len(answers(plays, c)) for c in ("blue", "green")}
        await asyncio.sleep(0.3)  # whatever they ask meanwhile
        for color in ("blue", "green"):
            assert all(r != "ok" for _, r, _ in answers(plays, color)[mark[color] :])
        st = await d.status()
        assert (st["redis"], st["mode"]) == ("down", "canary")
        assert (await d.cli("canary", "promote")).rc == 1  # no flip without Redis

        redis_server.start()  # empty: the daemon puts its own truth back, the split with it
        restored = await d.wait_log("flip", reason="restored")
        assert restored["epoch"] > started["epoch"]
        assert redis_server.cli("HGET", "t:alloc", "mode") == "canary"
        assert redis_server.cli("HGET", "t:alloc", "allocation") == "0.5"
        await until(
            lambda: any(
                e == restored["epoch"] and r == "ok" for e, r, _ in answers(plays, "green")
            ),
            "green acting again after Redis came back",
        )


async def test_an_operator_switch_ends_the_canary(redis_server: RedisServer, plays: Path) -> None:
    async with running_daemon(
        redis_url=redis_server.url, **agents(plays), sections={"canary": BY_HAND}
    ) as d:
        started = await start_canary(d)
        # To stable: the canary is over, green stands by, nothing is rejected.
        r = await d.cli("switch", "blue")
        assert r.rc == 0, r.err
        st = await d.status()
        assert (st["mode"], st["active"], st["candidate"], st["epoch"]) == (
            "blue-green",
            "blue",
            None,
            started["epoch"] + 1,
        )
        assert st["allocation"] == {"blue": 1.0, "green": 0.0}
        assert redis_server.cli("HGET", "t:alloc", "mode") == "off"
        assert permit(redis_server, "green", st["epoch"], "g-after", 0.1) == "not_active"
        assert (await d.cli("canary", "status", "--json")).json()["canary"] is None
        # To the candidate: in charge alone, on probation, as after a switch.
        await start_canary(d)
        r = await d.cli("switch", "green")
        assert r.rc == 0, r.err
        st = await d.status()
        assert (st["mode"], st["active"], st["candidate"], st["stable"]) == (
            "blue-green",
            "green",
            "green",
            "blue",
        )
        assert st["probation_since"] is not None
        assert permit(redis_server, "blue", st["epoch"], "b-after", 0.1) == "not_active"


async def test_no_data_holds_alerts_and_never_promotes(
    redis_server: RedisServer, plays: Path
) -> None:
    """A candidate whose rounds the judge never sees (it reports no outcome): the step is
    never judged, never promoted, and alerted on once it has lasted min_seconds +
    hold_alert_s."""
    async with running_daemon(
        redis_url=redis_server.url,
        **agents(plays, {"CANARY_NO_OUTCOMES": "1", "CANARY_ROUND_S": "0.005"}),
        sections={
            "canary": {"min_rounds": 20, "min_seconds": 0.5, "hold_alert_s": 1.0},
            "rollout": {"probation_s": 0},
        },
    ) as d:
        started = await start_canary(d)
        held = await d.wait_log("canary_held", timeout=20)
        assert held["percent"] == 5
        assert "0 of 20 rounds" in held["reason"]
        await asyncio.sleep(1.0)  # longer than a step would take with data
        st = await d.status()
        assert (st["mode"], st["canary_percent"], st["epoch"]) == ("canary", 5, started["epoch"])
        assert not d.find("flip", since=0, reason="canary_promote: 100% (judge: pass)")
        canary = (await d.cli("canary", "status", "--json")).json()["canary"]
        assert canary["rounds"]["green"] == 0
        assert canary["permits"]["green"] > 0  # it acts; it just reports nothing to judge


async def test_a_critical_trigger_aborts_the_canary_and_rejects_the_version(
    redis_server: RedisServer, plays: Path
) -> None:
    async with running_daemon(
        redis_url=redis_server.url,
        **agents(plays, {"CANARY_RAISE_AFTER": "20", "CANARY_ROUND_S": "0.002"}),
        sections={"canary": BY_HAND},
        allow_errors={"trigger_fired"},
    ) as d:
        started = await start_canary(d)
        flip = await d.wait_log("flip", trigger="exception")
        assert flip["active"] == "blue"
        assert flip["epoch"] == started["epoch"] + 1
        st = await d.status()
        assert (st["mode"], st["candidate"], st["rejected"]) == (
            "blue-green",
            None,
            {"green": "2.0.0"},
        )
        assert redis_server.cli("HGET", "t:alloc", "mode") == "off"
        assert permit(redis_server, "green", flip["epoch"], "g-late", 0.1) == "not_active"


async def test_what_the_operator_may_not_do(redis_server: RedisServer, plays: Path) -> None:
    async with running_daemon(
        redis_url=redis_server.url, **agents(plays), sections={"canary": BY_HAND}
    ) as d:
        await d.wait_status(
            lambda s: all(c["state"] == "RUNNING" and c["protocol"] for c in s["children"].values())
        )
        for args, code in (
            (("promote",), "no_canary"),
            (("set", "20"), "no_canary"),
            (("abort",), "no_canary"),
            (("start", "blue"), "already_active"),
            (("start", "green", "--steps", "5,20"), "bad_steps"),
            (("start", "green", "--steps", "50,20,100"), "bad_steps"),
        ):
            r = await d.cli("canary", *args)
            assert r.rc == 1, (args, r.out, r.err)
            assert f"refused ({code})" in r.err, (args, r.err)
        assert (await d.cli("canary", "set", "0")).rc == 2  # usage: not a share
        assert (await d.cli("canary", "status")).out.startswith("no canary running")
        await start_canary(d)
        again = await d.cli("canary", "start", "green")
        assert (again.rc, "canary_in_progress" in again.err) == (1, True)
        assert (await d.cli("confirm")).rc == 1  # no candidate is in charge
        assert (await d.cli("canary", "promote", "--full")).rc == 0
        st = await d.status()
        assert (st["mode"], st["active"], st["candidate"]) == ("blue-green", "green", "green")
        # A candidate on probation must be confirmed or rolled back before another canary.
        busy = await d.cli("canary", "start", "blue")
        assert (busy.rc, "candidate_in_charge" in busy.err) == (1, True)
        assert (await d.cli("canary")).out.startswith("no canary running")  # status, alone
