"""The arbiter between the scripts and the daemon, against a real redis-server: the epoch
reservation it raises before a flip or an adoption commits, the lease it checks, the epoch it
remembers when Redis forgets, the replica it waits for, and whose lease may be taken over."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from redis import Redis as SyncRedis
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from supervisor.arbiter.arbiter import (
    RESTORE_ATTEMPTS,
    AdoptStatus,
    Arbiter,
    Claiming,
    FlipStatus,
    Holder,
)
from supervisor.arbiter.durable import (
    RESERVE_BLOCK,
    DurableWriteError,
    EpochReservation,
    Grant,
    PermitJournal,
)
from supervisor.arbiter.scripts import PERMIT, Keys
from supervisor.children.process import start_time_of
from supervisor.errors import LeaseLost, RedisUnavailable
from tests.redis_server import REDIS_BINARY, RedisServer, short_tempdir

KEYS = Keys("t", "t:active_version")


@pytest.fixture
def state_dir() -> Iterator[Path]:
    directory = short_tempdir("as-a-")
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


async def arbiter_on(url: str, state_dir: Path) -> Arbiter:
    arbiter = Arbiter(Redis.from_url(url), KEYS, state_dir, permit_ttl_s=60)
    arbiter.load_journal()
    return arbiter


@pytest.fixture
async def arbiter(redis_server: RedisServer, state_dir: Path) -> AsyncIterator[Arbiter]:
    arbiter = await arbiter_on(redis_server.url, state_dir)
    yield arbiter
    arbiter.journal.close()
    await arbiter.redis.aclose()


async def test_a_flip_past_the_reservation_raises_it_on_disk_first(
    arbiter: Arbiter, state_dir: Path
) -> None:
    assert arbiter.reservation.ceiling == 0  # nothing reserved yet: the first flip must
    flip = await arbiter.flip("blue", "start", "test")
    assert (flip.status, flip.epoch, flip.to) == (FlipStatus.OK, 1, "blue")
    assert EpochReservation(state_dir / "epoch").ceiling == 1 + RESERVE_BLOCK
    assert (await arbiter.flip("green", "switch", "test")).epoch == 2  # covered: no write


async def test_a_flip_that_cannot_be_reserved_is_refused_and_reported(
    arbiter: Arbiter, state_dir: Path
) -> None:
    failures: list[str] = []
    arbiter.on_write_failure = lambda what, exc: failures.append(what)
    (state_dir / "epoch.tmp").mkdir()  # the reservation cannot be written
    with pytest.raises(DurableWriteError):
        await arbiter.flip("green", "switch", "test")
    assert failures == ["epoch"]
    assert await arbiter.redis.get(KEYS.active) is None  # nothing committed
    assert await arbiter.redis.get(KEYS.epoch) is None
    (state_dir / "epoch.tmp").rmdir()
    assert (await arbiter.flip("green", "switch", "test")).epoch == 1


async def test_the_told_mark_rises_before_a_push_and_floors_the_next_arbiter(
    arbiter: Arbiter, redis_server: RedisServer, state_dir: Path
) -> None:
    failures: list[str] = []
    arbiter.on_write_failure = lambda what, exc: failures.append(what)
    arbiter.telling(40)
    arbiter.telling(12)
    arbiter.told.close()
    again = await arbiter_on(redis_server.url, state_dir)
    try:
        assert (again.told.value, again.seen) == (40, 40)
        assert (await again.flip("blue", "start", "test")).epoch == 41
    finally:
        again.told.close()
        again.journal.close()
        await again.redis.aclose()
    assert failures == []
    broken = await arbiter_on(redis_server.url, state_dir)
    broken.on_write_failure = lambda what, exc: failures.append(what)
    broken.told.path = state_dir / "missing" / "epoch.told"  # cannot be written
    try:
        broken.telling(50)  # said, not raised: the push goes on, the reservation bounds it
        assert failures == ["epoch"]
    finally:
        broken.journal.close()
        await broken.redis.aclose()


async def test_an_adoption_past_the_reservation_raises_it_on_disk_first(
    redis_server: RedisServer, state_dir: Path
) -> None:
    (state_dir / "epoch").write_text("5\n")  # reserved up to the epoch Redis holds
    redis_server.cli("SET", KEYS.active, "green")  # an operator's SET
    redis_server.cli("SET", KEYS.epoch, "5")
    redis_server.cli("SET", KEYS.owner, "blue")
    arbiter = await arbiter_on(redis_server.url, state_dir)
    arbiter.seen = 5
    try:
        observed = await arbiter.adopt(5, "blue")
        assert (observed.status, observed.epoch, observed.owner) == (AdoptStatus.ADOPTED, 6, "blue")
        assert EpochReservation(state_dir / "epoch").ceiling == 6 + RESERVE_BLOCK
        assert arbiter.seen == 6
        assert redis_server.cli("GET", KEYS.owner) == "green"
    finally:
        arbiter.journal.close()
        await arbiter.redis.aclose()


async def test_after_redis_forgot_a_flip_goes_on_above_what_it_has_seen(
    arbiter: Arbiter, redis_server: RedisServer
) -> None:
    """Redis flushed: the next epoch continues above the last one this process saw, and
    above a floor it is given (the reservation, when Redis went back in time)."""
    await arbiter.flip("blue", "start", "test")
    await arbiter.flip("green", "switch", "test")
    assert arbiter.seen == 2
    redis_server.cli("FLUSHALL")
    assert (await arbiter.flip(None, "restored", "test")).epoch == 3
    assert (await arbiter.flip(None, "restored", "test", floor=100)).epoch == 101
    assert (await arbiter.flip(None, "bump", "test", floor=7)).epoch == 102
    assert arbiter.seen == 102


async def test_flips_check_the_lease_once_it_is_taken(
    arbiter: Arbiter, redis_server: RedisServer
) -> None:
    assert (await arbiter.flip("blue", "start", "test")).status is FlipStatus.OK  # no lease yet
    assert await arbiter.take_lease(10.0) is None
    assert arbiter.holds_lease
    # Redis lost the lease (restarted, flushed): nobody holds it; taken again, the flip goes on.
    redis_server.cli("DEL", KEYS.lease)
    assert (await arbiter.flip("green", "switch", "test")).epoch == 2
    assert redis_server.cli("GET", KEYS.lease) == arbiter.lease_value
    # Redis restored from a dump taken before we took over from a daemon of this host that is
    # gone (killed with -9): its lease is taken over again and the flip goes on.
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    dead = {"id": "y", "host": socket.gethostname(), "pid": int(gone.stdout), "since": 0.0}
    redis_server.cli("SET", KEYS.lease, orjson.dumps(dead).decode())
    assert (await arbiter.flip("blue", "switch", "test")).epoch == 3
    assert redis_server.cli("GET", KEYS.lease) == arbiter.lease_value
    # Another daemon holds it: refused, and this one knows it no longer holds it.
    other = {"id": "x", "host": "elsewhere", "pid": 4711, "start": None, "since": 0.0}
    redis_server.cli("SET", KEYS.lease, orjson.dumps(other).decode())
    with pytest.raises(LeaseLost, match="host elsewhere, pid 4711"):
        await arbiter.flip("green", "switch", "test")
    assert not arbiter.holds_lease
    assert redis_server.cli("GET", KEYS.active) == "blue"
    # The same for an adoption.
    redis_server.cli("SET", KEYS.lease, arbiter.lease_value)
    assert await arbiter.take_lease(10.0) is None
    redis_server.cli("SET", KEYS.lease, orjson.dumps(other).decode())
    redis_server.cli("SET", KEYS.active, "green")  # an operator's SET, not to be adopted
    with pytest.raises(LeaseLost, match="host elsewhere, pid 4711"):
        await arbiter.adopt(3, "blue")
    assert redis_server.cli("GET", KEYS.owner) == "blue"


async def test_one_arbiter_holds_the_lease_and_hands_it_over(
    arbiter: Arbiter, redis_server: RedisServer, state_dir: Path
) -> None:
    other = await arbiter_on(redis_server.url, state_dir / "other")
    try:
        assert await arbiter.take_lease(10.0) is None
        held = await other.take_lease(10.0)
        assert held is not None
        assert (held.pid, held.raw) == (os.getpid(), arbiter.lease_value)
        assert not other.holds_lease
        # A flip found the lease free, and while it took it again someone else did.
        redis_server.cli("SET", KEYS.lease, other.lease_value)
        with pytest.raises(LeaseLost):
            await arbiter._lease_gone("")
        assert not arbiter.holds_lease
        await arbiter.release_lease()  # not ours: left alone
        assert redis_server.cli("GET", KEYS.lease) == other.lease_value
        assert await other.take_lease(3.0) is None
        await other.release_lease()
        assert not other.holds_lease
        # A clean release leaves a marker for a TTL: a start takes the lease at once.
        assert redis_server.cli("GET", KEYS.lease) == "released:" + other.lease_value
        assert 2000 < int(redis_server.cli("PTTL", KEYS.lease)) <= 3000
        assert await arbiter.take_lease(10.0, mode="claim") is None  # handed over
    finally:
        other.journal.close()
        await other.redis.aclose()


async def test_a_missing_lease_is_claimed_and_a_live_holder_keeps_it(
    arbiter: Arbiter, redis_server: RedisServer, state_dir: Path
) -> None:
    """Redis lost the lease (restarted empty, flushed) while its holder lives: a daemon that
    starts then must not take it before the holder has had a TTL to renew it."""
    starter = await arbiter_on(redis_server.url, state_dir / "starter")
    try:
        assert await arbiter.take_lease(10.0) is None
        redis_server.cli("FLUSHALL")
        claim = await starter.take_lease(10.0, mode="claim")
        assert isinstance(claim, Claiming)
        assert 9.0 < claim.wait_s <= 10.0
        assert redis_server.cli("GET", KEYS.lease).startswith("claim:")
        assert not starter.holds_lease
        # Another start meanwhile sees a daemon claiming it, and does not claim it too.
        third = await arbiter_on(redis_server.url, state_dir / "third")
        seen = await third.take_lease(10.0, mode="claim")
        third.journal.close()
        await third.redis.aclose()
        assert isinstance(seen, Holder)
        assert seen.claiming
        assert "claiming it since" in seen.describe()
        assert f"pid {os.getpid()}" in seen.describe()
        # The holder renews over the claim and keeps the namespace; the claimant sees it held.
        assert await arbiter.take_lease(10.0) is None
        held = await starter.take_lease(10.0, mode="claim")
        assert isinstance(held, Holder)
        assert held.raw == arbiter.lease_value
        assert not held.claiming
    finally:
        starter.journal.close()
        await starter.redis.aclose()


async def test_a_lease_holding_something_unreadable_is_held_by_someone(
    arbiter: Arbiter, redis_server: RedisServer
) -> None:
    """Not JSON, not a claim of ours: somebody's, shown as it is, never taken for ours by a
    start (only a holder renewing takes a claim over, the rule a live holder keeps by)."""
    for raw in ("garbage", "claim:12:not json", "claim:"):
        for mode in ("renew", "claim", "now"):
            redis_server.cli("SET", KEYS.lease, raw)
            held = await arbiter.take_lease(10.0, mode=mode)  # type: ignore[arg-type]
            if mode == "renew" and raw.startswith("claim:"):
                assert held is None
                assert redis_server.cli("GET", KEYS.lease) == arbiter.lease_value
                continue
            assert isinstance(held, Holder), (raw, mode)
            assert (held.raw, held.host, held.pid) == (raw, "?", 0)
            assert held.claiming == raw.startswith("claim:")
            assert not arbiter.holds_lease
            assert redis_server.cli("GET", KEYS.lease) == raw


async def test_a_claim_nobody_renews_over_becomes_the_lease_after_a_ttl(
    arbiter: Arbiter, redis_server: RedisServer
) -> None:
    first = await arbiter.take_lease(0.3, mode="claim")
    assert isinstance(first, Claiming)
    deadline = time.monotonic() + 10.0
    while (answer := await arbiter.take_lease(0.3, mode="claim")) is not None:
        assert isinstance(answer, Claiming)
        assert answer.wait_s <= 0.3
        assert time.monotonic() < deadline, "the claim never became the lease"
        await asyncio.sleep(answer.wait_s / 2)
    assert arbiter.holds_lease
    assert redis_server.cli("GET", KEYS.lease) == arbiter.lease_value
    # The embedded Redis is the daemon's own: a missing lease is taken at once there.
    redis_server.cli("DEL", KEYS.lease)
    assert await arbiter.take_lease(0.3, mode="now") is None


async def test_a_grant_is_journaled_before_ok_and_put_back_when_redis_forgets(
    arbiter: Arbiter, redis_server: RedisServer
) -> None:
    await arbiter.flip("blue", "start", "test")
    assert await arbiter.permit("blue", 1, "order-1", "tok-1") == "ok"
    assert arbiter.seq == 1
    [grant] = arbiter.journal.grants()
    assert (grant.seq, grant.key, grant.color, grant.epoch, grant.token) == (
        1,
        "order-1",
        "blue",
        1,
        "tok-1",
    )
    assert grant.expires_ms > time.time() * 1000 + 50_000  # the permit's TTL is 60 s
    assert await arbiter.permit("blue", 1, "order-1", "tok-2") == "duplicate"
    redis_server.cli("FLUSHALL")  # Redis forgot
    assert await arbiter.restore_grants() == 1
    assert redis_server.cli("GET", KEYS.permit("order-1")) == "blue:1:tok-1"
    assert 50_000 < int(redis_server.cli("PTTL", KEYS.permit("order-1"))) <= 60_000
    assert redis_server.cli("GET", KEYS.grant_seq) == "1"
    # A counter ahead of ours is never lowered.
    redis_server.cli("SET", KEYS.grant_seq, "50")
    assert await arbiter.restore_grants() == 1
    assert redis_server.cli("GET", KEYS.grant_seq) == "50"


async def test_a_restore_that_redis_changed_under_is_refused(
    arbiter: Arbiter, redis_server: RedisServer
) -> None:
    """Something else takes the restoring mark at every attempt: the grant counter is never
    raised, the restore says so and stays pending; undisturbed, it goes through."""
    await arbiter.flip("blue", "start", "test")
    for n in range(3000):  # three batches: time for the mark to be taken between them
        arbiter.journal.append(Grant(n + 1, f"order-{n}", "blue", 1, "tok", 10**15))
    arbiter.seq = 3000
    intruder = Redis.from_url(redis_server.url)
    marks: list[bytes] = []
    taking = True

    async def take_the_mark() -> None:
        while taking:
            mark = await intruder.get(KEYS.restoring)
            if mark is not None and mark != b"someone else" and mark not in marks:
                marks.append(mark)
                await intruder.set(KEYS.restoring, "someone else")
            await asyncio.sleep(0)

    taker = asyncio.create_task(take_the_mark())
    try:
        with pytest.raises(RedisUnavailable, match="changed"):
            await arbiter.restore_grants()
        assert len(marks) == RESTORE_ATTEMPTS  # each attempt with a mark of its own
        assert redis_server.cli("GET", KEYS.grant_seq) == ""
        assert arbiter.restore_pending
        taking = False
        await asyncio.wait_for(taker, 10)
        assert await arbiter.restore_grants() == 3000
        assert redis_server.cli("GET", KEYS.grant_seq) == "3000"
        assert redis_server.cli("EXISTS", KEYS.restoring) == "0"
        assert not arbiter.restore_pending
    finally:
        taker.cancel()
        await asyncio.wait({taker}, timeout=10)
        await intruder.aclose()


async def test_a_restore_finished_in_a_redis_restarted_from_a_dump_taken_mid_way_is_redone(
    arbiter: Arbiter, redis_server: RedisServer
) -> None:
    """The dump holds the restoring mark but not the keys put after it: the mark alone would
    let the finish raise the counter over missing keys. The server's run id tells."""
    await arbiter.flip("blue", "start", "test")
    for n in range(10):
        arbiter.journal.append(Grant(n + 1, f"order-{n}", "blue", 1, "tok", 10**15))
    arbiter.seq = 10
    finish = arbiter._finish_restore
    restarts = 0

    async def restarted_first(**kwargs: Any) -> Any:
        nonlocal restarts
        if restarts == 0:
            restarts += 1
            # A dump taken mid-way: the mark is in it, the keys are not.
            keys = redis_server.cli("KEYS", "t:permit:*").split()
            redis_server.cli("DEL", *keys)
            redis_server.cli("SAVE")
            redis_server.stop()
            redis_server.start()
            assert redis_server.cli("EXISTS", KEYS.restoring) == "1"
            assert redis_server.cli("EXISTS", KEYS.permit("order-0")) == "0"
            # The client reconnects without a word (as one with retries, or behind a proxy,
            # would): the finish reaches the restarted Redis.
            for _ in range(3):
                with contextlib.suppress(RedisConnectionError):
                    await arbiter.redis.ping()
                    break
        return await finish(**kwargs)

    arbiter._finish_restore = restarted_first  # type: ignore[method-assign]
    assert await arbiter.restore_grants() == 10
    assert restarts == 1
    for n in range(10):
        assert redis_server.cli("GET", KEYS.permit(f"order-{n}")) == "blue:1:tok", n
    assert redis_server.cli("GET", KEYS.grant_seq) == "10"
    assert not arbiter.restore_pending


async def test_a_new_arbiter_takes_the_journals_highest_grant_as_its_floor(
    arbiter: Arbiter, redis_server: RedisServer, state_dir: Path
) -> None:
    """state.json may lag the journal (it is written when who acts changes, the journal on
    every grant): the journal's highest sequence is what Redis must not be behind."""
    await arbiter.flip("blue", "start", "test")
    await arbiter.save_known("blue", {})
    for n in range(3):
        assert await arbiter.permit("blue", 1, f"order-{n}", "tok") == "ok"
    arbiter.journal.close()
    again = await arbiter_on(redis_server.url, state_dir)
    try:
        assert (again.known.seq if again.known else None, again.seq) == (0, 3)
        assert again.journal.size == (state_dir / "permits.journal").stat().st_size
    finally:
        again.journal.close()
        await again.redis.aclose()


async def test_a_permit_that_cannot_be_journaled_is_refused_and_reported(
    redis_server: RedisServer, state_dir: Path
) -> None:
    arbiter = await arbiter_on(redis_server.url, state_dir)
    arbiter.journal.close()
    arbiter.journal = PermitJournal(Path("/dev/full"))  # a full disk: every write ENOSPC
    failures: list[str] = []
    arbiter.on_write_failure = lambda what, exc: failures.append(what)
    tail: asyncio.Task[None] | None = None
    try:
        await arbiter.flip("blue", "start", "test")
        assert await arbiter.permit("blue", 1, "order-1", "tok") == "unavailable"
        assert failures == ["journal"]
        assert await arbiter.permit("blue", 1, "order-1", "tok-2") == "duplicate"  # burnt
        # A grant a child made itself, that the tail cannot journal either: reported too.
        tail = asyncio.create_task(arbiter.tail_grants())
        await tailing(arbiter)
        assert direct_permit(redis_server, "order-2") == "ok"
        async with asyncio.timeout(15):
            while len(failures) < 2:
                await asyncio.sleep(0.02)
        assert failures == ["journal", "journal"]
    finally:
        if tail is not None:
            await stop(tail)
        arbiter.journal.close()
        await arbiter.redis.aclose()


def direct_permit(server: RedisServer, key: str) -> str:
    """The permit script called by a child itself (``child_access = "permit"``)."""
    r = SyncRedis.from_url(server.url, decode_responses=True)
    try:
        script = r.register_script(PERMIT)
        args = ["blue", "1", "60000", f"child-{key}", "0", key, "1000"]
        return str(script(keys=KEYS.permit_keys(key, "blue"), args=args)[0])
    finally:
        r.close()


async def stop(tail: asyncio.Task[None]) -> None:
    """Cancel the tail and wait for it (``asyncio.wait``: awaiting the cancelled task from a
    ``finally`` while an assertion fails has been seen to hang under pytest-asyncio)."""
    tail.cancel()
    await asyncio.wait({tail}, timeout=10)


async def tailing(arbiter: Arbiter) -> None:
    """Until the tail's first read is blocked in Redis: from then on it sees every grant."""
    async with asyncio.timeout(15):
        while not any(
            c.get("cmd") == "xread" and "b" in c.get("flags", "")
            for c in await arbiter.redis.client_list()
        ):
            await asyncio.sleep(0.02)


async def journaled(arbiter: Arbiter, count: int) -> list[str]:
    async with asyncio.timeout(15):
        while len(keys := [g.key for g in arbiter.journal.grants()]) < count:
            await asyncio.sleep(0.02)
    return keys


async def test_grants_children_make_themselves_are_journaled_too(
    arbiter: Arbiter, redis_server: RedisServer
) -> None:
    """With direct permits the daemon learns of a grant from the grant log, and journals it
    (with no token: only the child knows it)."""
    await arbiter.flip("blue", "start", "test")
    tail = asyncio.create_task(arbiter.tail_grants())
    try:
        await tailing(arbiter)
        assert direct_permit(redis_server, "order-d") == "ok"
        assert await journaled(arbiter, 1) == ["order-d"]
        assert await arbiter.permit("blue", 1, "order-a", "tok") == "ok"
        assert direct_permit(redis_server, "order-e") == "ok"
        async with asyncio.timeout(15):
            while "order-e" not in (keys := [g.key for g in arbiter.journal.grants()]):
                await asyncio.sleep(0.02)
        # order-a is there once, or twice when the tail read it from the log before permit()
        # had noted it as its own (a race: that line has no token).
        assert keys[0] == "order-d"
        assert set(keys) == {"order-d", "order-a", "order-e"}
        assert arbiter.seq == 3
        grants = {g.key: g for g in arbiter.journal.grants()}
        assert (grants["order-e"].seq, grants["order-e"].token) == (3, "")
        assert grants["order-e"].expires_ms > time.time() * 1000 + 50_000
    finally:
        await stop(tail)


async def test_a_grant_permit_journaled_itself_is_not_journaled_again_from_the_log(
    arbiter: Arbiter,
) -> None:
    """The tail skips the log entries of grants permit() journaled itself (the entry is
    handed to the tail's handler here, in the order that matters: after permit() noted it),
    and what permit() remembers stays bounded, the oldest forgotten first."""
    await arbiter.flip("blue", "start", "test")
    tail = asyncio.create_task(arbiter.tail_grants())
    await tailing(arbiter)  # from here on permit() notes what it journals
    await stop(tail)
    arbiter._journaled_order, arbiter._journaled = deque(maxlen=2), set()  # 100,000 in use
    for n in range(3):
        assert await arbiter.permit("blue", 1, f"order-{n}", "tok") == "ok"

    def logged(seq: int) -> None:
        key = f"order-{seq - 1}"
        arbiter._journal_logged(
            f"{int(time.time() * 1000)}-0",
            {
                b"seq": str(seq).encode(),
                b"key": key.encode(),
                b"color": b"blue",
                b"epoch": b"1",
                b"ttl": b"60000",
            },
        )

    logged(3)  # remembered: not again
    logged(2)
    assert [g.key for g in arbiter.journal.grants()] == ["order-0", "order-1", "order-2"]
    logged(1)  # forgotten: journaled again (harmless: restoring it twice is one SET NX)
    assert [g.key for g in arbiter.journal.grants()][3:] == ["order-0"]


async def test_the_tail_journals_grants_made_before_its_first_read_and_never_loses_its_place(
    redis_server: RedisServer, state_dir: Path
) -> None:
    """Found by the chaos run with direct permits: the tail began at '$' (what a child was
    granted before the first read was never journaled) and blocked for as long as the socket
    timeout (each quiet read ended in a timeout, and the next began at '$' again, so a grant
    made meanwhile was lost). Here the socket timeout is short and the grants are spaced past
    it; an entry already in the journal, or expired, is not journaled again."""
    arbiter = Arbiter(Redis.from_url(redis_server.url, socket_timeout=0.3), KEYS, state_dir, 60)
    arbiter.load_journal()
    tail: asyncio.Task[None] | None = None
    try:
        await arbiter.flip("blue", "start", "test")
        assert await arbiter.permit("blue", 1, "order-0", "tok") == "ok"  # journaled itself
        assert direct_permit(redis_server, "order-early") == "ok"  # before any tail
        tail = asyncio.create_task(arbiter.tail_grants())
        assert await journaled(arbiter, 2) == ["order-0", "order-early"]
        for n in range(4):
            await asyncio.sleep(0.4)  # past the socket timeout: quiet reads in between
            assert direct_permit(redis_server, f"order-{n + 1}") == "ok"
        keys = await journaled(arbiter, 6)
        assert keys == ["order-0", "order-early", "order-1", "order-2", "order-3", "order-4"]
        assert arbiter.seq == 6
        # A daemon started again reads the log from its start: nothing twice.
        await stop(tail)
        again = Arbiter(Redis.from_url(redis_server.url), KEYS, state_dir, 60)
        again.load_journal()
        tail = asyncio.create_task(again.tail_grants())
        await tailing(again)
        assert direct_permit(redis_server, "order-5") == "ok"
        assert (await journaled(again, 7))[6:] == ["order-5"]
        again.journal.close()
        await again.redis.aclose()
    finally:
        if tail is not None:
            await stop(tail)
        arbiter.journal.close()
        await arbiter.redis.aclose()


async def test_grants_made_under_another_daemon_are_imported(
    arbiter: Arbiter, redis_server: RedisServer
) -> None:
    """Taking a namespace over: every executed key Redis holds is journaled (in batches)."""
    r = SyncRedis.from_url(redis_server.url, decode_responses=True)
    try:
        with r.pipeline(transaction=False) as pipe:
            for n in range(1200):  # odd keys a minute to live, even ones an hour
                pipe.set(KEYS.permit(f"k{n}"), f"green:3:tok-{n}", px=60_000 if n % 2 else 3600_000)
            pipe.set(KEYS.permit("forever"), "green:3:x")  # no TTL: not a permit's
            pipe.execute()
    finally:
        r.close()
    assert await arbiter.import_grants(1200) == 1200
    grants = {g.key: g for g in arbiter.journal.grants()}
    assert len(grants) == 1200
    assert grants["k7"].record == "green:3:tok-7"
    now_ms = time.time() * 1000
    assert all(
        (g.expires_ms < now_ms + 61_000) == (int(g.key[1:]) % 2 == 1) for g in grants.values()
    )
    assert arbiter.seq == 1200
    # A journal that cannot be written: the import stops, and says so.
    failures: list[str] = []
    arbiter.on_write_failure = lambda what, exc: failures.append(what)
    arbiter.journal.close()
    arbiter.journal = PermitJournal(Path("/dev/full"))
    with pytest.raises(DurableWriteError):
        await arbiter.import_grants(1200)
    assert failures == ["journal"]


async def test_a_confirm_is_recorded_and_its_cleared_fields_deleted(
    arbiter: Arbiter, redis_server: RedisServer
) -> None:
    """A field left behind would bring the candidate back at the next start."""
    redis_server.cli("HSET", KEYS.rollout, "stable", "blue", "candidate", "green")
    await arbiter.save_rollout({"stable": "green", "candidate": "", "probation_since": ""})
    assert redis_server.cli("HGETALL", KEYS.rollout).split() == ["stable", "green"]


async def test_keyspace_notifications_are_turned_on_where_config_is_allowed(
    arbiter: Arbiter, redis_server: RedisServer, state_dir: Path
) -> None:
    redis_server.cli("CONFIG", "SET", "notify-keyspace-events", "Ex")
    assert await arbiter.enable_notifications()
    assert set(redis_server.cli("CONFIG", "GET", "notify-keyspace-events").split()[1]) == set(
        "K$gEx"
    )
    # A managed Redis that refuses CONFIG: the timer alone finds changes; said, not raised.
    redis_server.cli("ACL", "SETUSER", "limited", "on", ">pw", "~*", "&*", "+@all", "-config")
    limited = Arbiter(
        Redis.from_url(redis_server.url, username="limited", password="pw"),
        KEYS,
        state_dir,
        permit_ttl_s=60,
    )
    try:
        assert not await limited.enable_notifications()
    finally:
        await limited.redis.aclose()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def loopback_redis(directory: Path, *options: str) -> Iterator[int]:
    """A redis-server on a free loopback port (a replica needs TCP); yields the port."""
    assert REDIS_BINARY is not None
    directory.mkdir()
    port = _free_port()
    args = [REDIS_BINARY, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(directory)]
    args += ["--save", "", "--appendonly", "no", "--daemonize", "no", *options]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            if b"ready to accept connections" in line.lower():
                break
        else:
            raise RuntimeError(f"redis-server exited with {proc.wait()}")
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        proc.stdout.close()


async def waits(arbiter: Arbiter) -> int:
    """How many WAIT commands Redis has run since its statistics were reset."""
    stats = await arbiter.redis.info("commandstats")
    return int(stats.get("cmdstat_wait", {}).get("calls", 0))


async def test_with_a_replica_a_flip_waits_for_it(state_dir: Path) -> None:
    """A failover could lose a flip no replica holds: with one attached, a committed flip
    waits for it (``WAIT 1``); an answer that committed nothing does not."""
    directory = short_tempdir("as-r-")
    try:
        with loopback_redis(directory / "primary") as port:
            arbiter = await arbiter_on(f"redis://127.0.0.1:{port}/0", state_dir)
            try:
                assert await arbiter.replicas() == 0
                await arbiter.flip("blue", "start", "test")
                with loopback_redis(directory / "replica", "--replicaof", "127.0.0.1", str(port)):
                    async with asyncio.timeout(30):  # attached, and through its first sync
                        while (await arbiter.redis.info("replication")).get("slave0", {}).get(
                            "state"
                        ) != "online":
                            await asyncio.sleep(0.05)
                    assert await arbiter.replicas() == 1
                    arbiter.replica_count = await arbiter.replicas()
                    await arbiter.redis.config_resetstat()
                    assert (await arbiter.flip("green", "switch", "test")).epoch == 2
                    assert await waits(arbiter) == 1
                    conflict = await arbiter.flip(None, "bump", "test", expect="blue")
                    assert conflict.status is FlipStatus.CONFLICT
                    assert await waits(arbiter) == 1
            finally:
                arbiter.journal.close()
                await arbiter.redis.aclose()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def holder(pid: int, start: int | None, host: str | None = None) -> Holder:
    return Holder("id", host or socket.gethostname(), pid, start, 0.0)


def test_only_a_holder_gone_from_this_host_counts_as_dead() -> None:
    """A daemon killed with -9 leaves its lease until the TTL; its successor on the same host
    may take it at once, but only when that process is really gone: its pid no longer runs,
    or runs another process (a reused pid has another start time)."""
    me, started = os.getpid(), start_time_of(os.getpid())
    assert started is not None
    assert not holder(me, started).is_dead_here()
    assert not holder(me, None).is_dead_here()  # no start time recorded: the pid decides
    assert holder(me, started + 1).is_dead_here()  # the pid was reused
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    dead = int(gone.stdout)
    assert holder(dead, None).is_dead_here()
    # Another host's holder: nothing here can tell, so it is never taken over.
    assert not holder(dead, None, host="elsewhere.invalid").is_dead_here()
    assert not holder(me, started + 1, host="elsewhere.invalid").is_dead_here()
