"""An operator's ``SET``, sent from its own process as ``redis-cli`` sends it, for the benchmark.

    python bench/operator_set.py URL

It connects once, says ``ready``, then reads commands on stdin, one a line::

    KEY VALUE PAUSE_S

For each it sleeps PAUSE_S (the idle time between flips: production flips are rare, and waking
idle processes is most of what a flip costs on a quiet machine), takes CLOCK_MONOTONIC (shared
by every process on Linux) just before sending ``SET KEY VALUE``, and prints that time in
nanoseconds once Redis has answered, with the wall clock read beside it (to place the send
against the daemon's log). It exits at the end of stdin, or with the benchmark.
"""

from __future__ import annotations

import sys
import time

import redis


def main() -> int:
    client = redis.Redis.from_url(sys.argv[1])
    client.ping()  # the connection is open before the first timed SET
    print("ready", flush=True)
    for line in sys.stdin:
        key, value, pause = line.split()
        if float(pause) > 0:
            time.sleep(float(pause))
        sent, wall = time.monotonic_ns(), time.time_ns()
        client.set(key, value)
        print(sent, wall, flush=True)
    client.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
