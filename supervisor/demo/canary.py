"""``agentsup demo canary``: a canary by capital fraction, judged between steps, enforced by
the fence, in a few seconds.

An embedded Redis; blue v1.0.0 (known good) in charge; green v2.0.0 with a planted bug that
doubles its stakes once it holds 20 % of the capital. The operator starts a canary: green gets
5 % (both act, each sizing its stakes by its share; the permit refuses green past its share),
the judge passes the step and gives it 20 %; there the bug fires, and the judge, comparing
green's stakes per unit of allocation with blue's, aborts within a few rounds: blue takes the
whole capital back in one flip and green's version is rejected. The daemon is the real one, in
this process; the agents are real child processes using the SDK.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from supervisor import config, logs
from supervisor.config import Color
from supervisor.demo.run import DemoFailed, Narrator, _records, _started, _until

if TYPE_CHECKING:
    from supervisor.daemon import Daemon

BLUE_ROUNDS = 20  # rounds blue plays alone before the canary starts


def _config(directory: Path) -> config.Config:
    agent = [sys.executable, "-m", "supervisor.demo.canary_agent"]
    return config.parse(
        {
            "supervisor": {
                "name": "demo-canary",
                "namespace": "demo",
                "state_dir": str(directory),
                "control_socket": str(directory / "control.sock"),
                "shutdown_timeout_s": 20.0,
            },
            "metrics": {"listen": ""},
            "rollout": {"probation_s": 0},
            "canary": {
                "steps": [5.0, 20.0, 50.0, 100.0],
                "min_rounds": 60,
                "min_seconds": 1.0,
                "judge": {"look_s": 0.25},
            },
            "agents": {
                "blue": {"command": agent, "version": "1.0.0", "env": {"AGENTSUP_DEMO_SEED": "7"}},
                "green": {
                    "command": agent,
                    "version": "2.0.0",
                    "env": {"AGENTSUP_DEMO_SEED": "7", "AGENTSUP_DEMO_BUG": "double_stakes"},
                },
            },
        }
    )


def _table(rows: list[dict[str, Any]]) -> str:
    return ", ".join(f"{r['metric']} {r['verdict']}" for r in rows)


async def _story(
    directory: Path, say: Narrator, make_daemon: Callable[[config.Config], Daemon]
) -> dict[str, Any]:
    log_path = directory / "daemon.log"
    daemon = make_daemon(_config(directory))
    runner = asyncio.create_task(daemon.run())
    deployment = daemon.deployment
    tally = deployment.pipeline.tally
    rollout = deployment.rollout
    try:
        await _started(daemon, runner)
        await _until(
            lambda: all(c.speaks_protocol for c in deployment.children.values()),
            "both agents to say hello",
        )
        say("blue v1.0.0 in charge with all the capital; green v2.0.0 warm on standby")
        await _until(lambda: tally[Color.BLUE].rounds >= BLUE_ROUNDS, "blue to play")
        say(
            f"blue has played {tally[Color.BLUE].rounds} rounds; the operator runs "
            "`agentsup canary start green` (steps 5, 20, 50, 100 %)"
        )
        change = await deployment.canary_start(Color.GREEN, None, "operator (demo)")
        say(
            f"epoch {change.epoch}: green has 5 % of the capital, blue 95 %; both act, each "
            "staking by its share; the permit refuses green past 5 % of the step's stakes"
        )
        await _wait_record(log_path, "canary_step_passed")
        held = _records(log_path, "canary_step_held")
        status = await deployment.canary_status()
        canary = status["canary"] or {}
        judged = (canary.get("judge") or {}).get("metrics", [])
        verdicts = _table(judged) if judged else "every metric alike"
        after = " (after a hold)" if held else ""
        say(
            f"the judge passes the 5 % step{after} ({verdicts}); green gets 20 % at epoch "
            f"{rollout.state.epoch}"
        )
        await _until(
            lambda: rollout.state.candidate is None, "the judge to abort the canary", within_s=30
        )
        aborted = _records(log_path, "canary_aborted")
        bug = [
            r["line"]
            for r in _records(log_path, "child_output")
            if "stake sizing bug" in str(r.get("line", ""))
        ]
        if bug:
            say(f"green's planted bug: {bug[0].split('] ', 1)[-1]}")
        if aborted:
            a = aborted[0]
            say(f"the judge aborts ({a['look']} look) at epoch {a['epoch']}: {a['reason']}")
        alloc = await deployment.arbiter.alloc()
        stakes = {c: float(alloc.get(f"stake_{c}", 0) or 0) for c in ("blue", "green")}
        total = sum(stakes.values()) or 1.0
        say(
            f"in the 20 % step the fence held green to {stakes['green'] / total:.1%} of the "
            f"stakes ({stakes['green']:.2f} of {total:.2f}); blue has it all back now"
        )
        s = rollout.state
        if Color.GREEN in s.rejected:
            say(
                f"green v{s.rejected[Color.GREEN]} is rejected: nothing automatic will try it "
                "again until an operator does"
            )
        resumed = tally[Color.BLUE].rounds
        await _until(lambda: tally[Color.BLUE].rounds >= resumed + 5, "blue to play on")
        say(f"blue plays on alone (round {tally[Color.BLUE].rounds})")
        return await deployment.status()
    finally:
        daemon.request_shutdown("demo finished")
        await runner


async def _wait_record(path: Path, event: str, within_s: float = 30.0) -> dict[str, Any]:
    await _until(lambda: bool(_records(path, event)), f"the log's {event}", within_s)
    return _records(path, event)[0]


def demo(make_daemon: Callable[[config.Config], Daemon], keep: bool = False) -> int:
    """Run the canary demo; 0 when green was aborted on its stakes and blue is in charge."""
    import uvloop

    from supervisor.control.views import render_status

    directory = Path(tempfile.mkdtemp(prefix="agentsup-demo-", dir="/tmp"))
    print(
        "agent-supervisor canary demo: blue v1.0.0 is the known good version; green v2.0.0 "
        "doubles its stakes once it holds 20 % of the capital\n",
        flush=True,
    )
    say = Narrator()
    with (directory / "daemon.log").open("w") as sink:
        logs.configure("info", json=True, sink=sink)
        try:
            status = uvloop.run(_story(directory, say, make_daemon))
        except (DemoFailed, Exception) as exc:
            print(
                f"\nagentsup demo canary: FAILED: {exc}\nthe daemon's log: "
                f"{directory / 'daemon.log'}",
                file=sys.stderr,
            )
            return 1
    print("\nThe flips, as recorded in Redis (the stream demo:flips):")
    for f in reversed(status["flips"]):
        print(
            f"  epoch {f['epoch']:>2}  {f['from'] or '-':>5} -> {f['to']:<5}  by {f['by']:<16} "
            f"{f['reason'][:90]}"
        )
    print("\nFinal status:\n")
    print("  " + render_status(status).replace("\n", "\n  "))
    if keep:
        print(f"\nstate and the daemon's JSON log kept in {directory}")
    else:
        shutil.rmtree(directory, ignore_errors=True)
    ok = (
        status["active"] == "blue"
        and status["mode"] == "blue-green"
        and status.get("rejected", {}).get("green") == "2.0.0"
        and any(f["reason"].startswith("canary_abort: stake") for f in status["flips"])
    )
    return 0 if ok else 1
