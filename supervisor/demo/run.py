"""``agentsup demo``: the whole story, with no configuration, in well under a minute.

An embedded Redis; blue v1.0.0 (known good) in charge; green v2.0.0 warm on standby with a
planted bug. Blue plays; the operator switches to green; green's bug fires; the guard rolls
back to blue by itself, in about a millisecond; green's version is rejected. The daemon here
is the real one (``Daemon``, the same class ``agentsup run`` runs), in this process; the agents
are real child processes using the SDK. Its JSON log goes to ``daemon.log`` in the demo's
state directory (kept with ``--keep``).

``agentsup demo handoff`` tells the other story: blue v1 (state schema ``demo/1``) plays; the
operator's ``agentsup deploy green`` is refused while the counterparty of an escrow disputes it
(the deploy gates: the seed's One Rule), and goes once the dispute is settled: blue's state is
handed over to green v2 (``demo/2``: green migrates it up itself), each step printed with its
time; green plays on with blue's balance, bets, escrows and positions and
opens positions of its own; its planted bug rolls it back, and the state comes back with it:
green migrates it down and blue holds green's new positions before it acts again.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from supervisor import config, logs
from supervisor.config import Color
from supervisor.errors import Refused

if TYPE_CHECKING:
    from supervisor.daemon import Daemon

BLUE_ROUNDS = 20  # rounds blue plays before the switch
# In the handoff story escrow-1 is disputed for this long after the agents start (a deploy
# waits for it), and the escrows are due in an hour: past the One Rule's 30 minutes.
DISPUTE = "0:5"
ESCROW_DUE_S = "3600"
BUG_AFTER = 8  # green's bug fires on its ninth round in charge
HANDOFF_BUG_AFTER = 16  # in the handoff story green plays longer: it opens positions first


class Narrator:
    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.lines: list[str] = []

    def __call__(self, text: str) -> None:
        line = f"  +{time.monotonic() - self.t0:6.2f}s  {text}"
        self.lines.append(line)
        print(line, flush=True)


async def _until(check: Callable[[], bool], what: str, within_s: float = 20.0) -> None:
    """Wait for a state the daemon reaches by itself. In-process the check is a few attribute
    reads, so a 10 ms poll costs nothing and needs no hook in the daemon for the demo."""
    try:
        async with asyncio.timeout(within_s):
            while not check():  # noqa: ASYNC110
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise DemoFailed(f"timed out waiting for {what}") from None


class DemoFailed(Exception):
    pass


def _config(directory: Path, story: str = "rollback") -> config.Config:
    agent = [sys.executable, "-m", "supervisor.demo.agent"]
    venue = directory / "venue"  # the simulated exchange's order ids, shared by both colors
    venue.mkdir(exist_ok=True)
    world = (
        {"AGENTSUP_DEMO_DISPUTE": DISPUTE, "AGENTSUP_DEMO_ESCROW_DUE_S": ESCROW_DUE_S}
        if story == "handoff"
        else {}
    )
    return config.parse(
        {
            "supervisor": {
                "name": "demo",
                "namespace": "demo",
                "state_dir": str(directory),
                "control_socket": str(directory / "control.sock"),
                "shutdown_timeout_s": 20.0,
            },
            "metrics": {"listen": ""},
            "rollout": {"probation_s": 0},
            "agents": {
                "blue": {
                    "command": agent,
                    "version": "1.0.0",
                    "env": {
                        "AGENTSUP_DEMO_SEED": "7",
                        "AGENTSUP_DEMO_VENUE_DIR": str(venue),
                        **world,
                    },
                },
                "green": {
                    "command": agent,
                    "version": "2.0.0",
                    "env": {
                        "AGENTSUP_DEMO_SEED": "7",
                        "AGENTSUP_DEMO_VENUE_DIR": str(venue),
                        "AGENTSUP_DEMO_BUG": "exception",
                        "AGENTSUP_DEMO_BUG_AFTER": str(
                            HANDOFF_BUG_AFTER if story == "handoff" else BUG_AFTER
                        ),
                        "AGENTSUP_DEMO_SCHEMA": "2",  # v2 changed its state's schema
                        **world,
                    },
                },
            },
        }
    )


def _records(path: Path, event: str) -> list[dict[str, Any]]:
    out = []
    for line in path.read_bytes().splitlines():
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if record.get("event") == event:
            out.append(record)
    return out


def _said(path: Path, color: str, start: str, after: int = 0) -> list[str]:
    """What ``color``'s agent printed (its stdout is in the daemon's log), from line ``after``."""
    prefix = f"[{color} v"
    out = []
    for record in _records(path, "child_output")[after:]:
        line = str(record.get("line", ""))
        if line.startswith(prefix) and line.split("] ", 1)[-1].startswith(start):
            out.append(line.split("] ", 1)[-1])
    return out


async def _started(daemon: Daemon, runner: asyncio.Task[int]) -> None:
    """Until the daemon is ready; a daemon that stopped while starting is the demo's failure."""
    await _until(lambda: daemon.ready.is_set() or runner.done(), "the daemon to start")
    if runner.done():
        raise DemoFailed(f"the daemon stopped while starting (exit {runner.result()})")


async def _handoff_story(
    directory: Path, say: Narrator, make_daemon: Callable[[config.Config], Daemon]
) -> dict[str, Any]:
    log_path = directory / "daemon.log"
    daemon = make_daemon(_config(directory, "handoff"))
    runner = asyncio.create_task(daemon.run())
    deployment = daemon.deployment
    tally = deployment.pipeline.tally
    state = deployment.rollout
    try:
        await _started(daemon, runner)
        await _until(
            lambda: all(c.speaks_protocol for c in deployment.children.values()),
            "both agents to say hello",
        )
        say("blue v1.0.0 (state schema demo/1) in charge; green v2.0.0 (demo/2) warm on standby")
        await _until(lambda: tally[Color.BLUE].rounds >= BLUE_ROUNDS, "blue to play")
        say(
            f"blue has played {tally[Color.BLUE].rounds} rounds; the operator runs "
            "`agentsup deploy green`"
        )
        try:
            await deployment.deploy(Color.GREEN, "blue-green", False, None, "operator (demo)")
            raise DemoFailed("the deploy went ahead during the escrow dispute")
        except Refused as exc:
            say(f"refused ({exc.code}): the One Rule, no deploy during an escrow dispute")
            for line in str(exc).splitlines()[1:-1]:
                say(f"  {line.strip()}")
        await _until(
            lambda: all(g.gate != "escrow_dispute" for g in deployment.gates.closed(Color.GREEN)),
            "the dispute to be settled",
        )
        say("the counterparty settles escrow-1's dispute; the operator deploys again")
        deployed = await deployment.deploy(
            Color.GREEN, "blue-green", False, None, "operator (demo)"
        )
        result = deployed["handoff"]
        for step in result["steps"]:
            say(f"  handoff step {step['step']:<8} {step['ms']:8.3f} ms")
        snap = result["snapshot"]
        say(
            f"green in charge at epoch {result['epoch']}, on probation; nobody could act for "
            f"{result['window_ms']:.1f} ms; blue's {snap['bytes']}-byte state ({snap['schema']},"
            f" sha256 {snap['digest'][:12]}…) is in Redis and state_dir"
        )
        await _until(lambda: bool(_said(log_path, "green", "restored")), "green's restore")
        say(f"green says: {_said(log_path, 'green', 'restored')[-1]}")
        await _until(lambda: state.state.active is Color.BLUE, "the rollback", within_s=30)
        fired = _records(log_path, "trigger_fired")
        if fired:
            say(f"green's planted bug fires: {fired[-1]['message']}; rolled back to blue")
        await _until(
            lambda: bool(_records(log_path, "state_carried_back")), "the state to come back"
        )
        back = _records(log_path, "state_carried_back")[-1]
        say(
            f"blue was held quiesced until green's state was back ({back['how']}, "
            f"{back['ms']:.1f} ms): green migrated it down to demo/1"
        )
        restored = _said(log_path, "blue", "restored")
        if restored:
            say(f"blue says: {restored[-1]}")
        resumed = tally[Color.BLUE].rounds
        await _until(lambda: tally[Color.BLUE].rounds >= resumed + 3, "blue to play again")
        say(f"blue plays on with green's positions (round {tally[Color.BLUE].rounds})")
        return await deployment.status()
    finally:
        daemon.request_shutdown("demo finished")
        await runner


async def _story(
    directory: Path, say: Narrator, make_daemon: Callable[[config.Config], Daemon]
) -> dict[str, Any]:
    log_path = directory / "daemon.log"
    daemon = make_daemon(_config(directory))
    runner = asyncio.create_task(daemon.run())
    tally = daemon.deployment.pipeline.tally
    state = daemon.deployment.rollout
    try:
        await _started(daemon, runner)
        say(
            f"supervisor ready in {time.monotonic() - say.t0:.2f} s: embedded Redis on "
            f"{daemon.config.embedded_redis_socket}, epoch {state.state.epoch}, "
            f"blue v1.0.0 in charge"
        )
        await _until(
            lambda: all(c.speaks_protocol for c in daemon.deployment.children.values()),
            "both agents to say hello",
        )
        say("blue v1.0.0 and green v2.0.0 said hello; green is warm on standby, fenced out")
        await _until(lambda: tally[Color.BLUE].rounds >= BLUE_ROUNDS, "blue to play")
        b = tally[Color.BLUE]
        say(
            f"blue has played {b.rounds} rounds (PnL {b.pnl:+.2f}); the operator runs "
            "`agentsup switch green`"
        )
        change = await state.switch(Color.GREEN, "operator (demo)", time.monotonic())
        say(
            f"flip: green v2.0.0 in charge, on probation, at epoch {change.epoch}; blue told "
            "to stand by; blue's old epoch can no longer get a permit"
        )
        await _until(lambda: state.state.active is Color.BLUE, "the rollback", within_s=30)
        rolled = state.state
        fired = _records(log_path, "trigger_fired")
        back = _records(log_path, "rolled_back")
        if fired:
            f = fired[0]
            say(
                f"green's round {BUG_AFTER + 1}: the planted bug raises; trigger "
                f"{f['trigger']!r} ({f['severity']}): {f['message']}"
            )
        ms = f"{back[0]['flip_ms']:.2f} ms" if back else "?"
        say(
            f"rollback: blue back in charge at epoch {rolled.epoch}, {ms} from the verdict to "
            "the flip committed in Redis and both children told"
        )
        if Color.GREEN in rolled.rejected:
            say(
                f"green v{rolled.rejected[Color.GREEN]} is rejected: nothing automatic will "
                "promote it again until an operator switches to it"
            )
        resumed = tally[Color.BLUE].rounds
        await _until(lambda: tally[Color.BLUE].rounds >= resumed + 5, "blue to play again")
        g = tally[Color.GREEN]
        say(
            f"blue plays on (round {tally[Color.BLUE].rounds}); green played {g.rounds} rounds "
            f"(PnL {g.pnl:+.2f}) before the rollback"
        )
        return await daemon.deployment.status()
    finally:
        daemon.request_shutdown("demo finished")
        await runner


def demo(
    make_daemon: Callable[[config.Config], Daemon], keep: bool = False, story: str = "rollback"
) -> int:
    """Run the demo with the daemon ``make_daemon`` builds (the CLI hands it the real one:
    nothing but the CLI imports the daemon); 0 when the story ended with blue back in
    charge. ``story``: ``rollback`` (the default) or ``handoff``."""
    import uvloop

    from supervisor.control.views import render_status

    directory = Path(tempfile.mkdtemp(prefix="agentsup-demo-", dir="/tmp"))
    print(
        "agent-supervisor demo: blue v1.0.0 is the known good version; green v2.0.0 has a "
        "planted bug" + (" and a new state schema" if story == "handoff" else "") + "\n",
        flush=True,
    )
    say = Narrator()
    with (directory / "daemon.log").open("w") as sink:
        logs.configure("info", json=True, sink=sink)
        try:
            tell = _handoff_story if story == "handoff" else _story
            status = uvloop.run(tell(directory, say, make_daemon))
        except (DemoFailed, Exception) as exc:
            print(
                f"\nagentsup demo: FAILED: {exc}\nthe daemon's log: {directory / 'daemon.log'}",
                file=sys.stderr,
            )
            return 1
    print("\nThe flips, as recorded in Redis (the stream demo:flips):")
    for f in reversed(status["flips"]):
        print(
            f"  epoch {f['epoch']:>2}  {f['from'] or '-':>5} -> {f['to']:<5}  by {f['by']:<16} "
            f"{f['reason']}"
        )
    print("\nFinal status:\n")
    print("  " + render_status(status).replace("\n", "\n  "))
    if keep:
        print(f"\nstate and the daemon's JSON log kept in {directory}")
    else:
        shutil.rmtree(directory, ignore_errors=True)
    ok = status["active"] == "blue" and status.get("rejected", {}).get("green") == "2.0.0"
    return 0 if ok else 1
