"""The decision log's benchmark, side by side in one run.

    python bench/decision_log.py                 # about two minutes (a 1 GB log for the query)
    python bench/decision_log.py --quick         # a few seconds
    python bench/decision_log.py --log-mb 256    # the query's log size

What is measured (one process, uvloop, on this machine):

1. decision events per second through the whole pipeline (channel framing, orjson, checks,
   metrics, triggers: bench/bench.py's approach, a real unstarted daemon's channel and
   pipeline) with the decision log **off**, **on** (``fsync = "interval"``, every 100 ms, the
   default) and **on with** ``fsync = "always"``; the runs alternate, and each counts until
   every record is written (``flush``), so the writer's thread is in the figure. The event
   loop is given a turn after every 64 KiB read, as the channel's socket would.
2. ``decisions verify``: MB/s over the log just written (rotated and gzipped files included).
3. ``decisions query`` on a large log (one plain file of ``--log-mb``, written by the log
   itself, so a real chain): a selective query (one key) and a broad one (green's
   executions), with the Python engine and with DuckDB (when installed), beside ``grep -c``
   of the same key on the same file.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from supervisor import config, logs  # noqa: E402
from supervisor.children.channel import ChannelProtocol  # noqa: E402
from supervisor.config import Color  # noqa: E402
from supervisor.daemon import Daemon  # noqa: E402
from supervisor.decisions.query import Filter, duckdb_available, duckdb_query, python_query  # noqa: E402
from supervisor.decisions.verify import verify  # noqa: E402

PY = sys.executable


def daemon_config(directory: Path, log: dict[str, Any] | None) -> config.Config:
    agent = [PY, "-c", "pass"]  # never started: only its channel and pipeline are used
    return config.parse(
        {
            "supervisor": {
                "name": "bench",
                "namespace": "bench",
                "state_dir": str(directory / "s"),
                "control_socket": str(directory / "control.sock"),
            },
            "metrics": {"listen": ""},
            "agents": {
                "blue": {"command": agent, "version": "1"},
                "green": {"command": agent, "version": "2"},
            },
            "decision_log": log or {"enabled": False},
        }
    )


def decision_chunk() -> tuple[bytes, int]:
    line = (
        orjson.dumps(
            {
                "type": "decision",
                "id": "d-000000",
                "kind": "dice",
                "inputs": {"target": 49.5, "stake": 1.0},
                "output": {"bet": "under"},
                "latency_ms": 1.25,
            }
        )
        + b"\n"
    )
    per_chunk = 65536 // len(line)
    return line * per_chunk, per_chunk


@dataclass(frozen=True)
class Run:
    per_s: float  # events per second, wall clock, until every record is written
    loop_us: float  # CPU of the event loop's thread per event
    all_us: float  # CPU of every thread of the process per event (the writer's too)


async def throughput(directory: Path, log: dict[str, Any] | None, events: int) -> Run:
    """Decision events per second, through the pipeline and (with a log) onto the disk; and
    the CPU they took, which other work on a shared machine does not inflate."""
    daemon = Daemon(daemon_config(directory, log))
    deployment = daemon.deployment
    child = deployment.children[Color.BLUE]
    deployment.told[Color.BLUE] = ("active", 1)
    decisions = deployment.decisions
    writer = None
    if decisions.enabled:
        await decisions.open()
        writer = asyncio.create_task(decisions.run())
    proto = ChannelProtocol(
        lambda m: deployment.pipeline.handle(child, m), lambda k, d: None, lambda: None
    )
    chunk, per_chunk = decision_chunk()
    chunks = events // per_chunk
    gc.collect()
    started = time.perf_counter()
    loop_cpu, all_cpu = time.thread_time(), time.process_time()
    for _ in range(chunks):
        proto.data_received(chunk)
        await asyncio.sleep(0)  # the loop's turn, as between two reads of a socket
    if writer is not None:
        assert await decisions.flush(60.0), "the log did not take the records"
    elapsed = time.perf_counter() - started
    loop_cpu, all_cpu = time.thread_time() - loop_cpu, time.process_time() - all_cpu
    if writer is not None:
        writer.cancel()
        await asyncio.gather(writer, return_exceptions=True)
        await decisions.close()
    n = chunks * per_chunk
    return Run(n / elapsed, loop_cpu / n * 1e6, all_cpu / n * 1e6)


def run_throughput(directory: Path, events: int, rounds: int) -> dict[str, list[Run]]:
    import uvloop

    setups: dict[str, dict[str, Any] | None] = {
        "off": None,
        "on (fsync interval 100 ms)": {"fsync": "interval", "fsync_interval_ms": 100},
        "on (fsync always)": {"fsync": "always"},
    }
    results: dict[str, list[Run]] = {name: [] for name in setups}
    for r in range(rounds):
        for name, log in setups.items():
            d = directory / f"t{r}-{len(results[name])}-{name.split()[0]}"
            d.mkdir()
            if log is not None:
                log = {**log, "path": str(d / "decisions.jsonl")}
            results[name].append(uvloop.run(throughput(d, log, events)))
            shutil.rmtree(d, ignore_errors=True)
    return results


async def write_log(path: Path, megabytes: int, *, rotate_bytes: int) -> int:
    """A log of about ``megabytes`` written by DecisionLog itself: decisions, executions and
    outcomes of both colors, a flip every 100,000 events. Returns the records."""
    directory = path.parent
    cfg = daemon_config(
        directory, {"path": str(path), "rotate_bytes": rotate_bytes, "fsync": "never"}
    )
    deployment = Daemon(cfg).deployment
    decisions = deployment.decisions
    await decisions.open()
    writer = asyncio.create_task(decisions.run())
    children = deployment.children
    deployment.told[Color.BLUE] = ("active", 1)
    deployment.told[Color.GREEN] = ("standby", 1)
    target = megabytes << 20
    n = 0
    while decisions.written_seq == 0 or _size(path) + _rotated_size(path) < target:
        for _ in range(2000):
            n += 1
            color = Color.GREEN if n % 3 == 0 else Color.BLUE
            d = f"d-{n}"
            decisions.on_event(
                children[color],
                {
                    "type": "decision",
                    "id": d,
                    "kind": "dice" if n % 2 else "crash",
                    "inputs": {"round": n, "target": 49.5, "stake": 1.0},
                    "output": {"bet": "roll_under", "target": 49.5, "stake": 1.0},
                    "reasoning": "target below the edge",
                    "latency_ms": 1.5,
                },
            )
            decisions.on_event(
                children[color],
                {"type": "execution", "decision_id": d, "key": f"order-{n}", "amount": 1.0},
            )
            decisions.on_event(children[color], {"type": "outcome", "pnl": 0.98, "decision_id": d})
        await asyncio.sleep(0)
    await decisions.flush(60.0)
    writer.cancel()
    await asyncio.gather(writer, return_exceptions=True)
    await decisions.close()
    return decisions.written_seq


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _rotated_size(path: Path) -> int:
    total = 0
    for p in path.parent.glob(path.stem + ".0*"):
        with contextlib.suppress(FileNotFoundError):  # renamed by the gzip meanwhile
            total += p.stat().st_size
    return total


def timed(fn: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    out = fn()
    return time.perf_counter() - started, out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small numbers, for CI")
    ap.add_argument("--log-mb", type=int, help="size of the query's log (default 1024; 32 quick)")
    args = ap.parse_args()
    events, rounds = (100_000, 1) if args.quick else (500_000, 5)
    log_mb = args.log_mb or (32 if args.quick else 1024)
    logs.configure("warning", json=True, sink=open(os.devnull, "w"))  # noqa: SIM115
    print(
        f"decision log benchmark ({'quick' if args.quick else 'full'}), Python "
        f"{sys.version.split()[0]}, {os.cpu_count()} CPUs\n",
        flush=True,
    )
    directory = Path(tempfile.mkdtemp(prefix="asdl-", dir="/tmp"))
    try:
        print(f"pipeline: {events:,} decision events x {rounds} rounds, log off/on...", flush=True)
        load = os.getloadavg()
        tp = run_throughput(directory, events, rounds)
        print()
        print(
            f"{'pipeline (decision events)':<30} {'events/s':>9} {'best':>9} "
            f"{'loop CPU':>10} {'1 core':>9} {'all CPU':>9} {'1 core':>9}"
        )
        for name, runs in tp.items():
            per_s = [r.per_s for r in runs]
            loop_us = statistics.median(r.loop_us for r in runs)
            all_us = statistics.median(r.all_us for r in runs)
            print(
                f"{'log ' + name:<30} {statistics.median(per_s):>9,.0f} {max(per_s):>9,.0f} "
                f"{loop_us:>7.2f} us {1e6 / loop_us:>9,.0f} {all_us:>6.2f} us {1e6 / all_us:>9,.0f}"
            )
        print(
            "  events/s: wall clock, median and best; loop CPU: the event loop thread's CPU per"
            "\n  event, and the events/s it makes on one core of its own; all CPU: every thread's"
            "\n  (the writer's too), and the events/s on one core for all. Target >= 100,000."
        )
        print(
            f"  ({events:,} events per run, {rounds} run(s) of each, alternating; load average "
            f"{load[0]:.1f} before, {os.getloadavg()[0]:.1f} after, {os.cpu_count()} CPUs)\n",
            flush=True,
        )

        print("a log with rotation (gzip) for verify...", flush=True)
        rot = directory / "rot" / "decisions.jsonl"
        rot.parent.mkdir()
        asyncio.run(write_log(rot, 16 if args.quick else 128, rotate_bytes=16 << 20))
        vt, vr = timed(lambda: verify(rot))
        assert vr.ok, vr.problems

        print(f"a {log_mb} MB log for query and verify...", flush=True)
        big = directory / "big" / "decisions.jsonl"
        big.parent.mkdir()
        wrote_s, records = timed(lambda: asyncio.run(write_log(big, log_mb, rotate_bytes=1 << 40)))
        size = big.stat().st_size
        bt, br = timed(lambda: verify(big))
        assert br.ok, br.problems
        key = f"order-{records // 3 // 2}"
        queries = {
            f"one key ({key})": Filter(key=key),
            "green's executions": Filter(colors=("green",), kinds=("execution",)),
        }
        qrows = []
        for name, f in queries.items():
            pt, found = timed(lambda f=f: sum(1 for _ in python_query(big, f)))
            dt_ = None
            if duckdb_available():
                dt_, dfound = timed(lambda f=f: sum(1 for _ in duckdb_query(big, f)))
                assert dfound == found, (dfound, found)
            qrows.append((name, found, pt, dt_))
        needle = f'"key":"{key}"'
        gt, _ = timed(lambda: subprocess.run(["grep", "-c", needle, str(big)], capture_output=True))
        gt2, _ = timed(
            lambda: subprocess.run(
                [
                    "grep",
                    "-c",
                    '"color":"green".*"kind":"execution"\\|"kind":"execution".*"color":"green"',
                    str(big),
                ],
                capture_output=True,
            )
        )
    finally:
        shutil.rmtree(directory, ignore_errors=True)

    print(
        f"{'decisions verify, rotated + gzip':<34} {vr.mb_per_s:>10,.0f} MB/s  "
        f"({vr.records:,} records, {len(vr.files)} files, "
        f"{vr.bytes / 1e6:.0f} MB read in {vt:.1f} s)"
    )
    print(
        f"{'decisions verify, one plain file':<34} {br.mb_per_s:>10,.0f} MB/s  "
        f"({br.records:,} records, {size / 1e6:.0f} MB in {bt:.1f} s)\n"
    )
    print(
        f"query on one {size / 1e6:,.0f} MB file ({records:,} records, written in {wrote_s:.1f} s):"
    )
    print(f"{'':<34} {'found':>9} {'python':>9} {'duckdb':>9} {'grep -c':>9}")
    for (name, found, pt, dt_), g in zip(qrows, (gt, gt2), strict=True):
        shown = f"{dt_:.2f} s" if dt_ is not None else "absent"
        print(f"{name:<34} {found:>9,} {pt:>7.2f} s {shown:>9} {g:>7.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
