"""Real daemons on a real three-master Redis Cluster, unchanged.

A deployment whose namespace, active key and flag prefix share one hash tag (``{bot1}``,
``{bot1}:active_version``, ``{bot1}flag:``) has every key in one slot, so the master that
serves that slot is a whole Redis for it: the daemon is given that master's address and runs
as it runs on any Redis (keyspace notifications, its ACL users and the scripts are all on that
node). Three deployments, one per master, each with its two children playing through permits:
each starts, switches, sets a flag; every key of each is on its own master and on no other,
and a daemon that touched a key outside its slot would get ``MOVED``, log it and fail the test
(tests/harness.py). What is not covered: following a slot that moves (resharding) or a
cluster failover; the daemon has no cluster client (docs/redis.md, Cluster).
"""

from __future__ import annotations

import contextlib
from typing import Any

from tests.harness import DaemonProcess, running_daemon
from tests.scale.cluster import HOST, Cluster
from tests.scale.test_cluster import cluster  # noqa: F401  (the fixture)

FLAGS = {"crash_target": {"type": "float", "default": 2.0, "min": 1.01}}


def one_tag_per_master(cluster: Cluster) -> dict[str, int]:  # noqa: F811
    """A hash tag served by each master: tag -> that master's port."""
    found: dict[int, str] = {}
    for n in range(1000):
        tag = f"bot{n}"
        found.setdefault(cluster.owner(f"{{{tag}}}:active_version"), tag)
        if len(found) == len(cluster.ports):
            return {tag: port for port, tag in found.items()}
    raise AssertionError("no tag for every master among bot0..bot999")


def sections(tag: str) -> dict[str, dict[str, Any]]:
    return {
        "supervisor": {"name": tag, "namespace": f"{{{tag}}}"},
        "redis": {"active_key": f"{{{tag}}}:active_version", "flags_prefix": f"{{{tag}}}flag:"},
        "flags": FLAGS,
    }


async def playing(d: DaemonProcess, color: str, rounds: int) -> None:
    await d.wait_status(lambda s: s["children"][color]["rounds"] >= rounds, timeout=30)


async def test_three_deployments_run_unchanged_each_on_the_master_of_its_slot(
    cluster: Cluster,  # noqa: F811
) -> None:
    tags = one_tag_per_master(cluster)
    async with contextlib.AsyncExitStack() as stack:
        daemons: dict[str, DaemonProcess] = {}
        for tag, port in tags.items():
            daemons[tag] = await stack.enter_async_context(
                running_daemon(redis_url=f"redis://{HOST}:{port}", sections=sections(tag))
            )
        for tag, d in daemons.items():
            await playing(d, "blue", 3)
            switched = await d.cli("switch", "green")
            assert switched.rc == 0, (tag, switched.err)
            flagged = await d.cli("flags", "set", "crash_target", "2.5", "--reason", "cluster")
            assert flagged.rc == 0, (tag, flagged.err)
        for tag, d in daemons.items():
            await playing(d, "green", 3)
            st = await d.status()
            assert (st["active"], st["redis"]) == ("green", "up"), tag
            assert st["flags"]["values"]["green"]["crash_target"] == 2.5
    for tag, port in tags.items():
        owner = cluster.node(port)
        try:
            assert int(owner.get(f"{{{tag}}}:epoch") or 0) >= 2
            assert owner.get(f"{{{tag}}}:active_version") == "green"
            assert owner.get(f"{{{tag}}}flag:crash_target") == "2.5"
            assert owner.xlen(f"{{{tag}}}:flips") >= 2
            assert owner.keys(f"{{{tag}}}:permit:*"), "no permit of its children was kept"
        finally:
            owner.close()
        for other in cluster.ports:
            if other == port:
                continue
            node = cluster.node(other)
            try:
                assert node.keys(f"*{tag}*") == [], (tag, other)
            finally:
                node.close()
