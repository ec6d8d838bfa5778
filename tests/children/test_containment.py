"""Containment (DESIGN.md invariant 11): no process of a deployment outlives its stop, whatever
it did to detach itself (setsid, a double fork), across a clean stop, a kill -9 of the daemon,
or the agent's own exit; and the reaper that does it never touches what the daemon started on
purpose (the colors' leaders, the embedded Redis) nor steals their exit statuses."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from supervisor.children.proctable import start_time_of
from supervisor.children.reaper import kill_leftovers
from tests.harness import PY, DaemonProcess, agent, alive, running_daemon
from tests.redis_server import RedisServer, short_tempdir

DETACHING = [PY, str(Path(__file__).parents[1] / "agents" / "detaching_agent.py")]
RAW = [PY, str(Path(__file__).parents[1] / "agents" / "raw_agent.py")]
FAST_RESTARTS = {
    "max_restarts": 100,
    "period_s": 60.0,
    "backoff_initial_s": 0.05,
    "backoff_max_s": 0.2,
}


def detaching(mode: str, version: str, pids: Path, **fields: Any) -> dict[str, Any]:
    """An ``[agents.COLOR]`` table for the hostile agent in this mode."""
    return agent(DETACHING, version, env={"DETACH_MODE": mode, "DETACH_DIR": str(pids)}, **fields)


def survivors(pids: Path) -> list[int]:
    """Every live process of a hostile agent started with this DETACH_DIR, announced or not
    (found by its environment, which a fork inherits)."""
    mark = f"DETACH_DIR={pids}\0".encode()
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError), open(f"/proc/{entry.name}/environ", "rb") as f:
                if mark in f.read() + b"\0" and alive(int(entry.name)):
                    found.append(int(entry.name))
    return found


@contextlib.contextmanager
def pid_dir() -> Iterator[Path]:
    """Where the detached processes announce themselves. On the way out (the daemon stopped)
    none of them may be left; any that is, is killed (they ignore SIGTERM) and fails the test."""
    directory = short_tempdir("as-pids-")
    try:
        yield directory
        left = survivors(directory)
        assert not left, f"processes outlived their daemon: {left}"
    finally:
        for pid in survivors(directory):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(directory, ignore_errors=True)


def announced(pids: Path, color: str) -> list[int]:
    return sorted(int(p.read_text()) for p in pids.glob(f"{color}-*.pid"))


async def wait_announced(pids: Path, color: str, n: int = 1, timeout: float = 15.0) -> list[int]:
    """The pids of the first ``n`` processes this color's agent detached (polled: a file that
    appears is no event a test can wait on otherwise)."""
    async with asyncio.timeout(timeout):
        while len(found := announced(pids, color)) < n:
            await asyncio.sleep(0.05)
    return found


async def gone(pid: int, timeout: float = 10.0) -> bool:
    """True once the process is dead (a zombie counts), polled for at most ``timeout``."""
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return not alive(pid)


async def wait_recorded(records: Path, pid: int, timeout: float = 15.0) -> None:
    """Until children.json names this pid (the reaper records a color's tree as it changes)."""
    async with asyncio.timeout(timeout):
        while True:
            with contextlib.suppress(OSError):
                if f'"pid":{pid},'.encode() in await asyncio.to_thread(records.read_bytes):
                    return
            await asyncio.sleep(0.05)


def metric(d: DaemonProcess, name: str) -> float:
    port = int(d.find("metrics_listening")[0]["address"].rsplit(":", 1)[1])
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not exported")


async def test_a_clean_stop_kills_a_setsid_grandchild(redis_server: RedisServer) -> None:
    with pid_dir() as pids:
        async with running_daemon(
            redis_url=redis_server.url,
            blue=detaching("setsid", "1.0.0", pids),
            green=agent(RAW, "2.0.0"),
        ) as d:
            [grandchild] = await wait_announced(pids, "blue")
            assert os.getsid(grandchild) == grandchild  # out of the agent's group and session
            await d.signal(signal.SIGTERM)
            assert await d.wait(30) == 0
            # Killed and reaped before the daemon exited, not some time after.
            assert not alive(grandchild), "a setsid grandchild outlived a clean stop"
            assert d.find("orphan_killed", orphan=grandchild)


async def test_after_a_kill_9_the_next_daemon_kills_the_setsid_grandchild(
    redis_server: RedisServer,
) -> None:
    with pid_dir() as pids:
        async with running_daemon(
            redis_url=redis_server.url,
            blue=detaching("setsid", "1.0.0", pids),
            green=agent(RAW, "2.0.0"),
        ) as d:
            [grandchild] = await wait_announced(pids, "blue")
            await wait_recorded(d.state_dir / "children.json", grandchild)
            leader = d.child_pids()["blue"]

            await d.signal(signal.SIGKILL)
            assert await d.wait(10) == -9
            assert await gone(leader)  # the parent-death signal
            assert alive(grandchild)  # ... which does not reach a setsid grandchild

            again = DaemonProcess(d.dir, d.config, d.env)
            await again.start()
            try:
                swept = await again.wait_log("killed_leftover_children")
                assert grandchild in swept["pids"]
                assert await gone(grandchild), "the next daemon's sweep missed it"
            finally:
                await again.stop()


async def test_an_orphaned_setsid_grandchild_is_killed_while_the_agent_runs(
    redis_server: RedisServer,
) -> None:
    with pid_dir() as pids:
        async with running_daemon(
            redis_url=redis_server.url,
            blue=detaching("orphan", "1.0.0", pids),
            green=agent(RAW, "2.0.0"),
        ) as d:
            [grandchild] = await wait_announced(pids, "blue")
            leader = d.child_pids()["blue"]
            await d.wait_log("orphan_killed", orphan=grandchild, reason="reparented")
            assert await gone(grandchild)
            assert d.proc is not None
            assert d.proc.returncode is None
            st = await d.status()
            assert st["children"]["blue"]["pid"] == leader  # the agent itself was left alone
            assert alive(leader)
            assert metric(d, "agentsup_orphans_killed_total") >= 1


async def test_a_double_forked_daemon_is_killed_while_the_agent_runs(
    redis_server: RedisServer,
) -> None:
    with pid_dir() as pids:
        async with running_daemon(
            redis_url=redis_server.url,
            blue=agent(RAW, "1.0.0"),
            green=detaching("double_fork", "2.0.0", pids),
        ) as d:
            [daemonized] = await wait_announced(pids, "green")
            leader = d.child_pids()["green"]
            await d.wait_log("orphan_killed", orphan=daemonized, reason="reparented")
            assert await gone(daemonized)
            assert alive(leader)
            assert (await d.status())["children"]["green"]["pid"] == leader


async def test_with_embedded_redis_the_reaper_spares_what_the_daemon_started() -> None:
    # Blue keeps orphaning a grandchild once, so the reaper has work; green exits with 3 over
    # and over, so children are spawned and reaped under the reaper's nose all along.
    with pid_dir() as pids:
        async with running_daemon(
            redis_url=None,
            blue=detaching("orphan", "1.0.0", pids),
            green=detaching("exit", "2.0.0", pids, restart=FAST_RESTARTS),
        ) as d:
            redis_pid = (await d.wait_log("embedded_redis_started"))["pid"]
            blue = (await d.wait_log("child_spawned", color="blue"))["pid"]
            [orphan] = await wait_announced(pids, "blue")
            await d.wait_log("orphan_killed", orphan=orphan, reason="reparented")
            mark = 0
            for _ in range(4):
                exited = await d.wait_log("child_exited", color="green", since=mark)
                assert exited["returncode"] == 3  # the exit status was not stolen
                mark = d.logs.index(exited) + 1
            # Each green left a setsid child behind it: killed once green was gone.
            left_by_green = (await wait_announced(pids, "green", n=3))[:3]
            for pid in left_by_green:
                await d.wait_log("orphan_killed", orphan=pid)
                assert await gone(pid)
            st = await d.status()
            assert st["redis"] == "up"
            assert st["children"]["blue"]["pid"] == blue
            assert st["children"]["blue"]["state"] == "RUNNING"
            assert alive(redis_pid)
            assert alive(blue)
            leaders = {r["pid"] for r in d.find("child_spawned")}
            killed = {r["orphan"] for r in d.find("orphan_killed")}
            assert not killed & (leaders | {redis_pid})
            assert killed >= {orphan, *left_by_green}


async def test_a_children_record_that_cannot_be_written_leaves_the_child_supervised(
    redis_server: RedisServer,
) -> None:
    async with running_daemon(
        redis_url=redis_server.url,
        blue=agent(RAW, "1.0.0"),
        green=agent(RAW, "2.0.0", restart=FAST_RESTARTS),
    ) as d:
        st = await d.wait_status(lambda s: all(c["protocol"] for c in s["children"].values()))
        # The record is replaced through children.tmp: a directory there fails every write.
        blocker = d.state_dir / "children.tmp"
        blocker.mkdir()
        mark = len(d.logs)
        old = st["children"]["green"]["pid"]
        os.kill(old, signal.SIGKILL)
        await d.wait_log("children_record_write_failed", since=mark)
        # The new green is watched all the same: RUNNING, and its own exit is seen.
        st = await d.wait_status(
            lambda s: (
                s["children"]["green"]["pid"] not in (None, old)
                and s["children"]["green"]["protocol"]
            )
        )
        assert st["children"]["green"]["state"] == "RUNNING"
        mark = len(d.logs)
        old = st["children"]["green"]["pid"]
        os.kill(old, signal.SIGKILL)
        await d.wait_log("child_exited", color="green", since=mark, returncode=-9)
        await d.wait_status(
            lambda s: (
                s["children"]["green"]["pid"] not in (None, old)
                and s["children"]["green"]["protocol"]
            )
        )
        assert metric(d, 'agentsup_state_write_failures_total{file="children"}') >= 1
        blocker.rmdir()  # the disk is back: the next scan writes the record again
        await d.wait_log("children_record_written_again", since=mark)


def test_leftover_records_kill_the_same_processes_and_spare_a_reused_pid() -> None:
    # A descendant's record kills that very process (pid and start time), never another
    # process that has its pid now.
    procs = [
        subprocess.Popen(["sleep", "60"], start_new_session=True),
        subprocess.Popen(["sleep", "60"], start_new_session=True),
    ]
    try:
        same, reused = procs
        same_start, reused_start = start_time_of(same.pid), start_time_of(reused.pid)
        assert same_start is not None
        assert reused_start is not None
        killed = kill_leftovers(
            [
                {"pid": same.pid, "start_time": same_start, "group": False},
                {"pid": reused.pid, "start_time": reused_start - 1, "group": False},
                {"pid": "junk"},
                {"pid": 1, "start_time": 0},
            ]
        )
        assert killed == [same.pid]
        assert same.wait(timeout=10) == -signal.SIGKILL
        assert reused.poll() is None
    finally:
        for p in procs:
            p.kill()
            p.wait()
