"""How long nobody can act when the Redis master dies under Redis Sentinel, over N failovers.

``.venv/bin/python bench/sentinel_failover.py [--failovers 5] [--down-after-ms 1000]
[--lease-ttl 10]``

Real processes on free 127.0.0.1 ports (tests/scale/sentinels.py): a master, a replica and
three ``redis-sentinel`` (quorum 2, ``down-after-milliseconds`` as given, failover-timeout
3 s); a real ``agentsup run`` whose Redis is the sentinels' master; its two children
(bench/chaos_agent.py) ask for permits all the time on one shared key sequence, and green
acts. Each round SIGKILLs the master, waits for the sentinels' ``+switch-master`` and for the
daemon to report Redis up on the new master, then for green's next grant; the killed server
comes back as a replica of the new master, and once the sentinels watch it the next round
starts. Times are CLOCK_MONOTONIC, taken by the agents themselves for the grants.

Per round: **nobody** (the last grant before the kill → the first grant after it), and its
parts: kill → ``+switch-master``, kill → daemon up on the new master, kill → first grant.
At the end the children's records of the whole run are judged (no key granted twice, no
epoch going down, one color per epoch).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.harness import DaemonProcess, running_daemon  # noqa: E402
from tests.scale.failover import (  # noqa: E402
    Window,
    daemon_settings,
    judge,
    on_master,
    read_evidence,
    switch,
    wait_granted,
    window,
)
from tests.scale.sentinels import (  # noqa: E402
    REDIS_SENTINEL,
    SentinelSet,
    sentinel_set,
    switch_listener,
)

VERBOSE = False


async def one_failover(group: SentinelSet, d: DaemonProcess, evidence: Path) -> Window:
    """Kill the master, wait for the new one and green's next grant, bring the old back."""
    old = group.master
    replica = next(n for n in group.nodes.values() if n is not old)
    await wait_granted(evidence, "green", time.monotonic_ns(), 30, count=5)
    async with switch_listener(group) as switched:
        since = len(d.logs)
        t_kill = time.monotonic_ns()
        old.process.kill()
        dead, new = await switched(60)
        t_switch = time.monotonic_ns()
    assert (dead, new) == (old.port, replica.port), (dead, new)
    t_daemon = await on_master(d, new, since, 60)
    await wait_granted(evidence, "green", t_kill, 60, count=1)
    result = window(read_evidence(evidence), t_kill, t_switch, t_daemon)
    if VERBOSE:
        for record in d.logs[since:]:
            print("   ", {k: v for k, v in record.items() if k not in ("logger", "level")})
    # Every sentinel names the new master before the old one comes back (the others learn of
    # the switch from the leader's hello messages, every 2 s), then it comes back as a replica.
    await asyncio.to_thread(group.wait_watching, new, 0, 60.0)
    group.restart_as_replica(old.port, of=new)
    await asyncio.to_thread(group.wait_watching, new, 1, 60.0)
    # Sentinel starts no failover of a master within 2 × failover-timeout of the last one
    # ("Next failover delay" in its log): the next round would measure that wait instead.
    rest = 2 * group.failover_timeout_ms / 1000 - (time.monotonic_ns() - t_switch) / 1e9
    await asyncio.sleep(max(0.0, rest) + 0.5)
    return result


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--failovers", type=int, default=5)
    parser.add_argument("--down-after-ms", type=int, default=1000)
    parser.add_argument("--lease-ttl", type=float, default=10.0, help="supervisor.lease_ttl_s")
    parser.add_argument("--permits", choices=["channel", "direct"], default="channel")
    parser.add_argument("--verbose", action="store_true", help="the daemon's log per round")
    args = parser.parse_args()
    global VERBOSE
    VERBOSE = args.verbose
    if REDIS_SENTINEL is None:
        print("redis-sentinel is not installed (Debian: apt-get install redis-sentinel)")
        return 2
    root = Path(tempfile.mkdtemp(prefix="as-sentinel-bench-"))
    evidence = root / "evidence"
    evidence.mkdir()
    windows: list[Window] = []
    try:
        with sentinel_set(root, down_after_ms=args.down_after_ms) as group:
            settings = daemon_settings(
                group, evidence, permits=args.permits, lease_ttl_s=args.lease_ttl
            )
            async with running_daemon(**settings, wait_ready=False) as d:
                await d.wait_log("ready", timeout=args.lease_ttl * 3 + 30)
                await switch(d, "green")
                for n in range(1, args.failovers + 1):
                    w = await one_failover(group, d, evidence)
                    windows.append(w)
                    print(
                        f"failover {n}: nobody could act {w.nobody:.2f} s "
                        f"(kill→+switch-master {w.kill_to_switch:.2f} s, kill→daemon up "
                        f"{w.kill_to_daemon:.2f} s, kill→first grant {w.kill_to_grant:.2f} s)",
                        flush=True,
                    )
            answers = read_evidence(evidence)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    verdict = judge(answers)
    nobody = [w.nobody for w in windows]
    print(
        f"\n{len(windows)} failovers, down-after-milliseconds {args.down_after_ms}, "
        f"lease_ttl_s {args.lease_ttl}, {args.permits} permits: nobody could act "
        f"p50 {statistics.median(nobody):.2f} s, max {max(nobody):.2f} s "
        f"(kill→+switch-master p50 {statistics.median(w.kill_to_switch for w in windows):.2f} s)"
    )
    print(
        f"{sum(1 for a in answers if a.event == 'permit' and a.reason == 'ok')} grants judged: "
        f"{len(verdict.violations)} violations"
    )
    for line in verdict.violations[:20]:
        print("  " + line)
    return 1 if verdict.violations else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
