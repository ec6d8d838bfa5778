"""The fence under the faults of the real world (issue: the fence must hold under every fault).

Each test is one reproduction from the issue, run against a real daemon, real SDK children
(tests/agents/order_agent.py, told which keys to ask for) and a real redis-server: Redis
restored from an older dump, a second daemon on the namespace, an operator's SET while the
daemon is paused, the epoch pushed around by hand and flushed, a full disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import PY, DaemonProcess, agent, running_daemon
from tests.redis_server import RedisServer, short_tempdir
from tests.test_lifecycle import permit

pytestmark = pytest.mark.timeout(120)

ORDER_AGENT = [PY, str(Path(__file__).parent / "agents" / "order_agent.py")]


def order_agent(version: str, directory: Path) -> dict[str, Any]:
    return agent(ORDER_AGENT, version, env={"ORDER_DIR": str(directory)})


async def ask(
    d: DaemonProcess, directory: Path, color: str, key: str, verb: str = "permit"
) -> tuple[str, int]:
    """Make ``color``'s agent ask for a permit on ``key`` (or ``execute`` it); its answer
    (reason, epoch)."""
    fifo = directory / f"{color}.fifo"
    async with asyncio.timeout(15):
        while not fifo.exists():
            await asyncio.sleep(0.02)
    mark = len(d.logs)
    async with asyncio.timeout(15):
        while True:
            try:  # ENXIO: nobody reads it yet (the agent is restarting)
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
                break
            except OSError:
                await asyncio.sleep(0.02)
    try:
        os.write(fd, f"{verb} {key}\n".encode())
    finally:
        os.close(fd)
    said = "permit" if verb == "permit" else "executed"
    record = await d.wait_log(
        "child_output",
        color=color,
        since=mark,
        where=lambda r: str(r.get("line", "")).startswith(f"{said} {key}"),
    )
    if verb != "permit":
        return "executed", -1
    _, _, reason, epoch = record["line"].split()
    return reason, int(epoch) if epoch != "None" else -1


def told_epochs(d: DaemonProcess, color: str) -> list[int]:
    """Every epoch ``color``'s agent was told, in the order it heard them."""
    out = []
    for r in d.logs:
        line = str(r.get("line", ""))
        ours = r.get("event") == "child_output" and r.get("color") == color
        if ours and line.startswith("role "):
            epoch = line.split()[2]
            if epoch != "None":
                out.append(int(epoch))
    return out


async def wait_told(d: DaemonProcess, color: str, role: str, since: int = 0) -> int:
    record = await d.wait_log(
        "child_output",
        color=color,
        since=since,
        where=lambda r: str(r.get("line", "")).startswith(f"role {role} "),
    )
    return int(record["line"].split()[2])


async def both_speaking(d: DaemonProcess) -> dict[str, Any]:
    return await d.wait_status(lambda s: all(c["protocol"] for c in s["children"].values()))


async def test_redis_restored_from_an_older_dump_grants_no_executed_key_again(
    redis_server: RedisServer, orders: Path
) -> None:
    """The issue's first reproduction: a dump taken while green was the candidate; green
    executes order-2, is rolled back automatically and rejected; blue executes order-3;
    Redis dies and comes back from the dump. The daemon must keep blue in charge, keep green
    rejected, and grant neither key again."""
    async with running_daemon(
        redis_url=redis_server.url,
        blue=order_agent("1.0.0", orders),
        green=order_agent("2.0.0", orders),
        sections={"rollout": {"probation_s": 0}, "redis": {"health_interval_s": 0.1}},
    ) as d:
        await both_speaking(d)
        assert (await d.cli("switch", "green")).rc == 0
        await wait_told(d, "green", "active")
        redis_server.cli("SAVE")  # the older dump: green in charge, nothing executed yet
        assert (await ask(d, orders, "green", "order-2"))[0] == "ok"

        green_pid = (await d.status())["children"]["green"]["pid"]
        os.kill(green_pid, signal.SIGKILL)  # the candidate dies while acting: rolled back
        await d.wait_log("flip", trigger="exit")
        st = await d.wait_status(lambda s: s["active"] == "blue" and s["rejected"])
        assert st["rejected"] == {"green": "2.0.0"}
        await wait_told(d, "blue", "active")
        assert (await ask(d, orders, "blue", "order-3"))[0] == "ok"
        before = (await d.status())["epoch"]

        redis_server.stop(signal.SIGKILL)
        mark = len(d.logs)
        redis_server.start()  # from the dump: green active, an older epoch, no order-2/3
        await d.wait_log("redis_regressed", since=mark)
        restored = await d.wait_log("flip", reason="restored", since=mark)
        assert restored["active"] == "blue"
        assert restored["epoch"] > before
        st = await d.wait_status(lambda s: s["epoch"] == restored["epoch"])
        assert (st["active"], st["rejected"]) == ("blue", {"green": "2.0.0"})
        assert redis_server.cli("GET", "agent:active_version") == "blue"

        # Nothing executed before is granted again, to anyone, by any path.
        epoch = st["epoch"]
        assert permit(redis_server, "blue", epoch, "order-2", token="x") == "duplicate"
        assert permit(redis_server, "blue", epoch, "order-3", token="x") == "duplicate"
        await wait_told(d, "blue", "active", since=mark)
        assert (await ask(d, orders, "blue", "order-3"))[0] == "duplicate"
        assert (await ask(d, orders, "blue", "order-4"))[0] == "ok"
        assert (await ask(d, orders, "green", "order-5"))[0] == "not_active"


async def test_a_second_daemon_on_the_namespace_refuses_to_start(
    redis_server: RedisServer, orders: Path
) -> None:
    async with running_daemon(
        redis_url=redis_server.url,
        blue=order_agent("1.0.0", orders),
        green=order_agent("2.0.0", orders),
    ) as first:
        await both_speaking(first)
        async with running_daemon(
            redis_url=redis_server.url, wait_ready=False, expect_exit=1
        ) as second:
            assert await second.wait(timeout=30) == 1
            assert not second.find("child_spawned")  # it never started an agent
            said = "".join(second.raw_stderr)
            assert "supervised by another daemon" in said
            assert f"pid {first.pid}" in said
        st = await first.status()
        assert st["active"] == "blue"
        assert (await ask(first, orders, "blue", "order-1"))[0] == "ok"


async def test_a_waiting_daemon_takes_over_only_when_the_holder_lets_go(
    redis_server: RedisServer, orders: Path
) -> None:
    async with running_daemon(
        redis_url=redis_server.url,
        blue=order_agent("1.0.0", orders),
        green=order_agent("2.0.0", orders),
    ) as first:
        await both_speaking(first)
        waiting_dir = short_tempdir("as-o-")
        try:
            async with running_daemon(
                redis_url=redis_server.url,
                blue=order_agent("1.0.0", waiting_dir),
                green=order_agent("2.0.0", waiting_dir),
                sections={"supervisor": {"on_lease_held": "wait"}},
                wait_ready=False,
            ) as second:
                await second.wait_log("lease_waiting")
                assert not second.find("child_spawned")
                epoch = (await first.status())["epoch"]
                assert await first.stop() == 0
                await second.wait_log("lease_taken", timeout=30)
                await second.wait_log("ready", timeout=30)
                st = await both_speaking(second)
                assert st["epoch"] > epoch
                assert (await ask(second, waiting_dir, "blue", "order-1"))[0] == "ok"
        finally:
            shutil.rmtree(waiting_dir, ignore_errors=True)


async def test_an_operator_set_while_the_daemon_is_paused_lets_nobody_act(
    redis_server: RedisServer, orders: Path
) -> None:
    """A raw SET of the active key moves no epoch: until the daemon adopts it, neither the
    color it names nor the one before may act — however long the daemon takes."""
    async with running_daemon(
        redis_url=redis_server.url,
        blue=order_agent("1.0.0", orders),
        green=order_agent("2.0.0", orders),
    ) as d:
        await both_speaking(d)
        epoch = await wait_told(d, "blue", "active")
        assert (await ask(d, orders, "blue", "order-1"))[0] == "ok"
        await d.signal(signal.SIGSTOP)
        try:
            redis_server.cli("SET", "agent:active_version", "green")
            assert permit(redis_server, "blue", epoch, "order-2") == "not_active"
            assert permit(redis_server, "green", epoch, "order-3") == "not_active"
            assert redis_server.cli("EXISTS", "t:permit:order-2", "t:permit:order-3") == "0"
        finally:
            await d.signal(signal.SIGCONT)
        flip = await d.wait_log("flip", reason="external")
        assert (flip["active"], flip["epoch"]) == ("green", epoch + 1)
        assert await wait_told(d, "green", "active") == epoch + 1
        assert permit(redis_server, "green", epoch + 1, "order-3") == "ok"


async def test_the_epoch_never_goes_down_whatever_redis_is_told(
    redis_server: RedisServer, orders: Path
) -> None:
    """An operator's INCRBY, a FLUSHALL, a daemon killed with -9 and started again over an
    empty Redis: every epoch a child is told is higher than the one before."""
    async with running_daemon(
        redis_url=redis_server.url,
        blue=order_agent("1.0.0", orders),
        green=order_agent("2.0.0", orders),
        sections={"redis": {"reconcile_interval_s": 0.2}},
    ) as d:
        await both_speaking(d)
        await wait_told(d, "blue", "active")
        redis_server.cli("INCRBY", "t:epoch", "100")
        adopted = await d.wait_log("epoch_adopted")
        assert adopted["epoch"] > 100
        mark = len(d.logs)
        redis_server.cli("FLUSHALL")
        restored = await d.wait_log("flip", reason="restored", since=mark)
        assert restored["epoch"] > adopted["epoch"]
        await wait_told(d, "blue", "active", since=mark)
        highest = max(told_epochs(d, "blue") + told_epochs(d, "green"))

        # The daemon dies with -9 (its children with it) and Redis comes back empty.
        d.expected_exit = -signal.SIGKILL
        await d.signal(signal.SIGKILL)
        await d.wait()
        redis_server.cli("FLUSHALL")
        again = DaemonProcess(d.dir, d.config, d.env)
        await again.start()
        await both_speaking(again)
        now = await wait_told(again, "blue", "active")
        assert now > highest
        for told in (told_epochs(d, "blue"), told_epochs(again, "blue")):
            assert told == sorted(told), told
        assert int(redis_server.cli("GET", "t:epoch")) == now
        await again.stop()


@contextlib.contextmanager
def tiny_disk(size: str = "256k") -> Iterator[Path]:
    """A tmpfs of ``size`` of our own, to fill up (root only)."""
    directory = short_tempdir("as-disk-")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(directory)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        shutil.rmtree(directory, ignore_errors=True)
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=False)
        shutil.rmtree(directory, ignore_errors=True)


def fill(directory: Path) -> Path:
    filler = directory / "filler"
    with contextlib.suppress(OSError), filler.open("wb") as f:
        while True:
            f.write(b"\0" * 4096)
            f.flush()
    return filler


async def test_a_full_disk_fails_closed_and_the_daemon_recovers_by_itself(
    redis_server: RedisServer, orders: Path
) -> None:
    """Writes to state_dir fail with ENOSPC: the daemon stays up, says so, pushes no epoch it
    cannot reserve, grants no permit it cannot journal, refuses flips; all heals with the
    disk."""
    with tiny_disk() as disk:
        async with running_daemon(
            redis_url=redis_server.url,
            blue=order_agent("1.0.0", orders),
            green=order_agent("2.0.0", orders),
            sections={
                "supervisor": {"state_dir": str(disk / "state")},
                "redis": {"reconcile_interval_s": 0.2},
            },
        ) as d:
            await both_speaking(d)
            epoch = await wait_told(d, "blue", "active")
            assert (await ask(d, orders, "blue", "order-1"))[0] == "ok"
            filler = fill(disk)

            # A permit that cannot be journaled is refused (the key stays burnt, no money).
            # The journal's last page still has room for a few lines: ask until it is full.
            answers = [(await ask(d, orders, "blue", f"order-2-{i}"))[0] for i in range(64)]
            assert "unavailable" in answers, answers
            first_refused = answers.index("unavailable")
            assert set(answers[first_refused:]) == {"unavailable"}
            journal = (disk / "state" / "permits.journal").read_text()
            for i in range(first_refused):
                assert f'"order-2-{i}"' in journal  # every key granted was journaled
            # An epoch past the reservation is neither committed by a flip nor pushed.
            redis_server.cli("INCRBY", "t:epoch", "5000")
            await d.wait_log("state_write_failed")
            refused = await d.cli("switch", "green")
            assert refused.rc == 1
            assert "state_write_failed" in refused.err
            assert max(told_epochs(d, "blue")) == epoch  # still the old one: fails closed
            assert (await ask(d, orders, "blue", "order-3"))[0] == "stale_epoch"
            st = await d.status()
            assert st["active"] == "blue"
            assert st["state_write_error"]

            filler.unlink()  # the disk takes writes again
            adopted = await d.wait_log("epoch_adopted", timeout=20)
            assert adopted["epoch"] == epoch + 5000
            await wait_told(d, "blue", "active", since=len(d.logs) - 50)
            assert (await d.cli("switch", "green")).rc == 0
            await wait_told(d, "green", "active")
            assert (await ask(d, orders, "green", "order-4"))[0] == "ok"


async def test_a_flip_between_a_permit_and_its_execution_is_not_a_double_spend(
    redis_server: RedisServer, orders: Path
) -> None:
    """Blue is granted order-1, the operator switches to green, then blue reports executing
    order-1: one execution, under a permit of the epoch before. Only green executing the same
    key afterwards is a double spend (and it is caught)."""
    async with running_daemon(
        redis_url=redis_server.url,
        blue=order_agent("1.0.0", orders),
        green=order_agent("2.0.0", orders),
    ) as d:
        await both_speaking(d)
        await wait_told(d, "blue", "active")
        assert (await ask(d, orders, "blue", "order-1"))[0] == "ok"
        assert (await d.cli("switch", "green")).rc == 0
        await wait_told(d, "green", "active")
        await ask(d, orders, "blue", "order-1", verb="execute")
        await ask(d, orders, "green", "order-1", verb="execute")
        fired = await d.wait_log("trigger_fired", trigger="double_spend")
        assert fired["color"] == "green"
        assert [r["color"] for r in d.find("trigger_fired", trigger="double_spend")] == ["green"]


async def test_an_operator_set_after_a_quick_redis_restart_is_adopted_without_the_timer(
    redis_server: RedisServer, orders: Path
) -> None:
    """Redis restarts faster than the health check notices: the keyspace subscription must
    come back (with notifications switched on again in the new server), so an operator's SET
    is still adopted on its notification, not on the (here 60 s) timer."""
    async with running_daemon(
        redis_url=redis_server.url,
        blue=order_agent("1.0.0", orders),
        green=order_agent("2.0.0", orders),
        sections={"redis": {"reconcile_interval_s": 60.0, "health_interval_s": 5.0}},
    ) as d:
        await both_speaking(d)
        await wait_told(d, "blue", "active")
        mark = len(d.logs)
        redis_server.stop()
        redis_server.start()
        # The restarted Redis is empty: the daemon puts its truth back first.
        await d.wait_log("flip", reason="restored", since=mark, timeout=30)
        await wait_told(d, "blue", "active", since=mark)
        mark = len(d.logs)
        redis_server.cli("SET", "agent:active_version", "green")
        flip = await d.wait_log("flip", reason="external", since=mark, timeout=20)
        assert flip["active"] == "green"
        await wait_told(d, "green", "active", since=mark)


async def test_a_crash_then_redis_from_an_older_dump_never_lowers_a_told_epoch(
    redis_server: RedisServer, orders: Path
) -> None:
    """The chaos run's find: the children were told a high epoch (an operator's INCRBY), the
    daemon died before writing state.json, and Redis came back from a dump taken before the
    INCRBY. The next daemon must still tell a higher epoch than any told before (epoch.told,
    written before every push, survives the kill)."""
    async with running_daemon(
        redis_url=redis_server.url,
        blue=order_agent("1.0.0", orders),
        green=order_agent("2.0.0", orders),
        sections={"redis": {"reconcile_interval_s": 0.2}},
    ) as d:
        await both_speaking(d)
        await wait_told(d, "blue", "active")
        redis_server.cli("SAVE")
        redis_server.cli("INCRBY", "t:epoch", "5000")
        adopted = await d.wait_log("epoch_adopted")
        told = await d.wait_log(
            "child_output",
            color="blue",
            where=lambda r: r.get("line") == f"role active {adopted['epoch']}",
        )
        assert told
        d.expected_exit = -signal.SIGKILL
        await d.signal(signal.SIGKILL)
        await d.wait()
        (d.state_dir / "state.json").unlink(missing_ok=True)  # as if never written
        redis_server.stop(signal.SIGKILL)
        redis_server.start()  # from the dump: the epoch before the INCRBY
        again = DaemonProcess(d.dir, d.config, d.env)
        await again.start()
        await both_speaking(again)
        now = await wait_told(again, "blue", "active")
        assert now > adopted["epoch"]
        await again.stop()


async def test_a_daemon_that_takes_over_journals_the_keys_executed_before_it(
    redis_server: RedisServer, orders: Path
) -> None:
    """Also from the chaos run: a daemon on another state_dir takes the namespace over (its
    predecessor stopped, or stalled past its lease). What the predecessor executed is only in
    Redis and in the predecessor's journal; if Redis then comes back empty, the new holder
    must still refuse those keys. It journals them at start."""
    async with running_daemon(
        redis_url=redis_server.url,
        blue=order_agent("1.0.0", orders),
        green=order_agent("2.0.0", orders),
    ) as first:
        await both_speaking(first)
        await wait_told(first, "blue", "active")
        assert (await ask(first, orders, "blue", "order-1"))[0] == "ok"
    successor = short_tempdir("as-o-")
    try:
        async with running_daemon(
            redis_url=redis_server.url,
            blue=order_agent("1.0.0", successor),
            green=order_agent("2.0.0", successor),
            sections={"redis": {"reconcile_interval_s": 0.2}},
        ) as second:
            imported = await second.wait_log("grants_imported")
            assert imported["count"] >= 1
            await both_speaking(second)
            mark = len(second.logs)
            redis_server.stop(signal.SIGKILL)
            redis_server.start()  # empty
            await second.wait_log("flip", reason="restored", since=mark, timeout=30)
            await wait_told(second, "blue", "active", since=mark)
            assert (await ask(second, successor, "blue", "order-1"))[0] == "duplicate"
            assert (await ask(second, successor, "blue", "order-2"))[0] == "ok"
    finally:
        shutil.rmtree(successor, ignore_errors=True)
