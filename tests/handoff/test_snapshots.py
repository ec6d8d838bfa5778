"""Snapshots besides a handoff: every ``snapshot_interval_s`` from the color in charge (its
age and size exported), and at SIGTERM after a quiesce (DESIGN.md invariant 7); and
``agentsup demo handoff`` tells its story to the end."""

from __future__ import annotations

import subprocess
import sys
import urllib.request

import pytest

from tests.handoff.support import blue, both_speak, green, opened
from tests.harness import running_daemon
from tests.redis_server import RedisServer

pytestmark = pytest.mark.timeout(90)


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("agentsup_snapshot_") or line.startswith("agentsup_handoff"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


async def test_the_color_in_charge_is_snapshotted_periodically_and_its_age_exported(
    redis_server: RedisServer,
) -> None:
    async with running_daemon(
        redis_url=redis_server.url,
        blue=blue(),
        green=green(),
        sections={"handoff": {"snapshot_interval_s": 1.0}},
    ) as d:
        await both_speak(d)
        first = await d.wait_log("snapshot_stored", color="blue")
        second = await d.wait_log(
            "snapshot_stored", color="blue", where=lambda r: r["snapshot"] != first["snapshot"]
        )
        assert not d.find("snapshot_stored", color="green")  # standby is not snapshotted
        port = int((await d.wait_log("metrics_listening"))["address"].rsplit(":", 1)[1])
        metrics = scrape(port)
        assert metrics["agentsup_snapshot_interval_seconds"] == 1.0
        assert metrics['agentsup_snapshot_bytes{color="blue"}'] == second["bytes"]
        assert metrics['agentsup_snapshot_age_seconds{color="blue"}'] < 10
        assert metrics['agentsup_snapshot_bytes{color="green"}'] == 0
        assert redis_server.cli("HGET", "t:snapshot:blue", "id") in (
            second["snapshot"],
            *(r["snapshot"] for r in d.find("snapshot_stored", color="blue")),
        )


async def test_sigterm_quiesces_and_snapshots_the_color_in_charge_before_the_stop(
    redis_server: RedisServer,
) -> None:
    async with running_daemon(redis_url=redis_server.url, blue=blue(), green=green()) as d:
        await both_speak(d)
        await opened(d, "blue", 2)
        assert await d.stop() == 0
        at_stop = d.find("snapshot_at_stop", color="blue")
        assert len(at_stop) == 1
        stopping = next(i for i, r in enumerate(d.logs) if r.get("event") == "stopping")
        stored = next(i for i, r in enumerate(d.logs) if r.get("event") == "snapshot_at_stop")
        stopped = [
            i
            for i, r in enumerate(d.logs)
            if r.get("event") == "child_state" and r.get("state") == "STOPPING"
        ]
        assert stopping < stored < min(stopped)  # before any child was stopped
        copy = (d.state_dir / "snapshots" / "blue.snap").read_bytes()
        assert at_stop[0]["digest"] in copy.partition(b"\n")[0].decode()


def test_the_handoff_demo_runs_to_the_end() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "supervisor", "demo", "handoff"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "the operator runs `agentsup deploy green`" in out
    # The deploy gates: refused while escrow-1 is disputed, let through once it is settled.
    assert "refused (gates_closed)" in out
    assert "escrow_dispute: 1 escrow dispute(s) open" in out
    assert out.index("refused (gates_closed)") < out.index("dispute; the operator deploys again")
    for step in ("quiesce", "snapshot", "store", "restore", "flip"):
        assert f"handoff step {step}" in out
    assert "green says: restored demo/2:" in out
    assert "blue was held quiesced until green's state was back (carried_back" in out
    # Blue holds the positions green opened.
    blue_says = next(line for line in out.splitlines() if "blue says: restored demo/1" in line)
    assert "BTC-green-" in blue_says
    assert "active: blue" in out
