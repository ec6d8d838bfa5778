"""The daemon's life: crash loops, SIGTERM, kill -9 and a restart, a seed-style agent."""

from __future__ import annotations

import asyncio
import os
import signal

from redis import Redis

from supervisor.arbiter.scripts import PERMIT, Keys
from tests.harness import PY, SEED_AGENT, DaemonProcess, agent, alive, running_daemon
from tests.redis_server import RedisServer

RAW = [PY, "tests/agents/raw_agent.py"]
KEYS = Keys("t", "agent:active_version")


def permit(server: RedisServer, color: str, epoch: int, key: str, token: str = "t1") -> str:
    r = Redis.from_url(server.url)
    try:
        script = r.register_script(PERMIT)
        answer = script(
            keys=KEYS.permit_keys(key, color),
            args=[color, str(epoch), "60000", token, "0", key, "1000"],
        )[0]
        return answer.decode() if isinstance(answer, bytes) else str(answer)
    finally:
        r.close()


async def test_crash_looping_child_goes_fatal_and_the_daemon_stays_up(
    redis_server: RedisServer,
) -> None:
    crashing = agent(
        ["sh", "-c", "echo starting; exit 3"],
        "2.0.0",
        restart={
            "max_restarts": 2,
            "period_s": 60.0,
            "backoff_initial_s": 0.05,
            "backoff_max_s": 0.1,
        },
    )
    async with running_daemon(
        redis_url=redis_server.url, blue=agent(RAW, "1.0.0"), green=crashing
    ) as d:
        await d.wait_log("child_fatal", color="green")
        # Green may give up before blue has even started (a slow machine, coverage): wait.
        st = await d.wait_status(lambda s: s["children"]["blue"]["state"] == "RUNNING")
        assert st["children"]["green"]["state"] == "FATAL"
        assert st["children"]["green"]["restarts"] == 3
        assert st["children"]["blue"]["state"] == "RUNNING"
        assert st["active"] == "blue"
        refused = await d.cli("switch", "green")
        assert refused.rc == 1
        assert "not_running" in refused.err
        # An operator can start it again; it crashes again and goes FATAL again.
        mark = len(d.logs)
        assert (await d.cli("restart", "green")).rc == 0
        await d.wait_log("child_fatal", color="green", since=mark)
        assert (await d.cli("restart", "blue")).rc == 1


async def test_sigterm_stops_both_children_within_their_timeouts_and_exits_0(
    redis_server: RedisServer,
) -> None:
    stubborn = agent(
        ["sh", "-c", "trap '' TERM; echo up; while :; do sleep 0.1; done"],
        "2.0.0",
        stop_timeout_s=1.0,
    )
    async with running_daemon(
        redis_url=redis_server.url, blue=agent(RAW, "1.0.0"), green=stubborn
    ) as d:
        await d.wait_status(lambda s: s["children"]["green"]["state"] == "RUNNING")
        pids = d.child_pids()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await d.signal(signal.SIGTERM)
        assert await d.wait(30) == 0
        took = loop.time() - t0
        await d.wait_log("child_stop_timeout", color="green")  # it ignored SIGTERM: SIGKILL
        assert not d.find("child_stop_timeout", color="blue")  # blue left on SIGTERM
        assert all(not alive(pid) for pid in pids.values())
        assert took < 15  # 1 s for green's timeout, with lots of room for a slow machine
        assert d.find("stopped", exit_code=0)


async def test_kill_9_then_restart_adopts_redis_and_fences_the_old_epoch(
    redis_server: RedisServer,
) -> None:
    # Each child leaves a grandchild in its process group: the parent-death signal reaches
    # only the child itself, so the next daemon must clean up the rest.
    with_grandchild = ["sh", "-c", "sleep 1000 & exec " + " ".join(RAW)]
    async with running_daemon(
        redis_url=redis_server.url,
        blue=agent(with_grandchild, "1.0.0"),
        green=agent(with_grandchild, "2.0.0"),
    ) as d:
        await d.wait_status(lambda s: all(c["protocol"] for c in s["children"].values()))
        assert (await d.cli("switch", "green")).rc == 0
        before = await d.status()
        old_epoch = before["epoch"]
        pids = d.child_pids()
        assert permit(redis_server, "green", old_epoch, "k0") == "ok"

        await d.signal(signal.SIGKILL)
        assert await d.wait(10) == -9
        for pid in pids.values():
            for _ in range(100):
                if not alive(pid):
                    break
                await asyncio.sleep(0.05)
            assert not alive(pid), f"child {pid} outlived its daemon"

        again = DaemonProcess(d.dir, d.config, d.env)
        await again.start()
        try:
            await again.wait_log("killed_leftover_children")
            st = await again.status()
            # Redis's truth is adopted: green is still the candidate in charge.
            assert (st["active"], st["candidate"], st["stable"]) == ("green", "green", "blue")
            assert st["epoch"] > old_epoch
            assert permit(redis_server, "green", old_epoch, "k1") == "stale_epoch"
            assert permit(redis_server, "blue", st["epoch"], "k2") == "not_active"
            assert permit(redis_server, "green", st["epoch"], "k0") == "duplicate"
            assert permit(redis_server, "green", st["epoch"], "k3") == "ok"
        finally:
            await again.stop()


async def test_an_agent_written_the_seed_way_is_supervised_and_follows_a_flip(
    redis_server: RedisServer,
) -> None:
    async with running_daemon(
        redis_url=redis_server.url,
        blue=agent(SEED_AGENT, "1.0.0"),
        green=agent(SEED_AGENT, "2.0.0"),
    ) as d:
        await d.wait_log("child_output", color="blue", line="seed-agent blue active=True")
        await d.wait_log("child_output", color="green", line="seed-agent green active=False")
        st = await d.wait_status(
            lambda s: all(c["state"] == "RUNNING" for c in s["children"].values())
        )
        assert not st["children"]["blue"]["protocol"]  # RUNNING by start_seconds, no hello
        assert (await d.cli("switch", "green")).rc == 0
        await d.wait_log("child_output", color="green", line="seed-agent green active=True")
        await d.wait_log("child_output", color="blue", line="seed-agent blue active=False")


async def test_sigterm_right_after_ready_stops_promptly(redis_server: RedisServer) -> None:
    # Regression: a cancellation swallowed by redis-py inside the watcher's subscribe once
    # left the daemon waiting forever.
    async with running_daemon(
        redis_url=redis_server.url,
        blue=agent(["sleep", "100"], "1"),
        green=agent(["sleep", "100"], "2"),
    ) as d:
        await d.signal(signal.SIGTERM)
        assert await d.wait(15) == 0
        assert not d.find("task_ignored_cancel")


async def test_the_acting_child_restarting_bumps_the_epoch(redis_server: RedisServer) -> None:
    async with running_daemon(
        redis_url=redis_server.url, blue=agent(RAW, "1.0.0"), green=agent(RAW, "2.0.0")
    ) as d:
        st = await d.wait_status(lambda s: all(c["protocol"] for c in s["children"].values()))
        before = st["epoch"]
        os.kill(st["children"]["blue"]["pid"], signal.SIGKILL)  # stable, in charge
        bump = await d.wait_log("flip", reason="restart")
        assert bump["epoch"] == before + 1
        assert bump["active"] == "blue"  # still blue: a restart is not a rollback
        # Whatever the dead process left behind would hold the old epoch: fenced.
        assert permit(redis_server, "blue", before, "leftover") == "stale_epoch"
        await d.wait_status(lambda s: s["children"]["blue"]["protocol"])


async def test_a_second_sigint_forces_the_exit(redis_server: RedisServer) -> None:
    stubborn = agent(
        ["sh", "-c", "trap '' TERM; while :; do sleep 0.1; done"], "1", stop_timeout_s=30.0
    )
    async with running_daemon(
        redis_url=redis_server.url, blue=stubborn, green=agent(["sleep", "100"], "2")
    ) as d:
        await d.wait_status(lambda s: s["children"]["blue"]["state"] == "RUNNING")
        pids = d.child_pids()
        await d.signal(signal.SIGINT)
        await d.wait_log("child_state", color="blue", state="STOPPING")
        await d.signal(signal.SIGINT)  # the operator will not wait 30 s
        d.expected_exit = 130
        assert await d.wait(10) == 130
        await d.wait_log("forced_exit")
        for pid in pids.values():
            for _ in range(100):
                if not alive(pid):
                    break
                await asyncio.sleep(0.05)
            assert not alive(pid)
