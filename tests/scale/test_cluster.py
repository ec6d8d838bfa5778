"""Redis Cluster: a deployment whose keys share one hash tag runs unchanged on three masters.

A real cluster started here (three ``redis-server --cluster-enabled yes`` joined by
``redis-cli --cluster create``). The arbiter, as the daemon builds it, is handed redis-py's
cluster client instead of a plain one: the lease, flip, permit, adopt, restore and release
scripts of supervisor/arbiter/scripts.py (and the flags' write script) each run against
namespace ``{bot1}`` with active key ``{bot1}:active_version``, every key in one slot. Ten
such deployments spread over the masters. A script given keys of two slots, or one that
touches a key it was not given, is refused by the cluster itself: what a test here catches,
rather than production.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ClusterCrossSlotError, ResponseError

from supervisor.arbiter import scripts
from supervisor.arbiter.arbiter import AdoptStatus, Arbiter, FlipStatus
from supervisor.arbiter.scripts import Keys
from supervisor.flags.book import _WRITE as FLAGS_WRITE
from supervisor.flags.keys import FlagKeys
from tests.scale.cluster import REDIS_CLI, Cluster, running_cluster
from tests.scale.sentinels import HOST, REDIS_SERVER

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        REDIS_SERVER is None or REDIS_CLI is None, reason="redis-server / redis-cli missing"
    ),
]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with running_cluster(tmp_path) as started:
        yield started


def every_key(keys: Keys) -> list[str]:
    """Every key a script of the deployment is handed."""
    return sorted(
        {
            *keys.flip_keys(),
            *keys.adopt_keys(),
            *keys.permit_keys("order-1", "blue"),
            *keys.permit_keys("order-1", "green"),
            keys.restoring,
        }
    )


async def run_deployment(client: RedisCluster, keys: Keys, state_dir: Path) -> int:
    """Every script of scripts.py, through the arbiter, as the daemon calls them; returns the
    epoch of the first flip."""
    state_dir.mkdir()  # noqa: ASYNC240 (a test's own directory, once)
    arbiter = Arbiter(client, keys, state_dir, permit_ttl_s=60)  # type: ignore[arg-type]
    arbiter.load_journal()
    assert await arbiter.take_lease(5.0, mode="now") is None  # LEASE
    flip = await arbiter.flip("blue", "start", "test")  # FLIP
    assert flip.status is FlipStatus.OK
    assert await arbiter.permit("blue", flip.epoch, "order-1", "t1") == "ok"  # PERMIT
    assert await arbiter.permit("blue", flip.epoch, "order-1", "t2") == "duplicate"
    assert await arbiter.permit("green", flip.epoch, "order-2", "t3") == "not_active"
    await client.set(keys.active, "green")  # an operator's SET ...
    adopted = await arbiter.adopt(flip.epoch, "blue")  # ... adopted: ADOPT
    assert adopted.status is AdoptStatus.ADOPTED
    assert adopted.epoch > flip.epoch
    await client.delete(keys.permit("order-1"))  # Redis forgot an executed key
    assert await arbiter.restore_grants() == 1  # put back: FINISH_RESTORE
    assert await client.exists(keys.permit("order-1"))
    await arbiter.release_lease()  # RELEASE
    lease = await client.get(keys.lease)
    assert isinstance(lease, bytes)
    assert lease.startswith(b"released:")
    arbiter.journal.close()
    arbiter.told.close()
    return flip.epoch


async def test_every_script_runs_on_a_cluster_under_one_hash_tag(
    cluster: Cluster, tmp_path: Path
) -> None:
    keys = Keys("{bot1}", "{bot1}:active_version")
    client = RedisCluster(host=HOST, port=cluster.ports[0])
    try:
        await run_deployment(client, keys, tmp_path / "state")
        # The flags' write script too, with a prefix under the same tag (docs/redis.md).
        flags = FlagKeys("{bot1}", "{bot1}flag:")
        old = await client.eval(
            FLAGS_WRITE,
            2,
            flags.global_("game"),
            flags.log,
            "set",
            "dice",
            "game",
            "",
            "uid:0",
            "test",
            "1.0",
            "100",
        )
        assert old in (None, b"")
        assert await client.get(flags.global_("game")) == b"dice"
    finally:
        await client.aclose()
    # All of it on the one master that serves the tag's slot, nothing anywhere else.
    home = cluster.owner(keys.active)
    assert {cluster.owner(k) for k in every_key(keys)} == {home}
    for port in cluster.ports:
        with cluster.node(port) as node:
            held = node.execute_command("DBSIZE")
        assert (held > 0) == (port == home), (port, held)


async def test_ten_deployments_spread_over_the_masters(cluster: Cluster, tmp_path: Path) -> None:
    client = RedisCluster(host=HOST, port=cluster.ports[0])
    homes = set()
    try:
        for n in range(10):
            keys = Keys(f"{{bot{n}}}", f"{{bot{n}}}:active_version")
            await run_deployment(client, keys, tmp_path / f"state-{n}")
            homes.add(cluster.owner(keys.active))
    finally:
        await client.aclose()
    assert len(homes) > 1, "ten hash tags all on one master"


async def test_a_key_outside_the_slot_is_an_error(cluster: Cluster) -> None:
    untagged = Keys("bot1", "bot1:active_version")  # no hash tag: the keys fall on many slots
    spread = {cluster.owner(k) for k in untagged.flip_keys()}
    assert len(spread) > 1
    flip_args = ["blue", "0", "id", "start", "test", "1.0", "", "100", "", "", "", "", ""]
    # Through the cluster client, as the daemon's arbiter would call it: an error, nothing
    # written anywhere ...
    client = RedisCluster(host=HOST, port=cluster.ports[0])
    try:
        with pytest.raises(ClusterCrossSlotError):
            await client.eval(scripts.FLIP, 8, *untagged.flip_keys(), *flip_args)
    finally:
        await client.aclose()
    for port in cluster.ports:
        with cluster.node(port) as node:
            assert node.execute_command("DBSIZE") == 0
    # ... and from a node asked directly: keys of two slots in one call,
    with (
        cluster.node(cluster.owner(untagged.active)) as node,
        pytest.raises(ClusterCrossSlotError, match="same slot"),
    ):
        node.eval(scripts.FLIP, 8, *untagged.flip_keys(), *flip_args)
    # or a script touching a key it was not handed, in another slot than those it was.
    tagged = Keys("{bot1}", "{bot1}:active_version")
    elsewhere = next(
        f"other-{i}"
        for i in range(1000)
        if cluster.owner(f"other-{i}") != cluster.owner(tagged.active)
    )
    with (
        cluster.node(cluster.owner(tagged.active)) as node,
        pytest.raises(ResponseError, match=r"non local key|another node|MOVED"),
    ):
        node.eval(f"return redis.call('GET', '{elsewhere}')", 1, tagged.active)
