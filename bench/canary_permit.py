"""What the canary's allocation check adds to a permit (target: under 0.05 ms).

A real redis-server on loopback TCP (no persistence) and the permit script called the way the
daemon calls it (one EVALSHA, fresh keys), four ways, interleaved call by call so that the
machine's noise falls on all of them alike:

- ``plain``: the permit as before canaries, the allocation hash not passed (eight KEYS);
- ``blue-green``: the allocation hash passed but not in force (what every permit pays now
  outside a canary: one HMGET more);
- ``canary, stable``: in force, the stable color with its amount (checked, then counted);
- ``canary, candidate``: in force, the candidate with its amount (its share checked against
  the step's stakes, then counted).

    .venv/bin/python bench/canary_permit.py [--permits N]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
from redis.asyncio import Redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from supervisor.arbiter.scripts import FLIP, GRANT_LOG_MAXLEN, PERMIT, Keys

KEYS = Keys("bench", "bench:active_version")
TARGET_MS = 0.05


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def redis_server(directory: Path) -> Iterator[int]:
    port = free_port()
    args = ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--dir", str(directory)]
    args += ["--save", "", "--appendonly", "no", "--daemonize", "no"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.02)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measure(port: int, n: int) -> dict[str, list[float]]:
    redis = Redis(host="127.0.0.1", port=port)
    permit = redis.register_script(PERMIT)
    flip = redis.register_script(FLIP)
    await redis.set(KEYS.active, "blue")
    await redis.set(KEYS.owner, "blue")
    await redis.set(KEYS.epoch, 1)
    alloc = {"mode": "canary", "candidate": "green", "allocation": "0.5", "allowance": "0.01"}
    flip_args = ["", "0", "f", "canary", "bench", "0", "", "100", "", "", "", ""]
    on = await flip(keys=KEYS.flip_keys(), args=[*flip_args, orjson.dumps(alloc).decode()])
    canary_epoch = int(on[1])
    times: dict[str, list[float]] = {
        "plain": [],
        "blue-green": [],
        "canary, stable": [],
        "canary, candidate": [],
    }

    async def call(what: str, color: str, epoch: int, key: str, amount: str | None) -> None:
        keys = KEYS.permit_keys(key, color)
        args = [color, str(epoch), "3600000", "t", "0", key, str(GRANT_LOG_MAXLEN)]
        if amount is not None:
            args.append(amount)
        t0 = time.perf_counter()
        answer = await permit(keys=keys, args=args)
        times[what].append(time.perf_counter() - t0)
        assert answer[0] == b"ok", (what, answer)

    # The blue-green cases need an epoch at which the hash is not in force: a second
    # namespace's keys would do, but the same Redis and keys are fairer. So: the canary at
    # `canary_epoch`, and the plain and blue-green permits asked of a blue-green namespace.
    bg = Keys("bg", "bg:active_version")
    await redis.set(bg.active, "blue")
    await redis.set(bg.owner, "blue")
    await redis.set(bg.epoch, 1)
    for i in range(-200, n):  # the first 200 rounds warm up, uncounted
        for what in times:
            if what in ("plain", "blue-green"):
                keys = bg.permit_keys(f"{what}-{i}", "blue")
                if what == "plain":
                    keys = keys[:8]
                args = ["blue", "1", "3600000", "t", "0", f"{what}-{i}", str(GRANT_LOG_MAXLEN)]
                t0 = time.perf_counter()
                answer = await permit(keys=keys, args=args)
                times[what].append(time.perf_counter() - t0)
                assert answer[0] == b"ok", (what, answer)
            elif what == "canary, stable":
                await call(what, "blue", canary_epoch, f"s-{i}", "1.0")
            else:
                await call(what, "green", canary_epoch, f"c-{i}", "1.0")
        if i == -1:
            for series in times.values():
                series.clear()
    await redis.aclose()
    return times


async def main() -> None:
    parser = argparse.ArgumentParser(description="The allocation check's cost on a permit")
    parser.add_argument("--permits", type=int, default=5000)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="as-cp-", dir="/tmp"))
    try:
        with redis_server(root) as port:
            times = await measure(port, args.permits)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    base50 = statistics.median(times["plain"]) * 1000
    base99 = pct(times["plain"], 0.99) * 1000
    print(f"the permit script, {args.permits} calls each, interleaved, in ms (loopback TCP)")
    print(f"{'permit':22} {'p50':>8} {'p99':>8} {'p50 added':>10} {'p99 added':>10}")
    worst = 0.0
    for what, series in times.items():
        p50, p99 = statistics.median(series) * 1000, pct(series, 0.99) * 1000
        if what != "plain":
            worst = max(worst, p50 - base50)
        print(f"{what:22} {p50:8.4f} {p99:8.4f} {p50 - base50:+10.4f} {p99 - base99:+10.4f}")
    verdict = "met" if worst < TARGET_MS else "NOT met"
    print(f"target: under {TARGET_MS} ms added at p50: {verdict} (worst {worst:+.4f} ms)")


if __name__ == "__main__":
    asyncio.run(main())
