"""One round trip to Redis: redis-py's asyncio client beside the fast lane (supervisor/arbiter/
lane.py), after an idle pause (as a flip meets Redis: flips are rare) and back to back.

    python bench/lane_rtt.py            # 300 calls of each, 20 ms idle before each
    python bench/lane_rtt.py --quick    # 50 of each

A redis-server on a Unix socket in a temporary directory, set up as the embedded one; one
process, on uvloop as the daemon runs; the calls alternate so that the machine's noise falls
on each alike. ``GET`` is the least a call can be; ``adopt`` is the reconciler's script (its
'nothing changed' answer), the call an operator's SET waits on.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from redis.asyncio import Redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import process_flips as pf

from supervisor.arbiter import scripts
from supervisor.arbiter.lane import Lane

ACTIVE = "agent:active_version"
KEYS = scripts.Keys("bench", ACTIVE).adopt_keys()
ARGS = ["5", "0", "", "flip-id", "0.0", "1000", "blue", "1000000"]  # epoch 5, blue's: 'same'


async def measure(samples: int, pause_s: float) -> dict[str, dict[str, list[float]]]:
    directory = Path(tempfile.mkdtemp(prefix="asl-", dir="/tmp"))
    tasks: list[asyncio.Task[None]] = []
    redis_proc = None
    try:
        redis_proc, url = await pf._start_redis(directory, tasks)
        client = Redis.from_url(url)
        lane = Lane.for_client(client)
        assert lane is not None
        adopt = client.register_script(scripts.ADOPT)
        await client.mset({KEYS[0]: "blue", KEYS[1]: "5", KEYS[2]: "blue"})
        calls: dict[str, Callable[[], Awaitable[object]]] = {
            "GET, redis-py": lambda: client.get("x"),
            "GET, lane": lambda: lane.execute("GET", "x"),
            "adopt, redis-py": lambda: adopt(keys=KEYS, args=ARGS),
            "adopt, lane": lambda: lane.script(adopt, KEYS, ARGS),
        }
        out: dict[str, dict[str, list[float]]] = {}
        for variant, pause in (("idle", pause_s), ("busy", 0.0)):
            got = out.setdefault(variant, {name: [] for name in calls})
            for i in range(pf.WARMUP + samples):
                for name, call in calls.items():
                    if pause:
                        await asyncio.sleep(pause)
                    t0 = time.perf_counter()
                    await call()
                    if i >= pf.WARMUP:
                        got[name].append((time.perf_counter() - t0) * 1e6)
        lane.close()
        await client.aclose()
        return out
    finally:
        if redis_proc is not None:
            await pf._stop(redis_proc, pf.STOP_GRACE_S)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        shutil.rmtree(directory, ignore_errors=True)


def main() -> int:
    import uvloop

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="50 calls of each")
    ap.add_argument("--pause-ms", type=float, default=20.0, help="idle before each call")
    args = ap.parse_args()
    samples = 50 if args.quick else 300
    out = uvloop.run(measure(samples, args.pause_ms / 1000))
    print(f"{samples} of each (microseconds)     idle p50  idle p99   busy p50  busy p99")
    for name in out["idle"]:
        idle, busy = sorted(out["idle"][name]), sorted(out["busy"][name])
        print(
            f"{name:<28} {statistics.median(idle):>9.0f} {idle[int(len(idle) * 0.99)]:>9.0f}"
            f"  {statistics.median(busy):>9.0f} {busy[int(len(busy) * 0.99)]:>9.0f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
