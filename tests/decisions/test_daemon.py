"""The decision log as the daemon writes it: real ``agentsup run``, real redis-server, real
child processes. What every decision record holds, the flips, the CLI (tail, query, verify
against the daemon's head, replay to the standby), a kill -9, a full disk, and the double-spend
trigger finding a forgotten key in the log."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import orjson

from supervisor.decisions import record
from supervisor.decisions.verify import verify
from tests.decisions.support import records
from tests.decisions.test_writer import fill, tiny_disk
from tests.harness import PY, DaemonProcess, agent, running_daemon
from tests.redis_server import RedisServer
from tests.test_fence import ask, both_speaking, order_agent

REPLAY_AGENT = [PY, str(Path(__file__).parent / "agents" / "replay_agent.py")]


def demo(version: str, **env: str) -> dict[str, Any]:
    return agent(None, version, env={"AGENTSUP_DEMO_ROUND_S": "0.01", **env})


def log_path(d: DaemonProcess) -> Path:
    return d.state_dir / "decisions.jsonl"


async def logged(d: DaemonProcess, kind: str, count: int, timeout: float = 30) -> None:
    """Wait until the daemon has written ``count`` records of ``kind`` (read from the file)."""
    async with asyncio.timeout(timeout):
        while True:
            path = log_path(d)
            if path.exists() and sum(1 for r in records(path) if r["kind"] == kind) >= count:
                return
            await asyncio.sleep(0.1)


async def test_the_daemon_records_decisions_flips_and_the_cli_reads_them(
    redis_server: RedisServer,
) -> None:
    async with running_daemon(
        redis_url=redis_server.url, blue=demo("1.0.0"), green=demo("2.0.0")
    ) as d:
        await both_speaking(d)
        await logged(d, "decision", 10)
        assert (await d.cli("switch", "green")).rc == 0
        await logged(d, "flip", 2)  # the start's and the switch's
        st = await d.status()
        assert st["decision_log"]["enabled"] is True
        assert st["decision_log"]["failing"] is None

        q = await d.cli("decisions", "query", "--kind", "decision", "--json")
        assert q.rc == 0, q.err
        decisions = [orjson.loads(line) for line in q.out.splitlines()]
        assert len(decisions) >= 10
        for r in decisions:
            assert all(name in r for name in record.SEED_FIELDS), r
            assert r["agent_version"] == {"blue": "1.0.0", "green": "2.0.0"}[r["color"]]
            assert r["inputs"]["game"] in ("dice", "crash")
            assert r["output"]["stake"] == 1.0
            assert isinstance(r["epoch"], int)
        flips = await d.cli("decisions", "query", "--kind", "flip", "--json")
        switch = [orjson.loads(x) for x in flips.out.splitlines()][-1]
        assert (switch["from"], switch["to"], switch["reason"]) == ("blue", "green", "switch")
        assert switch["by"].startswith("uid:")

        green = await d.cli(
            "decisions", "query", "--color", "green", "--kind", "execution", "--json"
        )
        assert green.rc == 0
        key = orjson.loads(green.out.splitlines()[0])["key"]
        one = await d.cli("decisions", "query", "--key", key, "--json")
        assert [orjson.loads(x)["key"] for x in one.out.splitlines()] == [key]
        table = await d.cli("decisions", "query", "--kind", "flip", "--epoch", f"{switch['epoch']}")
        assert "blue -> green (switch" in table.out
        assert table.out.splitlines()[0].startswith("time (UTC)")

        tail = await d.cli("decisions", "tail", "-n", "5", "--json")
        assert len(tail.out.splitlines()) == 5
        seqs = [orjson.loads(x)["seq"] for x in tail.out.splitlines()]
        assert seqs == sorted(seqs)

        v = await d.cli("decisions", "verify")
        assert v.rc == 0, v.out + v.err
        assert v.out.startswith("intact:")
        assert "checked against the head" in v.out
        await d.stop()
        assert records(log_path(d))[-1]["kind"] == "stop"
        assert verify(log_path(d)).ok


async def test_tail_follow_prints_new_records_as_they_come(redis_server: RedisServer) -> None:
    async with running_daemon(
        redis_url=redis_server.url, blue=demo("1.0.0"), green=demo("2.0.0")
    ) as d:
        await both_speaking(d)
        await logged(d, "decision", 1)
        proc = await asyncio.create_subprocess_exec(
            PY,
            "-m",
            "supervisor",
            "decisions",
            "tail",
            "-n",
            "0",
            "-f",
            "--json",
            "--socket",
            str(d.socket),
            stdout=asyncio.subprocess.PIPE,
            env=d.env,
        )
        try:
            assert proc.stdout is not None
            seen = []
            async with asyncio.timeout(20):
                while len(seen) < 20:
                    seen.append(orjson.loads(await proc.stdout.readline()))
            assert [r["seq"] for r in seen] == list(range(seen[0]["seq"], seen[0]["seq"] + 20))
        finally:
            proc.kill()
            await proc.wait()


async def test_a_kill_9_leaves_a_log_that_verifies_and_the_next_daemon_goes_on(
    redis_server: RedisServer,
) -> None:
    async with running_daemon(
        redis_url=redis_server.url,
        blue=agent(None, "1.0.0", env={"AGENTSUP_DEMO_ROUND_S": "0"}),
        green=demo("2.0.0"),
    ) as d:
        await both_speaking(d)
        await logged(d, "decision", 200)
        await d.signal(signal.SIGKILL)
        await d.wait()
        path = log_path(d)
        report = verify(path)
        assert report.ok, report.problems  # a torn last line, if any, is no tampering
        last = report.last_seq
        assert last is not None

        again = DaemonProcess(d.dir, d.config, d.env)
        await again.start()
        opened = await again.wait_log("decision_log_opened")
        assert opened["seq"] == last
        await both_speaking(again)
        await again.stop()
        report = verify(path)
        assert report.ok, report.problems
        starts = [r for r in records(path) if r["kind"] == "start"]
        assert len(starts) == 2
        assert starts[1]["seq"] == last + 1
        assert records(path)[-1]["kind"] == "stop"


async def test_replay_reports_a_planted_difference(redis_server: RedisServer) -> None:
    async with running_daemon(
        redis_url=redis_server.url,
        blue=demo("1.0.0"),
        green=agent(REPLAY_AGENT, "2.0.0", env={"REPLAY_PLANT": "4"}),
    ) as d:
        await both_speaking(d)
        await logged(d, "decision", 20)
        r = await d.cli("decisions", "replay", "--color", "green", "--json")
        assert r.rc == 0, r.err
        report = orjson.loads(r.out)
        assert report["decisions"] >= 20
        assert report["failed"] == 0
        assert report["different"] > 0
        assert report["same"] + report["different"] == report["decisions"]
        for diff in report["differences"]:
            assert diff["inputs"]["round"] % 4 == 0
            assert diff["decided"]["stake"] == 1.0
            assert diff["replayed"]["stake"] == 2.0
            assert diff["color"] == "blue"
        words = await d.cli("decisions", "replay", "--color", "green", "--check")
        assert words.rc == 1
        assert "different" in words.out
        refused = await d.cli("decisions", "replay", "--color", "blue")
        assert refused.rc == 1
        assert "is_active" in refused.err


async def test_replay_on_the_same_strategy_reports_no_difference(
    redis_server: RedisServer,
) -> None:
    async with running_daemon(
        redis_url=redis_server.url, blue=demo("1.0.0"), green=agent(REPLAY_AGENT, "2.0.0")
    ) as d:
        await both_speaking(d)
        await logged(d, "decision", 20)
        r = await d.cli("decisions", "replay", "--color", "green", "--since", "1h", "--json")
        assert r.rc == 0, r.err
        report = orjson.loads(r.out)
        assert report["decisions"] >= 20
        assert (report["different"], report["failed"]) == (0, 0)
        assert report["same"] == report["decisions"]


async def test_a_full_disk_is_survived_and_the_log_recovers_by_itself(
    redis_server: RedisServer,
) -> None:
    with tiny_disk("512k") as disk:
        path = disk / "decisions.jsonl"
        async with running_daemon(
            redis_url=redis_server.url,
            blue=agent(None, "1.0.0", env={"AGENTSUP_DEMO_ROUND_S": "0.002"}),
            green=demo("2.0.0"),
            sections={"decision_log": {"path": str(path), "max_buffer_bytes": 65536}},
        ) as d:
            await both_speaking(d)
            await logged_at(path, 20)
            filler = fill(disk)
            await d.wait_log("decision_log_write_failed", timeout=30)
            await d.wait_log("decision_log_behind", timeout=30)
            st = await d.status()
            assert st["decision_log"]["failing"]
            assert st["redis"] == "up"  # the daemon goes on: only the log is short of disk
            filler.unlink()
            await d.wait_log("decision_log_recovered", timeout=30)
            gap = await d.wait_log("decision_log_gap", timeout=30)
            assert gap["count"] > 0
            metrics = (await d.status())["decision_log"]
            assert metrics["gaps"] >= 1
            v = await d.cli("decisions", "verify")
            assert v.rc == 0, v.out
            assert "gap at seq" in v.out
        report = verify(path)
        assert report.ok, report.problems
        assert report.gaps


async def logged_at(path: Path, count: int, timeout: float = 30) -> None:
    def lines() -> int:
        return len(path.read_bytes().splitlines()) if path.exists() else 0

    async with asyncio.timeout(timeout):
        while lines() < count:
            await asyncio.sleep(0.1)


async def test_a_key_forgotten_by_memory_and_redis_is_found_in_the_log(
    redis_server: RedisServer, orders: Path
) -> None:
    """The seed's table: a double spend detected in the decision log. Memory keeps one key,
    the agent executes without permits (Redis holds none): order-1, order-2 (memory forgets
    order-1), order-1 again. Only the log remembers the first; the first execution's own
    lookup does not find itself."""
    async with running_daemon(
        redis_url=redis_server.url,
        blue=order_agent("1.0.0", orders),
        green=order_agent("2.0.0", orders),
        sections={"triggers.double_spend": {"memory_keys": 1}},
    ) as d:
        await both_speaking(d)
        await ask(d, orders, "blue", "order-1", verb="execute")
        await ask(d, orders, "blue", "order-2", verb="execute")
        assert not d.find("trigger_fired", trigger="double_spend")
        await ask(d, orders, "blue", "order-1", verb="execute")
        fired = await d.wait_log("trigger_fired", trigger="double_spend", timeout=20)
        assert "(in the decision log)" in fired["message"]
        assert "order-1" in fired["message"]
        assert len(d.find("trigger_fired", trigger="double_spend")) == 1
