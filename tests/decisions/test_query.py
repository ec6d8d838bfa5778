"""``decisions query`` and ``tail`` on files (no daemon): the filters, both engines giving the
same records, rotated files read or skipped, the table, and bad input refused with exit 2."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from supervisor.config import Color
from supervisor.decisions.files import rotated_files
from supervisor.decisions.query import (
    Filter,
    QueryError,
    duckdb_available,
    duckdb_query,
    last_records,
    parse_epochs,
    parse_time,
    python_query,
    query,
    render_table,
)
from tests.decisions.support import children, decision, new_log, write_log


async def mixed_log(path: Path) -> None:
    """Blue's rounds at epoch 3, then green's at epoch 4, each executing k-N."""
    log = new_log(path, rotate_bytes=8 << 10)
    await log.open()
    writer = asyncio.create_task(log.run())
    kids = children()
    told = log._told
    for n in range(1, 121):
        color = Color.BLUE if n <= 60 else Color.GREEN
        if n == 61:
            told[Color.GREEN] = ("active", 4)  # type: ignore[index]
        log.on_decision(kids[color], decision(n))
        execution = {"type": "execution", "decision_id": f"d-{n}", "key": f"k-{n}", "amount": 1}
        log.on_event(kids[color], execution)
        if n % 20 == 0:
            assert await log.flush(10.0)
    writer.cancel()
    await asyncio.gather(writer, return_exceptions=True)
    await log.close()


def run(path: Path, f: Filter) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in python_query(path, f)]


async def test_filters(log_dir: Path) -> None:
    path = log_dir / "decisions.jsonl"
    await mixed_log(path)
    assert len(rotated_files(path)) >= 2  # the query reads across them
    assert len(run(path, Filter(kinds=("decision",)))) == 120
    green = run(path, Filter(colors=("green",), kinds=("execution",)))
    assert [r["key"] for r in green] == [f"k-{n}" for n in range(61, 121)]
    assert {r["agent_version"] for r in run(path, Filter(versions=("2.0.0",)))} == {"2.0.0"}
    one = run(path, Filter(key="k-77"))
    assert [r["kind"] for r in one] == ["execution"]
    by_decision = run(path, Filter(key="d-77"))
    assert {r["kind"] for r in by_decision} == {"decision", "execution"}
    epoch4 = run(path, Filter(epochs=(4, 4), kinds=("decision",)))
    assert len(epoch4) == 60
    assert {r["color"] for r in epoch4} == {"green"}
    latest = run(path, Filter(kinds=("decision",), limit=5))
    assert [r["decision_id"] for r in latest] == [f"d-{n}" for n in range(116, 121)]
    everything = run(path, Filter())
    middle = everything[len(everything) // 2]["timestamp"]
    after = run(path, Filter(since=middle))
    assert after
    assert all(r["timestamp"] >= middle for r in after)
    before = run(path, Filter(until=middle))
    assert len(after) + len(before) >= len(everything)
    assert run(path, Filter(since=time.time() + 3600)) == []


@pytest.mark.skipif(not duckdb_available(), reason="DuckDB is the optional extra [query]")
async def test_duckdb_gives_the_same_records(log_dir: Path) -> None:
    path = log_dir / "decisions.jsonl"
    await mixed_log(path)
    for f in (
        Filter(kinds=("decision",)),
        Filter(colors=("green",), kinds=("execution",)),
        Filter(key="k-77"),
        Filter(epochs=(4, 4)),
        Filter(kinds=("decision",), limit=5),
    ):
        assert list(duckdb_query(path, f)) == list(python_query(path, f)), f
    engine, _ = query(path, Filter(), "duckdb")
    assert engine == "duckdb"


async def test_duckdb_asked_for_but_absent_is_said(log_dir: Path) -> None:
    if duckdb_available():
        pytest.skip("DuckDB is installed here")
    path = log_dir / "decisions.jsonl"
    await write_log(path, 1)
    with pytest.raises(QueryError, match="agent-supervisor\\[query\\]"):
        query(path, Filter(), "duckdb")


async def test_auto_uses_the_python_engine(log_dir: Path) -> None:
    path = log_dir / "decisions.jsonl"
    await write_log(path, 5)
    engine, lines = query(path, Filter(kinds=("decision",)))
    assert engine == "python"
    assert len(list(lines)) == 5


async def test_tail_reads_back_across_a_rotation(log_dir: Path) -> None:
    path = log_dir / "decisions.jsonl"
    await mixed_log(path)
    last = [orjson.loads(x) for x in last_records(path, 300)]
    assert [r["seq"] for r in last] == list(range(last[0]["seq"], last[-1]["seq"] + 1))
    assert len(last) == 1 + 120 * 2 + 1  # all there was: start, the rounds, stop


async def test_the_table(log_dir: Path) -> None:
    path = log_dir / "decisions.jsonl"
    await write_log(path, 2)
    table = render_table(last_records(path, 10))
    header, *rows = table.splitlines()
    assert header.split() == ["time", "(UTC)", "seq", "kind", "color", "version", "epoch", "what"]
    assert any("dice {" in row and "-> {" in row for row in rows)
    assert any("key=k-1 amount=1.0" in row for row in rows)
    assert any("pnl=+0.98" in row for row in rows)


def test_times_and_epochs() -> None:
    assert parse_time("0") == 0.0
    assert parse_time("2026-01-01") == parse_time("2026-01-01T00:00:00+00:00")
    assert parse_time("1d", now=100_000.0) == 100_000.0 - 86_400
    assert parse_time("now", now=5.0) == 5.0
    with pytest.raises(QueryError, match="not a time"):
        parse_time("yesterday")
    with pytest.raises(QueryError, match="empty"):
        parse_epochs("9..7")
    with pytest.raises(QueryError, match="not an epoch"):
        parse_epochs("x")


async def test_the_cli_reads_files_and_refuses_bad_input(log_dir: Path) -> None:
    path = log_dir / "decisions.jsonl"
    await write_log(path, 10)
    env = {**os.environ, "AGENTSUP_SOCKET": str(log_dir / "none.sock")}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "supervisor", "decisions", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )

    out = cli("query", "--path", str(path), "--kind", "outcome", "--json")
    assert out.returncode == 0, out.stderr
    assert len(out.stdout.splitlines()) == 10
    table = cli("query", "--path", str(path), "--kind", "decision", "--limit", "3")
    assert table.returncode == 0
    assert "3 record(s) (python)" in table.stderr
    assert cli("query", "--path", str(path), "--since", "yesterday").returncode == 2
    assert cli("query", "--path", str(path), "--epoch", "5..1").returncode == 2
    tail = cli("tail", "--path", str(path), "-n", "2", "--json")
    assert [orjson.loads(x)["kind"] for x in tail.stdout.splitlines()] == ["outcome", "stop"]
    # No path, no config, no daemon: said, exit 1.
    lost = cli("tail")
    assert lost.returncode == 1
    assert "cannot find the decision log" in lost.stderr
