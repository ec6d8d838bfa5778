"""``agentsup handoff``: the whole path against a real daemon, real children, a real Redis;
and every way it must stop before the flip, leaving the old color in charge, resumed."""

from __future__ import annotations

from pathlib import Path

import pytest

from supervisor import protocol
from tests.handoff.support import blue, both_speak, fields, green, opened, said, wait_said
from tests.harness import SEED_AGENT, agent, running_daemon
from tests.redis_server import RedisServer

pytestmark = pytest.mark.timeout(90)


async def test_a_handoff_moves_the_state_with_a_migration_then_flips(
    redis_server: RedisServer,
) -> None:
    async with running_daemon(redis_url=redis_server.url, blue=blue(), green=green()) as d:
        await both_speak(d)
        await opened(d, "blue", 3)
        r = await d.cli("handoff", "green", "--json")
        assert r.rc == 0, r.err
        result = r.json()
        assert (result["from"], result["to"], result["result"]) == ("blue", "green", "completed")
        assert [s["step"] for s in result["steps"]] == [
            "quiesce",
            "snapshot",
            "store",
            "restore",
            "flip",
        ]
        assert result["window_ms"] > 0
        snap = result["snapshot"]
        assert snap["schema"] == "book/1"  # blue's, migrated up by green itself

        # Green holds every position blue opened, in its own schema.
        given = [line.split()[1] for line in said(d, "blue", "opened ")]
        restored = fields(await wait_said(d, "green", "restored "))
        assert restored["schema"] == "book/2"
        assert restored["ids"].split(",") == given

        # The state is stored: Redis and state_dir, the digest over its canonical JSON.
        assert redis_server.cli("HGET", "t:snapshot:blue", "digest") == snap["digest"]
        copy = (d.state_dir / "snapshots" / "blue.snap").read_bytes()
        assert protocol.digest(copy.partition(b"\n")[2]) == snap["digest"]
        assert redis_server.cli("HGET", "t:handoff", "phase") == "completed"

        st = await d.status()
        assert (st["active"], st["candidate"], st["epoch"]) == ("green", "green", result["epoch"])
        assert st["children"]["blue"]["role"] == "standby"
        assert st["snapshots"]["blue"]["digest"] == snap["digest"]
        assert st["handoff"]["phase"] == "completed"
        assert not st["handoff"]["in_progress"]
        assert st["held"] == {}
        # Green acts on; blue, resumed, stands by.
        mark = len(d.logs)
        await opened(d, "green", 2, since=mark)
        assert said(d, "blue", "opened ", mark) == []
        flip = await d.wait_log("flip", reason="switch")
        assert flip["active"] == "green"
        assert "(handoff)" in flip["by"]

        # What the operator reads: each step with its time.
        text = await d.cli("status")
        assert "Snapshots (latest per color):" in text.out
        assert "last handoff blue -> green: completed" in text.out


async def test_a_dry_run_restores_and_verifies_but_flips_nothing(
    redis_server: RedisServer,
) -> None:
    async with running_daemon(redis_url=redis_server.url, blue=blue(), green=green()) as d:
        await both_speak(d)
        await opened(d, "blue", 2)
        r = await d.cli("handoff", "green", "--dry-run")
        assert r.rc == 0, r.err
        assert r.out.startswith("dry run: green restored blue's state and the digests match")
        for step in ("quiesce", "snapshot", "store", "restore"):
            assert f"  {step} " in r.out
        assert "  flip " not in r.out
        st = await d.status()
        assert (st["active"], st["candidate"]) == ("blue", None)
        assert st["handoff"]["phase"] == "dry_run"
        mark = len(d.logs)
        await opened(d, "blue", 2, since=mark)  # resumed


async def aborted(d_cli_result_err: str) -> str:
    assert d_cli_result_err.startswith("agentsup: refused (handoff_aborted): aborted at ")
    return d_cli_result_err


async def check_aborted_and_blue_acts(
    redis_server: RedisServer,
    green_env: dict[str, str],
    step: str,
    reason: str,
    sections: dict[str, dict[str, object]] | None = None,
) -> None:
    async with running_daemon(
        redis_url=redis_server.url,
        blue=blue(),
        green=green(**green_env),
        sections={"handoff": {"timeout_s": 1.5}, **(sections or {})},
    ) as d:
        await both_speak(d)
        await opened(d, "blue", 2)
        r = await d.cli("handoff", "green")
        assert r.rc == 1, r.out
        assert f"refused (handoff_aborted): aborted at {step} ({reason})" in r.err, r.err
        assert "blue resumed and still in charge" in r.err
        record = await d.wait_log("handoff_aborted", step=step, reason=reason)
        assert record["hint"].startswith("blue was resumed")
        st = await d.status()
        assert (st["active"], st["candidate"]) == ("blue", None)
        assert st["handoff"]["phase"] == "aborted"
        assert st["handoff"]["reason"].startswith(f"{step}: {reason}")
        assert st["held"] == {}
        assert redis_server.cli("HGET", "t:handoff", "phase") == "aborted"
        mark = len(d.logs)
        await opened(d, "blue", 2, since=mark)  # blue never stopped being in charge


async def test_a_stale_snapshot_is_refused(redis_server: RedisServer) -> None:
    # Blue hands over a state it read 400 s ago: older than max_age_s (300, the seed's).
    async with running_daemon(
        redis_url=redis_server.url, blue=blue(HA_TAKEN_AGO_S="400"), green=green()
    ) as d:
        await both_speak(d)
        await opened(d, "blue", 1)
        r = await d.cli("handoff", "green")
        assert r.rc == 1
        assert "aborted at snapshot (stale)" in r.err
        assert "too stale to restore safely" in r.err
        assert said(d, "green", "restored ") == []  # never sent to green
        assert (await d.status())["active"] == "blue"
        mark = len(d.logs)
        await opened(d, "blue", 1, since=mark)


async def test_a_digest_mismatch_aborts(redis_server: RedisServer) -> None:
    await check_aborted_and_blue_acts(
        redis_server, {"HA_CORRUPT": "1"}, "verify", "digest_mismatch"
    )


async def test_a_target_that_never_answers_times_out_and_aborts(
    redis_server: RedisServer,
) -> None:
    await check_aborted_and_blue_acts(
        redis_server, {"HA_RESTORE_DELAY_S": "3600"}, "restore", "timeout"
    )


async def test_a_restore_that_raises_aborts_at_once(redis_server: RedisServer) -> None:
    await check_aborted_and_blue_acts(
        redis_server, {"HA_RESTORE_RAISES": "1"}, "restore", "refused"
    )


async def test_a_source_that_does_not_quiesce_in_time_aborts(redis_server: RedisServer) -> None:
    async with running_daemon(
        redis_url=redis_server.url,
        blue=blue(HA_QUIESCE_DELAY_S="3600"),
        green=green(),
        sections={"handoff": {"timeout_s": 1.0}},
    ) as d:
        await both_speak(d)
        r = await d.cli("handoff", "green")
        assert r.rc == 1
        assert "aborted at quiesce (timeout): blue did not answer quiesce within 1 s" in r.err


async def test_an_agent_without_the_protocol_is_refused_with_a_clear_error(
    redis_server: RedisServer,
) -> None:
    async with running_daemon(
        redis_url=redis_server.url,
        blue=agent(SEED_AGENT, "1.0.0", start_seconds=0.2),
        green=green(),
    ) as d:
        await d.wait_status(lambda st: st["children"]["blue"]["state"] == "RUNNING")
        await d.wait_status(lambda st: st["children"]["green"]["protocol"])
        r = await d.cli("handoff", "green", timeout=10)
        assert r.rc == 1
        assert "refused (no_snapshot_capability): blue 1.0.0 does not speak the protocol" in r.err
        assert "no snapshot hook" in r.err
        st = await d.status()
        assert st["active"] == "blue"
        assert st["handoff"] is None
        snap = await d.cli("snapshot", "blue")
        assert snap.rc == 1
        assert "no_snapshot_capability" in snap.err


async def test_snapshot_on_demand_is_stored_and_shown(redis_server: RedisServer) -> None:
    async with running_daemon(redis_url=redis_server.url, blue=blue(), green=green()) as d:
        await both_speak(d)
        await opened(d, "blue", 1)
        r = await d.cli("snapshot", "--json")
        assert r.rc == 0, r.err
        snap = r.json()
        assert (snap["color"], snap["schema"], snap["version"]) == ("blue", "book/1", "1.0.0")
        assert redis_server.cli("HGET", "t:snapshot:blue", "digest") == snap["digest"]
        st = await d.status()
        assert st["snapshots"]["blue"]["bytes"] == snap["bytes"]
        assert st["snapshots"]["green"] is None
        # Green, standby, can be snapshotted by name: in its own schema.
        g = await d.cli("snapshot", "green", "--json")
        assert g.rc == 0
        assert g.json()["schema"] == "book/2"


async def test_a_state_larger_than_a_line_goes_in_chunks_both_ways(
    redis_server: RedisServer,
) -> None:
    pad = str(3 * protocol.MAX_LINE)  # ~3 MiB: six chunks up, six down
    async with running_daemon(
        redis_url=redis_server.url, blue=blue(HA_PAD_BYTES=pad), green=green(HA_PAD_BYTES=pad)
    ) as d:
        await both_speak(d)
        await opened(d, "blue", 1)
        r = await d.cli("handoff", "green", "--json")
        assert r.rc == 0, r.err
        snap = r.json()["snapshot"]
        assert snap["bytes"] > 3 * protocol.MAX_LINE
        restored = fields(await wait_said(d, "green", "restored "))
        assert restored["schema"] == "book/2"
        st = await d.status()
        assert st["active"] == "green"
        # Nothing refused as oversize on the way.
        assert not d.find("protocol_error")


async def test_a_state_over_max_bytes_is_refused_by_the_agent(
    redis_server: RedisServer,
) -> None:
    async with running_daemon(
        redis_url=redis_server.url,
        blue=blue(HA_PAD_BYTES=str(2 << 20)),
        green=green(),
        sections={"handoff": {"max_bytes": 1 << 20}},
    ) as d:
        await both_speak(d)
        r = await d.cli("handoff", "green")
        assert r.rc == 1
        assert "aborted at snapshot (refused)" in r.err
        assert "over 1048576" in r.err
        assert (await d.status())["active"] == "blue"


def test_the_state_dir_copy_is_the_meta_then_the_state(tmp_path: Path) -> None:
    # The format docs/handoff.md describes, read back by the store.
    from supervisor.config import Color
    from supervisor.handoff.snapshot import Snapshot

    data = protocol.canonical({"positions": [{"id": "a"}]})
    snap = Snapshot("s1", Color.BLUE, "1.0.0", "book/1", data, protocol.digest(data), 1.0, 2.0)
    back = Snapshot.from_meta(snap.meta(), data)
    assert back == snap
    with pytest.raises(ValueError, match="does not match its digest"):
        Snapshot.from_meta(snap.meta(), data + b" ")
