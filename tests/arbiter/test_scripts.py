"""The Lua scripts, one answer at a time, against a real redis-server.

Every branch of every script that decides who may act has a test here that fails when the
branch is changed (bench/mutation.py flips their operators and conditions to check that)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import redis

from supervisor.arbiter import scripts
from tests.redis_server import RedisServer

KEYS = scripts.Keys("t", "t:active_version")


@pytest.fixture
def r(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    yield client
    client.close()


def run(r: redis.Redis, script: str, keys: list[str], args: list[Any]) -> list[Any]:
    answer = r.register_script(script)(keys=keys, args=[str(a) for a in args])
    return list(answer) if isinstance(answer, list) else [answer]


def permit(
    r: redis.Redis, color: str, epoch: int, key: str, token: str = "t1", min_seq: int = 0
) -> list[Any]:
    return run(
        r,
        scripts.PERMIT,
        KEYS.permit_keys(key, color),
        [color, epoch, 60000, token, min_seq, key, 100],
    )


def flip(
    r: redis.Redis,
    to: str = "",
    *,
    floor: int = 0,
    flip_id: str = "f1",
    expect: str = "",
    lease: str = "",
    ceiling: str = "",
    rollout: dict[str, str] | None = None,
) -> list[Any]:
    args = [
        to,
        floor,
        flip_id,
        "switch",
        "uid:0",
        "1.0",
        expect,
        100,
        "",
        orjson.dumps(rollout).decode() if rollout else "",
        lease,
        ceiling,
    ]
    return run(r, scripts.FLIP, KEYS.flip_keys(), args)


def adopt(
    r: redis.Redis,
    known: int,
    *,
    min_seq: int = 0,
    stable: str = "blue",
    lease: str = "",
    ceiling: str = "",
    flip_id: str = "a1",
) -> list[Any]:
    args = [known, min_seq, lease, flip_id, "2.5", 100, stable, ceiling]
    return run(r, scripts.ADOPT, KEYS.adopt_keys(), args)


def state(r: redis.Redis, active: str, epoch: int, owner: str | None = None) -> None:
    r.set(KEYS.active, active)
    r.set(KEYS.epoch, epoch)
    r.set(KEYS.owner, active if owner is None else owner)


# ------------------------------------------------------------------------------ permit


def test_permit_grants_once_and_counts_the_grant(r: redis.Redis) -> None:
    state(r, "blue", 5)
    assert permit(r, "blue", 5, "order-1") == ["ok", 1]
    assert r.get(KEYS.permit("order-1")) == "blue:5:t1"
    assert permit(r, "blue", 5, "order-1") == ["ok", 1]  # the same token: a retry
    assert permit(r, "blue", 5, "order-1", token="t2") == ["duplicate", 1]
    assert permit(r, "blue", 5, "order-2") == ["ok", 2]
    log = r.xrange(KEYS.grant_log)
    assert [(e[1]["key"], e[1]["seq"], e[1]["color"]) for e in log] == [
        ("order-1", "1", "blue"),
        ("order-2", "2", "blue"),
    ]
    assert r.hgetall(KEYS.permit_stats) == {"ok": "2", "duplicate": "1"}


def test_permit_wants_the_active_key_and_the_owner_to_agree(r: redis.Redis) -> None:
    state(r, "green", 5, owner="blue")  # a raw SET of the active key, not adopted yet
    assert permit(r, "green", 5, "a")[0] == "not_active"
    assert permit(r, "blue", 5, "b")[0] == "not_active"
    r.set(KEYS.owner, "green")
    assert permit(r, "green", 5, "a")[0] == "ok"
    r.delete(KEYS.owner)
    assert permit(r, "green", 5, "c")[0] == "not_active"
    assert r.exists(KEYS.permit("b"), KEYS.permit("c")) == 0


def test_permit_refuses_a_stale_epoch(r: redis.Redis) -> None:
    state(r, "blue", 5)
    assert permit(r, "blue", 4, "a")[0] == "stale_epoch"
    assert permit(r, "blue", 6, "a")[0] == "stale_epoch"
    assert not r.exists(KEYS.permit("a"))


def test_permit_refuses_a_redis_behind_the_callers_grants(r: redis.Redis) -> None:
    state(r, "blue", 5)
    r.set(KEYS.grant_seq, 7)
    assert permit(r, "blue", 5, "a", min_seq=8) == ["regressed", 7]
    assert not r.exists(KEYS.permit("a"))
    assert permit(r, "blue", 5, "a", min_seq=7) == ["ok", 8]
    assert r.hget(KEYS.permit_stats, "regressed") == "1"


# ------------------------------------------------------------------------------ flip


def test_flip_moves_the_key_the_owner_and_the_epoch_in_one_step(r: redis.Redis) -> None:
    state(r, "blue", 5)
    answer = flip(r, "green", rollout={"candidate": "green", "stable": "blue"})
    assert answer == ["ok", "6", "blue", "green"]
    assert (r.get(KEYS.active), r.get(KEYS.epoch), r.get(KEYS.owner)) == ("green", "6", "green")
    assert r.hgetall(KEYS.rollout) == {"candidate": "green", "stable": "blue"}
    entry = r.xrange(KEYS.flips)[-1][1]
    assert (entry["from"], entry["to"], entry["epoch"]) == ("blue", "green", "6")


def test_flip_retried_with_the_same_id_does_not_bump_twice(r: redis.Redis) -> None:
    state(r, "blue", 5)
    assert flip(r, "green", flip_id="x")[0:2] == ["ok", "6"]
    assert flip(r, "green", flip_id="x") == ["dup", "6", "blue", "green"]
    assert r.get(KEYS.epoch) == "6"
    assert r.xlen(KEYS.flips) == 1


def test_flip_goes_above_the_floor(r: redis.Redis) -> None:
    state(r, "blue", 5)
    assert flip(r, "", floor=40)[0:2] == ["ok", "41"]
    assert flip(r, "", floor=3, flip_id="f2")[0:2] == ["ok", "42"]


def test_flip_with_an_expected_color_refuses_when_the_key_moved(r: redis.Redis) -> None:
    state(r, "green", 5, owner="blue")  # an operator's SET landed before our flip
    assert flip(r, "", expect="blue") == ["conflict", "5", "green", ""]
    assert (r.get(KEYS.epoch), r.get(KEYS.owner)) == ("5", "blue")
    assert r.xlen(KEYS.flips) == 0
    assert flip(r, "", expect="green", flip_id="f2")[0:2] == ["ok", "6"]
    assert r.get(KEYS.owner) == "green"


def test_flip_never_passes_the_reservation(r: redis.Redis) -> None:
    state(r, "blue", 5)
    assert flip(r, "green", ceiling="5") == ["reserve", "6", "blue", ""]
    assert (r.get(KEYS.active), r.get(KEYS.epoch)) == ("blue", "5")
    assert flip(r, "green", ceiling="6", flip_id="f2")[0:2] == ["ok", "6"]


def test_flip_needs_the_lease_when_it_names_one(r: redis.Redis) -> None:
    state(r, "blue", 5)
    r.set(KEYS.lease, "someone-else")
    assert flip(r, "green", lease="me") == ["not_holder", "0", "", "someone-else"]
    assert r.get(KEYS.active) == "blue"
    r.set(KEYS.lease, "me")
    assert flip(r, "green", lease="me", flip_id="f2")[0] == "ok"


def test_a_flip_to_a_value_that_is_not_a_color_leaves_no_owner(r: redis.Redis) -> None:
    state(r, "purple", 5, owner="blue")
    assert flip(r, "")[0:2] == ["ok", "6"]
    assert r.get(KEYS.owner) is None


# ------------------------------------------------------------------------------ adopt


def test_adopt_answers_same_when_nothing_moved(r: redis.Redis) -> None:
    state(r, "blue", 5)
    r.set(KEYS.grant_seq, 3)
    assert adopt(r, 5, min_seq=3) == ["same", "5", "blue", "blue", "3"]
    assert r.xlen(KEYS.flips) == 0


def test_adopt_takes_an_operators_set_in_the_same_call(r: redis.Redis) -> None:
    state(r, "green", 5, owner="blue")
    r.hset(KEYS.rollout, mapping={"stable": "blue", "rejected_green": "2.0.0"})
    assert adopt(r, 5) == ["adopted", "6", "green", "blue", "0"]
    assert (r.get(KEYS.epoch), r.get(KEYS.owner)) == ("6", "green")
    assert r.hgetall(KEYS.rollout) == {
        "stable": "blue",
        "candidate": "green",
        "probation_since": "2.5",
    }
    entry = r.xrange(KEYS.flips)[-1][1]
    assert (entry["from"], entry["to"], entry["reason"], entry["by"]) == (
        "blue",
        "green",
        "external",
        "redis",
    )
    # Back to stable: the candidate goes.
    r.set(KEYS.active, "blue")
    assert adopt(r, 6, flip_id="a2")[0:2] == ["adopted", "7"]
    assert r.hgetall(KEYS.rollout) == {"stable": "blue"}


def test_adopt_finds_a_redis_behind_us(r: redis.Redis) -> None:
    state(r, "green", 5, owner="blue")
    assert adopt(r, 9)[0] == "regressed"
    state(r, "blue", 9)
    r.set(KEYS.grant_seq, 2)
    assert adopt(r, 9, min_seq=3)[0] == "regressed"
    assert r.get(KEYS.epoch) == "9"
    assert r.xlen(KEYS.flips) == 0


def test_adopt_leaves_other_changes_to_the_caller(r: redis.Redis) -> None:
    state(r, "blue", 12)
    assert adopt(r, 5)[0:2] == ["changed", "12"]  # someone raised the epoch
    r.delete(KEYS.active)
    assert adopt(r, 12)[0:3] == ["changed", "12", ""]  # deleted
    state(r, "purple", 12, owner="blue")
    assert adopt(r, 12)[0:3] == ["changed", "12", "purple"]  # not a color
    assert r.get(KEYS.epoch) == "12"


def test_adopt_respects_the_reservation_and_the_lease(r: redis.Redis) -> None:
    state(r, "green", 5, owner="blue")
    assert adopt(r, 5, ceiling="5")[0:2] == ["reserve", "6"]
    assert r.get(KEYS.owner) == "blue"
    r.set(KEYS.lease, "other")
    assert adopt(r, 5, lease="me")[0] == "not_holder"
    assert adopt(r, 5, lease="me")[3] == "other"
    assert r.get(KEYS.owner) == "blue"


# ------------------------------------------------------------------------------ lease


def test_the_lease_is_taken_once_renewed_by_its_holder_and_released(r: redis.Redis) -> None:
    take = [KEYS.lease]
    assert run(r, scripts.LEASE, take, ["a", 5000, "", "now"]) == ["mine", "a"]
    assert run(r, scripts.LEASE, take, ["b", 5000, "", "claim"]) == ["held", "a"]
    assert run(r, scripts.LEASE, take, ["a", 5000, "", "renew"]) == ["mine", "a"]  # renewed
    assert 0 < r.pttl(KEYS.lease) <= 5000
    assert run(r, scripts.LEASE, take, ["b", 5000, "x", "claim"]) == ["held", "a"]  # not that one
    assert run(r, scripts.LEASE, take, ["b", 5000, "a", "claim"]) == ["mine", "b"]  # a found dead
    assert run(r, scripts.RELEASE, take, ["a", 5000]) == [0]
    assert r.get(KEYS.lease) == "b"
    assert run(r, scripts.RELEASE, take, ["b", 5000]) == [1]
    assert r.get(KEYS.lease) == "released:b"
    assert 0 < r.pttl(KEYS.lease) <= 5000
    assert run(r, scripts.LEASE, take, ["c", 5000, "", "claim"]) == ["mine", "c"]  # at once


def test_a_missing_lease_is_claimed_for_a_ttl_and_a_holder_renews_over_the_claim(
    r: redis.Redis,
) -> None:
    take = [KEYS.lease]
    status, left = run(r, scripts.LEASE, take, ["b", 5000, "", "claim"])
    assert status == "claiming"
    assert 4900 <= int(left) <= 5000
    claim = r.get(KEYS.lease)
    assert claim is not None
    assert claim.startswith("claim:")
    assert claim.endswith(":b")
    assert 5000 < r.pttl(KEYS.lease) <= 10_000  # outlives its TTL: the claimant takes it then
    # Asked again, the claim counts down; it does not start over.
    status, later = run(r, scripts.LEASE, take, ["b", 5000, "", "claim"])
    assert status == "claiming"
    assert int(later) <= int(left)
    assert r.get(KEYS.lease) == claim
    # Another start sees the claim as held; a live holder renews over it.
    assert run(r, scripts.LEASE, take, ["c", 5000, "", "claim"]) == ["held", claim]
    assert run(r, scripts.LEASE, take, ["c", 5000, "", "now"]) == ["held", claim]
    assert run(r, scripts.LEASE, take, ["a", 5000, "", "renew"]) == ["mine", "a"]
    assert run(r, scripts.LEASE, take, ["b", 5000, "", "claim"]) == ["held", "a"]
    # A claim a TTL old (its time is Redis's): the claimant's.
    r.set(KEYS.lease, "claim:0:b")
    assert run(r, scripts.LEASE, take, ["b", 5000, "", "claim"]) == ["mine", "b"]
    # A claim whose time cannot be read is as old as can be: never a claim that lasts forever.
    r.set(KEYS.lease, "claim:garbage")
    assert run(r, scripts.LEASE, take, ["b", 5000, "", "claim"])[0] == "held"
    r.set(KEYS.lease, "claim:x:b")
    assert run(r, scripts.LEASE, take, ["b", 5000, "", "claim"]) == ["mine", "b"]


def test_permit_asks_redis_who_is_calling(r: redis.Redis, redis_server: RedisServer) -> None:
    """A child that calls the script itself (direct permits) is held to its own color: the
    identity key must be the one of the color asked for, and writable by the caller (its
    ACL user; the daemon may write either)."""
    state(r, "blue", 5)
    forged = [*KEYS.permit_keys("order-1", "blue")[:7], KEYS.identity("green")]
    answer = run(r, scripts.PERMIT, forged, ["blue", 5, 60000, "t", 0, "order-1", 100])
    assert answer[0] == "not_active"
    assert not r.exists(KEYS.permit("order-1"))
    # Green's user may read everything and write its own identity and the permit keys.
    rules = ["on", ">pw", "+@all", "%R~*", "~t:identity:green", "~t:permit:*", "~t:permits:*"]
    rules.append("(~* +eval +evalsha)")  # EVAL checks its KEYS as written: see identity.py
    r.execute_command("ACL", "SETUSER", "green", *rules)
    green = redis.Redis.from_url(
        redis_server.url, username="green", password="pw", decode_responses=True
    )
    try:
        as_blue = green.register_script(scripts.PERMIT)(
            keys=KEYS.permit_keys("order-1", "blue"),
            args=["blue", 5, 60000, "t", 0, "order-1", 100],
        )
        assert as_blue[0] == "not_active"  # green may not write blue's identity key
        r.set(KEYS.active, "green")
        r.set(KEYS.owner, "green")
        as_itself = green.register_script(scripts.PERMIT)(
            keys=KEYS.permit_keys("order-2", "green"),
            args=["green", 5, 60000, "t", 0, "order-2", 100],
        )
        assert as_itself[0] == "ok"
    finally:
        green.close()
    r.set(KEYS.active, "blue")
    r.set(KEYS.owner, "blue")
    assert permit(r, "blue", 5, "order-1")[0] == "ok"  # the daemon (default user) may


# ------------------------------------------------------------------------------ what the
# mutants of bench/mutation.py found untested


def test_every_refusal_is_counted_under_its_reason(r: redis.Redis) -> None:
    """The daemon's ``agentsup_permits_denied_total{reason}`` is read from these counts."""
    state(r, "blue", 5)
    assert permit(r, "green", 5, "a")[0] == "not_active"
    assert permit(r, "blue", 4, "a")[0] == "stale_epoch"
    assert permit(r, "blue", 6, "a")[0] == "stale_epoch"
    assert permit(r, "blue", 5, "a")[0] == "ok"
    assert permit(r, "blue", 5, "a", token="t2")[0] == "duplicate"
    assert permit(r, "blue", 5, "b", min_seq=9)[0] == "regressed"
    assert r.hgetall(KEYS.permit_stats) == {
        "not_active": "1",
        "stale_epoch": "2",
        "ok": "1",
        "duplicate": "1",
        "regressed": "1",
    }


def test_an_epoch_bump_leaves_the_active_key_untouched(r: redis.Redis) -> None:
    """A bump (``to`` empty, or the color already active) writes the epoch, not the active
    key: a SET of the key would wake everyone who watches it (the daemon's own keyspace
    watcher, agents polling the seed's way) for nothing."""
    state(r, "blue", 5)
    r.config_set("notify-keyspace-events", "K$g")
    sub = r.pubsub()
    sub.subscribe(f"__keyspace@0__:{KEYS.active}")
    try:
        assert sub.get_message(timeout=5.0)["type"] == "subscribe"  # listening from here on
        assert flip(r, "", flip_id="bump")[0:2] == ["ok", "6"]
        assert flip(r, "blue", flip_id="same")[0:2] == ["ok", "7"]
        assert flip(r, "green", flip_id="move")[0:2] == ["ok", "8"]
        r.expire(KEYS.active, 3600)  # the marker: every event before it has arrived by then
        events = []
        while (message := sub.get_message(timeout=5.0)) is not None:
            events.append(message["data"])
            if message["data"] == "expire":
                break
        assert events == ["set", "expire"]  # the move to green alone, then the marker
    finally:
        sub.close()
    assert (r.get(KEYS.active), r.get(KEYS.owner)) == ("green", "green")


def test_a_flip_deletes_the_rollout_fields_it_is_given_empty(r: redis.Redis) -> None:
    state(r, "green", 5)
    r.hset(KEYS.rollout, mapping={"stable": "blue", "candidate": "green", "probation_since": "1"})
    answer = flip(r, "blue", rollout={"stable": "blue", "candidate": "", "probation_since": ""})
    assert answer[0:2] == ["ok", "6"]
    assert r.hgetall(KEYS.rollout) == {"stable": "blue"}


def test_adopt_goes_up_to_the_reservation_and_records_the_flip(r: redis.Redis) -> None:
    """The reservation is a ceiling the new epoch may reach; the adoption is the last flip
    (a retried flip compares its id with it)."""
    state(r, "green", 5, owner="blue")
    assert adopt(r, 5, ceiling="6", flip_id="a9")[0:2] == ["adopted", "6"]
    assert r.hgetall(KEYS.last_flip) == {"id": "a9", "epoch": "6", "from": "blue", "to": "green"}


def test_finishing_a_restore_needs_the_redis_it_began_in(r: redis.Redis) -> None:
    """The grant counter is raised only where the keys were put back: a Redis restarted from
    a dump mid-way has no marker, and the regression is found (and mended) again."""
    keys = [KEYS.restoring, KEYS.grant_seq]
    r.set(KEYS.grant_seq, 3)
    assert run(r, scripts.FINISH_RESTORE, keys, ["tok", 40]) == [0]  # no marker: a new Redis
    assert r.get(KEYS.grant_seq) == "3"
    r.set(KEYS.restoring, "other")
    assert run(r, scripts.FINISH_RESTORE, keys, ["tok", 40]) == [0]
    r.set(KEYS.restoring, "tok")
    assert run(r, scripts.FINISH_RESTORE, keys, ["tok", 40]) == [1]
    assert (r.get(KEYS.grant_seq), r.exists(KEYS.restoring)) == ("40", 0)
    r.set(KEYS.restoring, "tok2")
    assert run(r, scripts.FINISH_RESTORE, keys, ["tok2", 7]) == [1]
    assert r.get(KEYS.grant_seq) == "40"  # never lowered


def test_a_permit_asked_under_another_colors_identity_is_counted_as_not_active(
    r: redis.Redis,
) -> None:
    state(r, "blue", 5)
    forged = [*KEYS.permit_keys("order-1", "blue")[:7], KEYS.identity("green")]
    assert run(r, scripts.PERMIT, forged, ["blue", 5, 60000, "t", 0, "order-1", 100])[0] == (
        "not_active"
    )
    assert r.hgetall(KEYS.permit_stats) == {"not_active": "1"}
