"""After a handoff a rollback carries the state back: stable, fenced in again at once, takes no
action until it holds the candidate's positions (from the candidate, migrated down; else from
its latest snapshot and the supervisor's journal), bounded by ``rollback_timeout_s``."""

from __future__ import annotations

import os
import signal

import pytest

from tests.handoff.support import blue, both_speak, fields, green, opened, said, wait_said
from tests.harness import DaemonProcess, running_daemon
from tests.redis_server import RedisServer

pytestmark = pytest.mark.timeout(120)


async def handed_to_green(d: DaemonProcess) -> list[str]:
    """Blue opens positions, hands over, green opens more; every position id so far."""
    await both_speak(d)
    await opened(d, "blue", 2)
    r = await d.cli("handoff", "green")
    assert r.rc == 0, r.err
    mark = len(d.logs)
    await opened(d, "green", 3, since=mark)
    return [line.split()[1] for line in said(d, "blue", "opened ") + said(d, "green", "opened ")]


def first_index(d: DaemonProcess, event: str, since: int = 0, **fields: object) -> int:
    for i, r in enumerate(d.logs[since:], start=since):
        if r.get("event") == event and all(r.get(k) == v for k, v in fields.items()):
            return i
    raise AssertionError(f"no {event} {fields}")


async def test_a_rollback_after_a_handoff_gives_blue_greens_positions(
    redis_server: RedisServer,
) -> None:
    async with running_daemon(redis_url=redis_server.url, blue=blue(), green=green()) as d:
        before = await handed_to_green(d)
        mark = len(d.logs)
        r = await d.cli("rollback", "--reason", "PnL looks off")
        assert r.rc == 0, r.err
        back = await d.wait_log("state_carried_back", since=mark)
        assert back["how"] == "carried_back"
        restored = fields(await wait_said(d, "blue", "restored ", since=mark))
        assert restored["schema"] == "book/1"  # green migrated its state down for blue
        ids = restored["ids"].split(",")
        assert set(before) <= set(ids)  # every position green opened, and blue's own
        # Fenced at once, held until the state was in: blue opened nothing before it.
        flipped = first_index(d, "flip", mark, reason="manual: PnL looks off")
        loaded = first_index(d, "state_carried_back", mark)
        assert said(d, "blue", "opened ", flipped)[:1] == said(d, "blue", "opened ", loaded)[:1]
        await opened(d, "blue", 2, since=loaded)
        st = await d.status()
        assert (st["active"], st["candidate"], st["held"]) == ("blue", None, {})
        assert st["handoff"]["phase"] == "carried_back"
        assert st["children"]["green"]["role"] == "standby"


async def test_a_candidate_that_hangs_is_replaced_by_its_snapshot_and_the_journal(
    redis_server: RedisServer,
) -> None:
    async with running_daemon(
        redis_url=redis_server.url,
        blue=blue(),
        green=green(),
        sections={"handoff": {"rollback_timeout_s": 1.5, "timeout_s": 1.0}},
    ) as d:
        before = await handed_to_green(d)
        green_pid = d.child_pids()["green"]
        os.kill(green_pid, signal.SIGSTOP)  # a candidate that answers nothing
        try:
            gave = said(d, "green", "opened ")  # all it did, as the journal saw it
            mark = len(d.logs)
            r = await d.cli("rollback")
            assert r.rc == 0, r.err
            failed = await d.wait_log("carry_back_from_candidate_failed", since=mark)
            assert failed["reason"] == "timeout"
            back = await d.wait_log("state_carried_back", since=mark, timeout=20)
            assert back["how"] == "carry_back_fallback"
            replayed = await wait_said(d, "blue", "replayed ", since=mark)
            assert int(replayed.split()[1]) >= len(gave)
            # Its handoff snapshot plus green's executions: every position there was.
            assert int(fields(replayed)["positions"]) == len(before)
            # The alert says where the state came from.
            alert = await d.wait_log("alert", since=mark)
            assert "the journal" in alert["alert"]["message"]
            st = await d.status()
            assert (st["active"], st["held"]) == ("blue", {})
            await opened(d, "blue", 1, since=first_index(d, "state_carried_back", mark))
        finally:
            os.kill(green_pid, signal.SIGCONT)


async def test_a_confirmed_candidate_carries_nothing_back(redis_server: RedisServer) -> None:
    async with running_daemon(redis_url=redis_server.url, blue=blue(), green=green()) as d:
        await handed_to_green(d)
        assert (await d.cli("confirm")).rc == 0
        await d.wait_status(lambda st: st["handoff"]["phase"] == "confirmed")
        mark = len(d.logs)
        r = await d.cli("switch", "blue")  # blue is a candidate now: no handoff, no state
        assert r.rc == 0, r.err
        await opened(d, "blue", 1, since=mark)
        assert not d.find("state_carried_back")
