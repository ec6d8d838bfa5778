"""Each color in a cgroup of its own (children/cgroup.py), with a real daemon started in a
delegated cgroup v2 made by the test (as systemd's ``Delegate=yes`` gives one): whatever a
child starts is born in its color's group, and what escaped every other look is still found
by the kernel, after a clean stop or a ``kill -9`` of the daemon."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor.children.cgroup import _cgroup2_mount, own_cgroup2
from tests.children.test_containment import RAW, detaching, gone, pid_dir, wait_announced
from tests.harness import DaemonProcess, agent, alive, running_daemon
from tests.redis_server import RedisServer


@pytest.fixture
def delegated() -> Iterator[Path]:
    """A cgroup of the test's own under the v2 hierarchy's root; emptied and removed after."""
    mount = _cgroup2_mount()
    if mount is None or not os.access(mount, os.W_OK):
        pytest.skip("no writable cgroup v2 hierarchy (root and a cgroup2 mount are needed)")
    group = mount / f"as-cg-{uuid.uuid4().hex[:8]}"
    group.mkdir()
    try:
        yield group
    finally:
        for sub in [*(p for p in group.iterdir() if p.is_dir()), group]:
            with contextlib.suppress(OSError):
                (sub / "cgroup.kill").write_text("1")
        for sub in [*(p for p in group.iterdir() if p.is_dir()), group]:
            for _ in range(200):
                try:
                    sub.rmdir()
                    break
                except OSError:  # busy while the killed processes are reaped
                    os.sched_yield()


async def test_each_color_runs_in_a_cgroup_that_holds_what_it_sets_apart(
    redis_server: RedisServer, delegated: Path
) -> None:
    with pid_dir() as pids:
        async with running_daemon(
            redis_url=redis_server.url,
            blue=detaching("setsid", "1.0.0", pids),
            green=agent(RAW, "2.0.0"),
            cgroup=delegated,
        ) as d:
            [grandchild] = await wait_announced(pids, "blue")
            children = d.child_pids()
            assert d.proc is not None
            assert own_cgroup2(d.proc.pid) == delegated
            assert own_cgroup2(children["blue"]) == delegated / "blue"
            assert own_cgroup2(children["green"]) == delegated / "green"
            assert own_cgroup2(grandchild) == delegated / "blue"  # setsid() does not leave it
            assert d.find("cgroups_on")
            await d.signal(signal.SIGTERM)
            assert await d.wait(30) == 0
            assert not alive(grandchild)
            # Emptied and removed with the daemon's stop.
            assert not (delegated / "blue").exists()
            assert not (delegated / "green").exists()


async def test_after_a_kill_9_the_cgroup_finds_what_children_json_never_knew(
    redis_server: RedisServer, delegated: Path
) -> None:
    """The daemon killed with -9 before it could record a grandchild (here: its record file
    lost, as a full disk would leave it): the next daemon still kills it, by its cgroup."""
    with pid_dir() as pids:
        async with running_daemon(
            redis_url=redis_server.url,
            blue=detaching("setsid", "1.0.0", pids),
            green=agent(RAW, "2.0.0"),
            cgroup=delegated,
        ) as d:
            [grandchild] = await wait_announced(pids, "blue")
            await d.signal(signal.SIGKILL)
            assert await d.wait(10) == -9
            assert alive(grandchild)  # the parent-death signal does not reach it
            (d.state_dir / "children.json").unlink(missing_ok=True)
            shutil.rmtree(d.state_dir / "children.json", ignore_errors=True)

            again = DaemonProcess(d.dir, d.config, d.env, delegated)
            await again.start()
            try:
                swept = await again.wait_log("killed_leftover_children", found_by="cgroup")
                assert grandchild in swept["pids"]
                assert swept["color"] == "blue"
                assert await gone(grandchild), "the next daemon missed what its cgroup held"
            finally:
                await again.stop()
