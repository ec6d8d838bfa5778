"""Redis Sentinel: the master dies while both colors ask for permits (docs/redis.md, Sentinel).

Real processes, started here on free 127.0.0.1 ports: a master, a replica, three
``redis-sentinel`` (quorum 2, down after 1 s), a real ``agentsup run`` whose client follows
the sentinels' master, and its two children (bench/chaos_agent.py) asking for permits on one
shared key sequence all the time. The master gets SIGKILL; once the sentinels have promoted
the replica and the daemon reports Redis up on it, the children's own records must show no
key granted twice, no epoch going down, one color per epoch, and grants again, on the new
master, which must also hold the children's ACL users and the keyspace notification setting
again (neither is replicated). The second test makes the replica lag first (Jepsen's case:
Sentinel promotes a replica that misses acknowledged writes): the daemon must find the new
master behind its journal, put the executed keys back and raise the epoch.
"""

from __future__ import annotations

import itertools
import os
import signal
import time
from pathlib import Path

import pytest

from tests.harness import DaemonProcess, running_daemon
from tests.scale.failover import (
    KEYS,
    daemon_settings,
    grants,
    judge,
    on_master,
    read_evidence,
    switch,
    wait_for,
    wait_granted,
    window,
)
from tests.scale.sentinels import (
    REDIS_SENTINEL,
    SERVICE,
    Node,
    SentinelSet,
    sentinel_set,
    switch_listener,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        REDIS_SENTINEL is None,
        reason="redis-sentinel is not installed (Debian: apt-get install redis-sentinel)",
    ),
]


# What the daemon logs about a failover, shown by the operator's failover test.
FAILOVER_EVENTS = frozenset(
    {"redis_down", "redis_up", "redis_master_changed", "redis_regressed", "grants_restored"}
)


def wait_calls(node: Node) -> int:
    """How many WAIT commands the server has run (INFO commandstats)."""
    with node.client() as r:
        stats = r.info("commandstats")
    return int(stats.get("cmdstat_wait", {}).get("calls", 0))


def client_names(node: Node) -> set[str]:
    with node.client() as r:
        return {c["name"] for c in r.client_list() if c.get("name")}


def subscribers(node: Node) -> int:
    """Connections subscribed to something, but the sentinels' (their hello channel): the
    daemon's keyspace watcher, here."""
    with node.client() as r:
        return sum(
            1
            for c in r.client_list()
            if int(c["sub"]) + int(c["psub"]) > 0 and not c["name"].startswith("sentinel-")
        )


def users_back(node: Node) -> bool:
    return all(node.query("ACL", "GETUSER", f"agentsup-t-{c}") for c in ("blue", "green"))


def notifications_on(node: Node) -> bool:
    with node.client() as r:
        flags = r.config_get("notify-keyspace-events")["notify-keyspace-events"]
    return set("K$g") <= set(flags or "")


def environ(pid: int) -> dict[str, str]:
    """A child's environment as it was started (children are dumpable; same uid)."""
    with open(f"/proc/{pid}/environ", "rb") as f:
        items = f.read().decode().split("\0")
    return dict(item.split("=", 1) for item in items if "=" in item)


def the_replica(group: SentinelSet, master: Node) -> Node:
    return next(n for n in group.nodes.values() if n is not master)


async def green_in_charge(d: DaemonProcess, group: SentinelSet, evidence: Path) -> int:
    """Blue granted, then ``switch green`` (a flip that waits for the replica with WAIT before
    it counts), then green granted. Returns the flip's epoch."""
    master = group.master
    replica = the_replica(group, master)
    await d.wait_log("redis_up", master=master.address)
    await wait_granted(evidence, "blue", 0, 30, count=5)
    waits = wait_calls(master)
    flip = await switch(d, "green")
    assert wait_calls(master) > waits, "the flip did not WAIT for the replica"
    # (WAIT gives up after 100 ms: on a loaded machine the replica may take longer.)
    await wait_for(
        "the flip on the replica", lambda: replica.query("GET", KEYS.epoch) == str(flip["epoch"]), 5
    )
    await wait_granted(evidence, "green", time.monotonic_ns(), 30, count=5)
    return int(flip["epoch"])


@pytest.mark.timeout(180)
@pytest.mark.parametrize("permits", ["channel", "direct"])
async def test_master_killed_while_both_colors_ask(tmp_path: Path, permits: str) -> None:
    evidence = tmp_path / "evidence"
    evidence.mkdir()
    with sentinel_set(tmp_path) as group:
        old = group.master
        replica = the_replica(group, old)
        async with running_daemon(**daemon_settings(group, evidence, permits=permits)) as d:
            epoch = await green_in_charge(d, group, evidence)
            env = environ(d.child_pids()["blue"])
            assert env["AGENTSUP_REDIS_SENTINELS"] == ",".join(group.addresses)
            assert env["AGENTSUP_REDIS_SERVICE"] == SERVICE
            assert env["AGENTSUP_REDIS_URL"] == f"redis://{old.address}/0"  # for seed-style agents
            async with switch_listener(group) as switched:
                since = len(d.logs)
                t_kill = time.monotonic_ns()
                old.process.kill()  # SIGKILL while both colors ask
                assert await switched(30) == (old.port, replica.port)
                t_switch = time.monotonic_ns()
            t_daemon = await on_master(d, replica.port, since, 30)
            await wait_granted(evidence, "green", t_kill, 30, count=5)
            # Neither is replicated: the daemon puts them back on the promoted replica.
            await wait_for(
                "the children's users on the new master", lambda: users_back(replica), 15
            )
            await wait_for("notifications on the new master", lambda: notifications_on(replica), 15)
            await wait_for(
                "the daemon's watcher on the new master", lambda: subscribers(replica), 15
            )
            back = await switch(d, "blue")  # a flip on the new master
            assert back["epoch"] > epoch
            await wait_granted(evidence, "blue", time.monotonic_ns(), 30, count=5)
            if permits == "direct":  # the SDK itself follows the master
                assert {"agentsup-blue", "agentsup-green"} <= client_names(replica)
            assert (await d.status())["redis"] == "up"
            answers = read_evidence(evidence)
            missing = [
                a.key for a in grants(answers) if not replica.query("EXISTS", KEYS.permit(a.key))
            ]
    verdict = judge(answers)
    assert not verdict.violations, "\n".join(verdict.violations[:20])
    assert not missing, f"granted keys the new master does not know: {missing[:20]}"
    w = window(answers, t_kill, t_switch, t_daemon)
    print(
        f"\nsentinel failover ({permits} permits): nobody could act for {w.nobody:.2f} s "
        f"(kill→+switch-master {w.kill_to_switch:.2f} s, kill→daemon on the new master "
        f"{w.kill_to_daemon:.2f} s, kill→first grant {w.kill_to_grant:.2f} s); "
        f"{len(grants(answers))} grants checked"
    )


@pytest.mark.timeout(180)
async def test_failover_to_a_lagging_replica_puts_executed_keys_back(tmp_path: Path) -> None:
    evidence = tmp_path / "evidence"
    evidence.mkdir()
    with sentinel_set(tmp_path) as group:
        old = group.master
        replica = the_replica(group, old)
        async with running_daemon(**daemon_settings(group, evidence)) as d:
            epoch = await green_in_charge(d, group, evidence)
            # Cut the replica off: stopped, so that it cannot reconnect, and its link closed
            # by the master, so that nothing more reaches it. Grants go on, on the master only.
            assert replica.process.proc is not None
            replica_pid = replica.process.proc.pid
            os.kill(replica_pid, signal.SIGSTOP)
            old.query("CLIENT", "KILL", "TYPE", "replica")
            t_cut = time.monotonic_ns()
            lost = await wait_granted(evidence, "green", t_cut, 30, count=10)
            async with switch_listener(group) as switched:
                since = len(d.logs)
                t_kill = time.monotonic_ns()
                old.process.kill()
                os.kill(replica_pid, signal.SIGCONT)  # it holds nothing of the last grants
                assert await switched(30) == (old.port, replica.port)
                t_switch = time.monotonic_ns()
            t_daemon = await on_master(d, replica.port, since, 30)
            regressed = await d.wait_log("redis_regressed", since=since, timeout=30)
            assert regressed["redis_seq"] < regressed["known_seq"]
            restored = await d.wait_log("grants_restored", since=since, timeout=30)
            assert restored["count"] >= len(lost)
            flip = await d.wait_log("flip", since=since, reason="restored", timeout=30)
            assert flip["epoch"] > epoch
            await wait_granted(evidence, "green", t_kill, 30, count=5)
            answers = read_evidence(evidence)
            missing = [
                a.key for a in grants(answers) if not replica.query("EXISTS", KEYS.permit(a.key))
            ]
    verdict = judge(answers)
    assert not verdict.violations, "\n".join(verdict.violations[:20])
    assert not missing, f"granted keys the new master does not know: {missing[:20]}"
    w = window(answers, t_kill, t_switch, t_daemon)
    print(
        f"\nsentinel failover to a lagging replica: {len(lost)}+ grants lost by it and put "
        f"back ({restored['count']} keys), epoch {epoch} → {flip['epoch']}; nobody could act "
        f"for {w.nobody:.2f} s (kill→first grant {w.kill_to_grant:.2f} s)"
    )


@pytest.mark.timeout(180)
async def test_an_operators_failover_with_the_old_master_alive(tmp_path: Path) -> None:
    """``SENTINEL FAILOVER``: the replica is promoted while the old master still runs, and takes
    writes until the sentinels demote it; the daemon must leave it (its writes are refused as
    READONLY, its PINGs still answered) and set the new master right."""
    evidence = tmp_path / "evidence"
    evidence.mkdir()
    with sentinel_set(tmp_path) as group:
        old = group.master
        replica = the_replica(group, old)
        async with running_daemon(**daemon_settings(group, evidence)) as d:
            epoch = await green_in_charge(d, group, evidence)
            async with switch_listener(group) as switched:
                t_asked = time.monotonic_ns()
                group.ask(group.sentinel_ports[0], "SENTINEL", "FAILOVER", SERVICE)
                assert await switched(30) == (old.port, replica.port)
            await wait_for("the old master demoted", lambda: old.query("ROLE")[0] == "slave", 30)
            # The daemon may never see Redis go (the old master answers PING throughout): it
            # must notice the new master all the same, and set it up as after a reconnect.
            await wait_for("notifications on the new master", lambda: notifications_on(replica), 15)
            await wait_for(
                "the daemon's watcher on the new master", lambda: subscribers(replica), 15
            )
            await wait_for("the watcher off the old master", lambda: not subscribers(old), 15)
            await wait_granted(evidence, "green", time.monotonic_ns(), 30, count=5)
            back = await switch(d, "blue")  # a flip on the new master
            assert back["epoch"] > epoch
            await wait_granted(evidence, "blue", time.monotonic_ns(), 30, count=5)
            await wait_for(
                "the children's users on the new master", lambda: users_back(replica), 15
            )
            answers = read_evidence(evidence)
            missing = [
                a.key for a in grants(answers) if not replica.query("EXISTS", KEYS.permit(a.key))
            ]
            seen = [r["event"] for r in d.logs if r["event"] in FAILOVER_EVENTS]
    verdict = judge(answers)
    assert not verdict.violations, "\n".join(verdict.violations[:20])
    assert not missing, f"granted keys the new master does not know: {missing[:20]}"
    print(f"\noperator's failover, the daemon logged: {seen}")
    ok = grants(answers)
    gap = max((b.t - a.t for a, b in itertools.pairwise(ok) if b.t_ask > t_asked), default=0)
    print(f"\noperator's failover: at most {gap / 1e9:.2f} s between two grants")
