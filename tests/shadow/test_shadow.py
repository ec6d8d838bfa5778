"""Shadow mode end to end: a real daemon, real SDK children (tests/agents/shadow_agent.py),
a real redis-server. Blue is in charge and plays crash rounds; green is the shadow."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis import Redis

from supervisor.arbiter.scripts import Keys
from supervisor.control.client import request
from tests.harness import PY, DaemonProcess, agent, running_daemon
from tests.redis_server import RedisServer, short_tempdir

SHADOW_AGENT = [PY, "tests/agents/shadow_agent.py"]
KEYS = Keys("t", "agent:active_version")


@pytest.fixture
def logs() -> Iterator[Path]:
    """Where the shadow agents write their roles and their rogue permit's answer."""
    directory = short_tempdir("as-s-")
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def daemon(
    server: RedisServer,
    logs: Path,
    *,
    blue: dict[str, str] | None = None,
    green: dict[str, str] | None = None,
    shadow: dict[str, Any] | None = None,
    green_agent: dict[str, Any] | None = None,
    sections: dict[str, dict[str, Any]] | None = None,
) -> contextlib.AbstractAsyncContextManager[DaemonProcess]:
    """A daemon with two shadow agents (``blue``, ``green``: their extra environment)."""
    env = {"SHADOW_DIR": str(logs)}
    return running_daemon(
        redis_url=server.url,
        blue=agent(SHADOW_AGENT, "1.0.0", env={**env, **(blue or {})}),
        green=green_agent or agent(SHADOW_AGENT, "2.0.0", env={**env, **(green or {})}),
        sections={**({"shadow": shadow} if shadow else {}), **(sections or {})} or None,
    )


def lines(logs: Path, color: str) -> list[str]:
    path = logs / f"{color}.log"
    return path.read_text().splitlines() if path.exists() else []


async def until(check: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    try:
        async with asyncio.timeout(timeout):
            while not (found := check()):
                await asyncio.sleep(0.05)
            return found
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


async def ask(d: DaemonProcess, **args: Any) -> dict[str, Any]:
    result: dict[str, Any] = await asyncio.to_thread(request, d.socket, "shadow", args)
    return result


async def report_until(
    d: DaemonProcess, check: Callable[[dict[str, Any]], bool], what: str, timeout: float = 40.0
) -> dict[str, Any]:
    last: dict[str, Any] = {}
    try:
        async with asyncio.timeout(timeout):
            while True:
                last = await ask(d, op="report")
                if check(last):
                    return last
                await asyncio.sleep(0.2)
    except TimeoutError:
        summary = {k: last.get(k) for k in ("mirrors", "floor_mirrors", "compared", "kinds")}
        raise AssertionError(f"timed out waiting for {what}; last report: {summary}") from None


def scrape(d: DaemonProcess) -> dict[str, float]:
    port = int(d.find("metrics_listening")[0]["address"].rsplit(":", 1)[1])
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


async def both_running(d: DaemonProcess) -> None:
    await d.wait_status(
        lambda s: (
            all(c["state"] == "RUNNING" and c["protocol"] for c in s["children"].values())
            and s["active"] == "blue"
        ),
        timeout=20,
    )


def field(report: dict[str, Any], kind: str, name: str) -> dict[str, Any]:
    for k in report["kinds"]:
        if k["kind"] == kind:
            for f in k["fields"]:
                if f["field"] == name:
                    return dict(f, compared=k["compared"], floor_compared=k["floor_compared"])
    raise AssertionError(f"no field {kind}.{name} in {report['kinds']}")


def compared(report: dict[str, Any], kind: str = "crash") -> tuple[int, int]:
    for k in report["kinds"]:
        if k["kind"] == kind:
            return k["compared"], k["floor_compared"]
    return 0, 0


async def test_a_twin_in_shadow_is_told_so_never_diverges_and_would_have_made_the_same(
    redis_server: RedisServer, logs: Path, tmp_path: Path
) -> None:
    async with daemon(redis_server, logs, shadow={"floor_fraction": 0.2}) as d:
        await both_running(d)
        r = await d.cli("shadow", "start", "green", "--json")
        assert r.rc == 0, r.err
        started = r.json()
        assert (started["running"], started["color"], started["live"]) == (True, "green", "blue")
        await until(lambda: any(x.startswith("role shadow ") for x in lines(logs, "green")), "role")
        role = next(x for x in lines(logs, "green") if x.startswith("role shadow "))
        assert role.endswith(" 0.0")  # allocation 0
        st = await d.status()
        assert st["shadow"]["color"] == "green"
        assert st["children"]["green"]["role"] == "shadow"

        rep = await report_until(
            d,
            lambda x: x["mirrors"]["answered"] >= 150 and x["pnl"]["rounds"] >= 50,
            "150 mirrors answered and 50 rounds scored",
        )
        assert rep["diverged"] == 0
        assert rep["reported"] == []
        assert rep["executions"] == 0
        assert rep["floor"].startswith("measured")
        assert compared(rep)[1] > 0  # the live color was asked for the floor too
        pnl = rep["pnl"]
        # The same strategy on the same crash points: the same PnL, round for round.
        assert abs(pnl["difference"]["mean"]) < 1e-9
        assert pnl["difference"]["verdict"] == "not_yet"
        assert pnl["real"]["n"] == pnl["would_be"]["n"] == pnl["rounds"]
        assert pnl["detector"]["fired"] is None  # pnl_sigma on the same PnL: quiet
        assert rep["latency"]["shadow_mirror"]["n"] >= 150

        # The report as the operator gets it: JSON, and one page with its plots.
        r = await d.cli("shadow", "report", "--json")
        assert r.rc == 0, r.err
        assert r.json()["color"] == "green"
        page = tmp_path / "shadow.html"
        r = await d.cli("shadow", "report", "--html", str(page))
        assert r.rc == 0, r.err
        assert "above the floor: none" in r.out
        html = page.read_text()
        assert html.count("<svg") == 2
        assert "<polyline" in html
        assert "<script" not in html

        metrics = scrape(d)
        assert metrics['agentsup_shadow_mirrors_total{result="answered"}'] >= 150
        assert metrics['agentsup_shadow_running{color="green"}'] == 1

        r = await d.cli("shadow", "stop", "--json")
        assert r.rc == 0, r.err
        stopped = r.json()
        assert stopped["running"] is False
        assert stopped["stop_reason"].startswith("stopped by uid:")
        await until(
            lambda: lines(logs, "green")[-1].startswith("role standby "), "green back to standby"
        )
        assert (await d.status())["shadow"] is None
        assert scrape(d)['agentsup_shadow_running{color="green"}'] == 0
        # Its report stays readable after the stop.
        assert (await ask(d, op="report"))["running"] is False


async def test_a_planted_difference_passes_the_floor_and_planted_noise_does_not(
    redis_server: RedisServer, logs: Path
) -> None:
    """Both colors are noisy in ``stake`` (30 % of decisions); green cashes out at 3.0 where
    blue does at 2.0. ``target`` is reported; ``stake`` differs as often as blue differs from
    itself, and is not."""
    noisy = {"SHADOW_NOISE": "0.3"}
    async with daemon(
        redis_server,
        logs,
        blue=noisy,
        green={**noisy, "SHADOW_TARGET": "3.0"},
        shadow={"floor_fraction": 0.5},
    ) as d:
        await both_running(d)
        await ask(d, op="start", color="green")
        rep = await report_until(
            d,
            lambda x: compared(x)[0] >= 300 and compared(x)[1] >= 120,
            "300 compared and 120 floor samples",
            timeout=60,
        )
        target, stake = field(rep, "crash", "target"), field(rep, "crash", "stake")
        assert target["reported"], target
        assert target["rate"] == 1.0
        assert not stake["reported"], stake
        assert stake["rate"] > 0.2  # the noise is there, in the raw rate ...
        assert stake["floor_rate"] > 0.2  # ... and in the floor, which hides it
        assert rep["reported"] == ["crash.target"]
        top = rep["top"][0]
        assert top["kind"] == "crash"
        assert top["inputs"].keys() == {"n"}
        assert {"field": "target", "live": 2.0, "shadow": 3.0} in [
            {k: f[k] for k in ("field", "live", "shadow")} for f in top["fields"]
        ]
        # Would-be PnL on the real rounds: a 3.0 target wins less often and more each time.
        pnl = rep["pnl"]
        assert pnl["rounds"] > 50
        assert pnl["would_be"]["total"] != pnl["real"]["total"]
        lo, hi = pnl["difference"]["ci95"]
        assert lo <= pnl["difference"]["mean"] <= hi
        # The interval valid at every look is the wider one.
        av_lo, av_hi = pnl["difference"]["always_valid_ci95"]
        assert av_lo < lo
        assert hi < av_hi

        r = await d.cli("shadow", "report")  # in words, for the operator
        assert r.rc == 0, r.err
        assert "above the floor: crash.target" in r.out
        assert "target 2.0 → 3.0" in r.out
        assert "valid at every look" in r.out

        metrics = scrape(d)
        assert metrics['agentsup_shadow_divergences_total{kind="crash"}'] >= 300
        assert metrics['agentsup_shadow_fields_diverging{kind="crash"}'] >= 1


async def test_a_noisy_twin_sets_a_floor_that_hides_its_own_noise(
    redis_server: RedisServer, logs: Path
) -> None:
    noisy = {"SHADOW_NOISE": "0.3"}
    async with daemon(
        redis_server, logs, blue=noisy, green=noisy, shadow={"floor_fraction": 0.5}
    ) as d:
        await both_running(d)
        await ask(d, op="start", color="green")
        rep = await report_until(
            d,
            lambda x: compared(x)[0] >= 300 and compared(x)[1] >= 120,
            "300 compared and 120 floor samples",
            timeout=60,
        )
        stake = field(rep, "crash", "stake")
        assert stake["rate"] > 0.2, stake
        assert rep["reported"] == [], rep["kinds"]
        assert rep["diverged"] > 0


async def test_an_agent_declares_its_comparator_and_the_config_overrides_it(
    redis_server: RedisServer, logs: Path
) -> None:
    """Green says its ``target`` is not to be compared (SDK ``compare``): no divergence; the
    ``[shadow.kinds.crash]`` of the config wins over an agent's word, so ``stake`` alone is
    ignored there and nothing else."""
    async with daemon(
        redis_server,
        logs,
        green={"SHADOW_TARGET": "3.0", "SHADOW_COMPARE_IGNORE": "target"},
        shadow={"kinds": {"other": {"ignore": ["x"]}}},
    ) as d:
        await both_running(d)
        await ask(d, op="start", color="green")
        rep = await report_until(d, lambda x: compared(x)[0] >= 50, "50 compared")
        assert rep["diverged"] == 0
        (crash,) = [k for k in rep["kinds"] if k["kind"] == "crash"]
        assert crash["comparator"]["ignore"] == ["target"]
    async with daemon(
        redis_server,
        logs,
        green={"SHADOW_TARGET": "3.0", "SHADOW_COMPARE_IGNORE": "target"},
        shadow={"kinds": {"crash": {"ignore": ["stake"]}}},
    ) as d:
        await both_running(d)
        await ask(d, op="start", color="green")
        rep = await report_until(d, lambda x: compared(x)[0] >= 50, "50 compared")
        assert rep["diverged"] == rep["compared"]
        assert field(rep, "crash", "target")["rate"] == 1.0


async def test_the_shadow_cannot_act_and_its_execution_is_a_critical_alert(
    redis_server: RedisServer, logs: Path
) -> None:
    async with daemon(redis_server, logs, green={"SHADOW_EXECUTE": "1"}) as d:
        await both_running(d)
        await ask(d, op="start", color="green")
        # The fence refused the shadow's permit ...
        await until(lambda: "permit not_active" in lines(logs, "green"), "the rogue permit")
        # ... and its execution anyway is counted, logged and alerted.
        logged = await d.wait_log("shadow_execution", color="green")
        assert logged["level"] == "error"
        alert = await d.wait_log(
            "alert", where=lambda r: r.get("alert", {}).get("trigger") == "shadow_execution"
        )
        assert alert["alert"]["severity"] == "critical"
        assert alert["alert"]["color"] == "green"
        assert scrape(d)["agentsup_shadow_executions_total"] == 1
        assert (await ask(d, op="report"))["executions"] == 1
        # Never money moved: no permit was recorded for its key.
        redis = Redis.from_url(redis_server.url)
        try:
            rogue = [k for k in redis.scan_iter(match=KEYS.permit("rogue-*"))]
            assert rogue == []
        finally:
            redis.close()


async def test_a_stalled_shadow_does_not_slow_the_live_color_and_its_drops_are_counted(
    redis_server: RedisServer, logs: Path
) -> None:
    async with daemon(
        redis_server,
        logs,
        green={"SHADOW_STALL": "1"},
        shadow={"queue_size": 5, "concurrency": 2, "timeout_s": 0.3, "floor_fraction": 0},
    ) as d:
        await both_running(d)

        async def decisions_over(seconds: float) -> float:
            first: float = (await d.status())["children"]["blue"]["decisions"]
            started = time.monotonic()
            await asyncio.sleep(seconds)
            last: float = (await d.status())["children"]["blue"]["decisions"]
            return (last - first) / (time.monotonic() - started)

        before = await decisions_over(3.0)
        await ask(d, op="start", color="green")
        during = await decisions_over(3.0)
        rep = await report_until(
            d,
            lambda x: x["mirrors"]["dropped"] >= 20 and x["mirrors"]["timeout"] >= 2,
            "drops and timeouts",
        )
        assert before > 10
        # Room for a shared machine: the point is that the live color does not wait for the
        # shadow (it would fall to a few decisions a second, the shadow's timeouts).
        assert during > before / 3, (before, during)
        assert rep["mirrors"]["answered"] == 0
        assert rep["compared"] == 0
        metrics = scrape(d)
        assert metrics['agentsup_shadow_mirrors_total{result="dropped"}'] >= 20
        assert metrics['agentsup_shadow_mirrors_total{result="timeout"}'] >= 2


async def test_a_flip_or_the_shadow_s_exit_ends_the_shadow(
    redis_server: RedisServer, logs: Path
) -> None:
    async with daemon(redis_server, logs) as d:
        await both_running(d)
        await ask(d, op="start", color="green")
        await until(
            lambda: any(x.startswith("role shadow") for x in lines(logs, "green")), "shadow"
        )
        r = await d.cli("switch", "green")
        assert r.rc == 0, r.err
        rep = await ask(d, op="report")
        assert rep["running"] is False
        assert rep["stop_reason"].startswith("flip: switch")
        await until(lambda: lines(logs, "green")[-1].startswith("role active "), "green active")

        # Blue stands by now: its shadow ends when its process does.
        await ask(d, op="start", color="blue")
        await until(lambda: any(x.startswith("role shadow") for x in lines(logs, "blue")), "blue")
        before = len(d.find("child_spawned", color="blue"))
        pid = d.child_pids()["blue"]
        os.kill(pid, signal.SIGKILL)
        rep = await report_until(d, lambda x: not x["running"], "the shadow ended")
        assert rep["stop_reason"] == "blue exited"
        await until(lambda: len(d.find("child_spawned", color="blue")) > before, "blue restarted")
        await until(
            lambda: (lines(logs, "blue") or [""])[-1].startswith("role standby "),
            "blue standby again",
        )


async def test_bad_requests_are_refused_with_their_reason(
    redis_server: RedisServer, logs: Path
) -> None:
    async with daemon(redis_server, logs, green={"SHADOW_NO_MIRROR": "1"}) as d:
        await both_running(d)
        for args, code in (
            (("start", "blue"), "is_active"),
            (("start", "green"), "no_mirror"),
            (("stop",), "no_shadow"),
            (("report",), "no_shadow"),
        ):
            r = await d.cli("shadow", *args)
            assert r.rc == 1, (args, r.out)
            assert code in r.err, (args, r.err)
        assert (await d.status())["shadow"] is None


async def test_a_color_that_is_not_running_cannot_be_the_shadow(
    redis_server: RedisServer, logs: Path
) -> None:
    dead = agent([PY, "-c", "raise SystemExit(3)"], "2.0.0", restart={"max_restarts": 0})
    async with daemon(redis_server, logs, green_agent=dead) as d:
        await d.wait_status(lambda s: s["children"]["green"]["state"] == "FATAL", timeout=20)
        r = await d.cli("shadow", "start", "green")
        assert r.rc == 1
        assert "not_running" in r.err


async def test_the_live_pnl_detector_runs_on_the_would_be_pnl_and_acts_on_nothing(
    redis_server: RedisServer, logs: Path
) -> None:
    # The shadow would lose 1.5 more than the live color every round: pnl_sigma, fed the live
    # rounds as its baseline, says it would have rolled the shadow back, had it been in charge.
    async with daemon(
        redis_server,
        logs,
        green={"SHADOW_SCORE_BIAS": "-1.5"},
        sections={"triggers": {"pnl_sigma": {"min_baseline": 20}}},
    ) as d:
        await both_running(d)
        assert (await d.cli("shadow", "start", "green")).rc == 0
        fired = await d.wait_log("shadow_pnl_detector_fired", timeout=60)
        assert fired["color"] == "green"
        rep = await report_until(
            d, lambda x: x["pnl"]["detector"]["fired"] is not None, "the detector to fire"
        )
        detector = rep["pnl"]["detector"]
        assert detector["fired"]["round"] > 20  # not before the baseline had its rounds
        assert rep["pnl"]["difference"]["mean"] < -1.0
        text = await d.cli("shadow", "report")
        assert "would have rolled it back at round" in text.out
        st = await d.status()  # a verdict on a shadow moves nothing
        assert (st["active"], st["shadow"]["color"]) == ("blue", "green")
        assert not d.find("flip", reason="pnl_sigma")
