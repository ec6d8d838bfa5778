"""``agentsup demo ab``: the seed's A/B example, crash cash-out at 2.0× against 3.0×, on the
simulated venue, in well under a minute.

An embedded Redis; blue and green run the same version of a crash agent that cashes out at its
``crash_target`` flag. The operator starts an A/B test: blue (arm A) gets 2.0, green (arm B)
3.0, each half of the capital (the fence holds both to their half). The report is read after
every round, as the always-valid statistics allow. What it can honestly say: both targets have
the same expected return (−1 % per unit staked: P(win) = 0.99 / T, so T · 0.99 / T − 1), so the
verdict on return stays "not yet"; the win rates differ (49.5 % against 33 %) and that is called
in a couple of hundred rounds an arm. Same return, fewer losing rounds: the operator takes A,
and ``ab stop --winner a`` makes 2.0 the flag for everyone. The daemon is the real one, in this
process; the agents are real child processes (``python -m supervisor.demo.ab agent``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from supervisor import config, logs
from supervisor.config import Color
from supervisor.demo.run import DemoFailed, Narrator, _started, _until

if TYPE_CHECKING:
    from supervisor.daemon import Daemon

BLUE_ROUNDS = 20  # rounds blue plays alone before the test starts
MIN_ROUNDS = 200  # no verdict before this many rounds an arm


def _config(directory: Path) -> config.Config:
    agent = [sys.executable, "-m", "supervisor.demo.ab", "agent"]
    return config.parse(
        {
            "supervisor": {
                "name": "demo-ab",
                "namespace": "demo",
                "state_dir": str(directory),
                "control_socket": str(directory / "control.sock"),
                "shutdown_timeout_s": 20.0,
            },
            "metrics": {"listen": ""},
            "rollout": {"probation_s": 0},
            "flags": {"crash_target": {"type": "float", "default": 2.0, "min": 1.01}},
            "ab": {"min_rounds": MIN_ROUNDS},
            "agents": {
                c: {
                    "command": agent,
                    "version": "1.0.0",
                    "env": {"AGENTSUP_DEMO_SEED": "7", "AGENTSUP_DEMO_SLOT": c},
                }
                for c in ("blue", "green")
            },
        }
    )


async def _story(
    directory: Path, say: Narrator, make_daemon: Callable[[config.Config], Daemon]
) -> dict[str, Any]:
    daemon = make_daemon(_config(directory))
    runner = asyncio.create_task(daemon.run())
    deployment = daemon.deployment
    tally = deployment.pipeline.tally
    try:
        await _started(daemon, runner)
        await _until(
            lambda: all(c.speaks_protocol for c in deployment.children.values()),
            "both agents to say hello",
        )
        say("blue and green both run v1.0.0 of a crash agent; blue in charge, cashing out at 2.0×")
        await _until(lambda: tally[Color.BLUE].rounds >= BLUE_ROUNDS, "blue to play")
        say(
            "the operator runs `agentsup ab start --flag crash_target --a 2.0 --b 3.0` "
            f"(no verdict before {MIN_ROUNDS} rounds an arm)"
        )
        started = await deployment.ab_start(
            "crash_target", "2.0", "3.0", None, None, "operator (demo)"
        )
        say(
            f"epoch {started['epoch']}: blue (A) cashes out at 2.0×, green (B) at 3.0×, each "
            "with half the capital; the permit holds both arms to their half"
        )
        report: dict[str, Any] = {}

        async def called() -> bool:
            report.update(await deployment.ab_report())
            return bool(report["verdict"]["win_rate"] != "not_yet")

        for _ in range(450):  # read every 0.1 s, for 45 s at most
            if await called():
                break
            await asyncio.sleep(0.1)
        else:
            raise DemoFailed("the win rate was not called within 45 s")
        a, b = report["arms"]["a"], report["arms"]["b"]
        say(
            f"after {a['rounds']} and {b['rounds']} rounds (read after every round, valid at "
            f"every look): win rate A {a['win_rate']['mean']:.1%}, B {b['win_rate']['mean']:.1%}"
            f": {report['verdict']['win_rate']}"
        )
        ret = report["difference"]["return"]
        say(
            f"return per unit staked: A {a['return']['mean']:+.3f}, B {b['return']['mean']:+.3f}, "
            f"B − A in [{ret['ci'][0]:+.3f}, {ret['ci'][1]:+.3f}]: "
            f"{report['verdict']['return']} (both expect −1 %: no winner on return is honest)"
        )
        fence = report.get("fence") or {}
        share = (fence.get("share") or {}).get("green")
        if share is not None:
            say(f"the fence held the split: green staked {share:.1%} of the test's capital")
        srm = report["srm"]["rounds"]
        say(f"sample ratio on rounds: p {srm['p']:.3g} ({'broken' if srm['broken'] else 'ok'})")
        from supervisor.ab.html import render

        (directory / "ab.html").write_text(render(report), encoding="utf-8")
        say("same return, fewer losing rounds: the operator runs `agentsup ab stop --winner a`")
        stopped = await deployment.ab_stop("a", "operator (demo)")
        values = {c.value: deployment.flags.values(c)["crash_target"] for c in Color}
        say(
            f"epoch {stopped['ended']['epoch']}: crash_target = {stopped['ended']['value']} for "
            f"everyone (blue {values['blue']}, green {values['green']}); blue in charge alone"
        )
        resumed = tally[Color.BLUE].rounds
        await _until(lambda: tally[Color.BLUE].rounds >= resumed + 5, "blue to play on")
        say(f"blue plays on at 2.0× (round {tally[Color.BLUE].rounds})")
        status = await deployment.status()
        status["ab_report"] = stopped
        return status
    finally:
        daemon.request_shutdown("demo finished")
        await runner


def demo(make_daemon: Callable[[config.Config], Daemon], keep: bool = False) -> int:
    """Run the A/B demo; 0 when the test ended with the winner's value as the flag."""
    import uvloop

    directory = Path(tempfile.mkdtemp(prefix="agentsup-demo-", dir="/tmp"))
    print(
        "agent-supervisor A/B demo: one version, two settings of crash_target (2.0× against "
        "3.0×), half the capital each\n",
        flush=True,
    )
    say = Narrator()
    with (directory / "daemon.log").open("w") as sink:
        logs.configure("info", json=True, sink=sink)
        try:
            status = uvloop.run(_story(directory, say, make_daemon))
        except (DemoFailed, Exception) as exc:
            print(
                f"\nagentsup demo ab: FAILED: {exc}\nthe daemon's log: {directory / 'daemon.log'}",
                file=sys.stderr,
            )
            return 1
    print("\nThe flips, as recorded in Redis (the stream demo:flips):")
    for f in reversed(status["flips"]):
        print(
            f"  epoch {f['epoch']:>2}  {f['from'] or '-':>5} -> {f['to']:<5}  by {f['by']:<16} "
            f"{f['reason'][:90]}"
        )
    from supervisor.control.commands.ab import show

    print("\nThe report when the operator stopped it (`agentsup ab report`):\n")
    print(show(status["ab_report"], argparse.Namespace(op="stop")))
    if keep:
        print(f"\nthe report's page ({directory / 'ab.html'}), state and log kept in {directory}")
    else:
        shutil.rmtree(directory, ignore_errors=True)
    ok = (
        status["active"] == "blue"
        and status["mode"] == "blue-green"
        and status["flags"]["values"]["green"]["crash_target"] == 2.0
        and any(f["reason"].startswith("ab_stop: winner a") for f in status["flips"])
    )
    return 0 if ok else 1


# the demo's agent -------------------------------------------------------------------------


async def _play() -> int:
    from supervisor.agent import Agent, Role
    from supervisor.errors import NotSupervised

    try:
        agent = Agent.connect()
    except NotSupervised as exc:
        print(f"demo ab agent: {exc}", file=sys.stderr)
        return 1
    async with agent:
        env = os.environ
        rng = random.Random(f"{env.get('AGENTSUP_DEMO_SEED', '7')}:{agent.color}")
        pause = float(env.get("AGENTSUP_DEMO_ROUND_S", "0.002"))
        changed = asyncio.Event()
        agent.on_role(lambda role, epoch, allocation: changed.set())
        n = 0
        while not agent.lost.is_set():
            if agent.role not in (Role.ACTIVE, Role.CANARY):
                changed.clear()
                lost = asyncio.ensure_future(agent.lost.wait())
                woken = asyncio.ensure_future(changed.wait())
                await asyncio.wait({lost, woken}, return_when=asyncio.FIRST_COMPLETED)
                lost.cancel()
                woken.cancel()
                continue
            n += 1
            if n % 20 == 1:  # the calm world the deploy gates look at
                agent.context(volatility=0.01, disputes_open=0, auto_releases=[])
            target = float(agent.flags.get("crash_target", 2.0))
            stake = round(1.0 * agent.allocation * rng.uniform(0.8, 1.2), 6)
            async with agent.decide("crash", {"target": target}) as d:
                d.output = {"cash_out": target, "stake": stake}
            permit = await agent.permit(f"{agent.color}-{os.getpid()}-{n}", amount=stake)
            if permit and agent.still_valid(permit):
                agent.execution(d.id, permit.key, stake)
                point = max(1.0, 0.99 / max(rng.random(), 1e-12))  # the venue's crash point
                pnl = stake * (target - 1) if point >= target else -stake
                agent.outcome(round(pnl, 6), decision_id=d.id)
            await asyncio.sleep(pause)
    return 0


if __name__ == "__main__":
    if sys.argv[1:] != ["agent"]:
        print("usage: python -m supervisor.demo.ab agent (started by the supervisor)")
        sys.exit(64)
    sys.exit(asyncio.run(_play()))
