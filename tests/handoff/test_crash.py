"""A handoff under faults: the daemon killed with -9 at each step and started again (before
the flip the old color acts again, with the state it gave; after it the new one stays, with
the state it was given); Redis restarted empty in the middle loses no acknowledged snapshot."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import orjson
import pytest

from tests.handoff.support import blue, both_speak, fields, green, opened, said, wait_said
from tests.harness import DaemonProcess, running_daemon
from tests.redis_server import RedisServer

pytestmark = pytest.mark.timeout(120)


async def kill_and_restart(d: DaemonProcess) -> DaemonProcess:
    d.expected_exit = -signal.SIGKILL
    await d.signal(signal.SIGKILL)
    await d.wait()
    again = DaemonProcess(d.dir, d.config, d.env)
    await again.start()
    return again


def record(d: DaemonProcess) -> dict[str, Any]:
    return dict(orjson.loads((d.state_dir / "handoff.json").read_bytes()))


@pytest.mark.parametrize(
    ("stalls", "phase"),
    [
        ({"HA_QUIESCE_DELAY_S": "3600"}, "quiescing"),
        ({"HA_SNAPSHOT_DELAY_S": "3600"}, "snapshotting"),
    ],
)
async def test_killed_before_blue_gave_its_state_the_handoff_is_undone(
    redis_server: RedisServer, stalls: dict[str, str], phase: str
) -> None:
    async with running_daemon(redis_url=redis_server.url, blue=blue(**stalls), green=green()) as d:
        await both_speak(d)
        asking = asyncio.create_task(d.cli("handoff", "green"))
        await d.wait_log("handoff_started")
        await asyncio.sleep(0.3)  # into the step that stalls (the record says which)
        assert record(d)["phase"] == phase
        again = await kill_and_restart(d)
        undone = await again.wait_log("handoff_undone_after_restart")
        assert undone["phase"] == phase
        assert undone["active"] == "blue"
        await both_speak(again)
        st = await again.status()
        assert (st["active"], st["candidate"]) == ("blue", None)
        assert st["handoff"]["phase"] == "aborted"
        assert "before the flip: undone at start" in st["handoff"]["reason"]
        assert st["held"] == {}
        await opened(again, "blue", 2)  # acts again
        assert not again.find("restoring_after_restart")  # no snapshot had been given
        assert (await asyncio.wait_for(asking, 30)).rc == 69  # the daemon went away


async def test_killed_while_green_restores_blue_acts_again_with_the_state_it_gave(
    redis_server: RedisServer,
) -> None:
    async with running_daemon(
        redis_url=redis_server.url, blue=blue(), green=green(HA_RESTORE_DELAY_S="3600")
    ) as d:
        await both_speak(d)
        await opened(d, "blue", 3)
        asking = asyncio.create_task(d.cli("handoff", "green"))
        await d.wait_log("handoff_step", step="store")
        await asyncio.sleep(0.3)
        assert record(d)["phase"] == "restoring"
        given = [line.split()[1] for line in said(d, "blue", "opened ")]
        again = await kill_and_restart(d)
        await again.wait_log("handoff_undone_after_restart", phase="restoring")
        # Blue's new process gets the state its old one gave, before it may act.
        restored = fields(await wait_said(again, "blue", "restored "))
        assert restored["schema"] == "book/1"
        assert restored["ids"].split(",") == given
        await again.wait_log("state_restored_after_restart", color="blue")
        mark = len(again.logs)
        await opened(again, "blue", 1, since=mark)
        st = await again.status()
        assert (st["active"], st["held"]) == ("blue", {})
        await asyncio.wait_for(asking, 30)


async def test_killed_after_the_flip_green_stays_in_charge_with_the_state(
    redis_server: RedisServer,
) -> None:
    async with running_daemon(redis_url=redis_server.url, blue=blue(), green=green()) as d:
        await both_speak(d)
        await opened(d, "blue", 3)
        r = await d.cli("handoff", "green", "--json")
        assert r.rc == 0, r.err
        given = [line.split()[1] for line in said(d, "blue", "opened ")]
        mark = len(d.logs)
        await opened(d, "green", 2, since=mark)  # green acts: journaled
        again = await kill_and_restart(d)
        st = await again.status()
        assert (st["active"], st["candidate"]) == ("green", "green")
        await again.wait_log("state_restored_after_restart", color="green")
        restored = fields(await wait_said(again, "green", "restored "))
        # The handed state, and what green did since: replayed from the journal.
        assert restored["ids"].split(",")[: len(given)] == given
        replayed = await wait_said(again, "green", "replayed ")
        assert int(replayed.split()[1]) >= 2
        st = await again.status()
        assert st["held"] == {}
        mark = len(again.logs)
        await opened(again, "green", 1, since=mark)


async def test_redis_restarted_empty_during_a_handoff_loses_no_acknowledged_snapshot(
    redis_server: RedisServer,
) -> None:
    async with running_daemon(
        redis_url=redis_server.url,
        blue=blue(),
        green=green(HA_RESTORE_DELAY_S="1.5"),
        sections={"handoff": {"timeout_s": 20.0}},
    ) as d:
        await both_speak(d)
        await opened(d, "blue", 2)
        asking = asyncio.create_task(d.cli("handoff", "green", "--json"))
        stored = await d.wait_log("handoff_step", step="store")
        assert stored["ms"] > 0
        acknowledged = redis_server.cli("HGET", "t:snapshot:blue", "digest")
        assert len(acknowledged) == 64
        redis_server.stop()
        redis_server.start()  # empty: no persistence in the tests' Redis
        assert redis_server.cli("EXISTS", "t:snapshot:blue") == "0"
        result = await asyncio.wait_for(asking, 60)
        # Whether the flip made it (after the daemon put Redis right) or not, the snapshot
        # it acknowledged is back in Redis, from state_dir, with the same digest.
        await d.wait_log("snapshot_put_back", color="blue", timeout=20)
        assert redis_server.cli("HGET", "t:snapshot:blue", "digest") == acknowledged
        st = await d.status()
        assert st["snapshots"]["blue"]["digest"] == acknowledged
        if result.rc == 0:
            assert st["active"] == "green"
        else:
            assert st["active"] == "blue", result.err
