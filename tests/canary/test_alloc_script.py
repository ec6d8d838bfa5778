"""The permit and flip scripts in a canary, one answer at a time, against a real redis-server.

The fence is the canary's promise: the candidate acts only within its share of the step's
stake (plus the allowance), the stable color is never refused for its share, and a step
change, an abort or a promotion is one flip that moves the epoch and the split together."""

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
    r: redis.Redis,
    color: str,
    epoch: int,
    key: str,
    amount: Any = None,
    *,
    token: str = "t1",
    keys: list[str] | None = None,
) -> str:
    args: list[Any] = [color, epoch, 60000, token, 0, key, 100]
    if amount is not None:
        args.append(amount)
    return str(run(r, scripts.PERMIT, keys or KEYS.permit_keys(key, color), args)[0])


def flip(
    r: redis.Redis, to: str = "", *, flip_id: str, alloc: dict[str, str] | None = None
) -> list[Any]:
    args: list[Any] = [to, 0, flip_id, "canary", "uid:0", "1.0", "", 100, "", "", "", ""]
    if alloc is not None:
        args.append(orjson.dumps(alloc).decode())
    return run(r, scripts.FLIP, KEYS.flip_keys(), args)


def canary(
    allocation: float = 0.05, allowance: float = 0.0, start: float = 0.0, **more: str
) -> dict[str, str]:
    return {
        "mode": "canary",
        "candidate": "green",
        "allocation": repr(allocation),
        "allowance": repr(allowance),
        "start": repr(start),
        "stake_blue": "0",
        "stake_green": "0",
        "n_blue": "0",
        "n_green": "0",
        **more,
    }


def in_canary(
    r: redis.Redis, allocation: float = 0.05, allowance: float = 0.0, start: float = 0.0
) -> int:
    """Blue stable and in charge, green the candidate at ``allocation``: the epoch."""
    r.set(KEYS.active, "blue")
    r.set(KEYS.epoch, 4)
    r.set(KEYS.owner, "blue")
    answer = flip(r, "", flip_id="start", alloc=canary(allocation, allowance, start))
    assert answer[0] == "ok"
    return int(answer[1])


def stakes(r: redis.Redis) -> tuple[float, float]:
    got = r.hmget(KEYS.alloc, "stake_blue", "stake_green")
    return float(got[0] or 0), float(got[1] or 0)


def test_the_candidate_is_granted_only_within_its_share_plus_the_allowance(
    r: redis.Redis,
) -> None:
    epoch = in_canary(r, allocation=0.2, allowance=0.05, start=1.0)
    assert r.hget(KEYS.alloc, "epoch") == str(epoch)
    # Nothing staked yet: the start amount lets the candidate begin (1 <= 0.25 * 1 + 1).
    assert permit(r, "green", epoch, "g1", 1.0) == "ok"
    # 2 > 0.25 * 2 + 1: it must wait for stable to stake.
    assert permit(r, "green", epoch, "g2", 1.0) == "over_allocation"
    for i in range(6):
        assert permit(r, "blue", epoch, f"b{i}", 1.0) == "ok"
    assert stakes(r) == (6.0, 1.0)
    # 2 <= 0.25 * 8 + 1 = 3, then 3 <= 0.25 * 9 + 1 = 3.25, then 4 > 0.25 * 10 + 1 = 3.5.
    assert permit(r, "green", epoch, "g2", 1.0) == "ok"
    assert permit(r, "green", epoch, "g3", 1.0) == "ok"
    assert permit(r, "green", epoch, "g4", 1.0) == "over_allocation"
    assert stakes(r) == (6.0, 3.0)
    assert r.hmget(KEYS.alloc, "n_blue", "n_green") == ["6", "3"]
    # A refused permit burns no key: asked again once there is room, it is granted.
    assert not r.exists(KEYS.permit("g4"))
    for i in range(6, 20):
        assert permit(r, "blue", epoch, f"b{i}", 1.0) == "ok"
    assert permit(r, "green", epoch, "g4", 1.0) == "ok"
    stats = r.hgetall(KEYS.permit_stats)
    assert (stats["over_allocation"], stats["ok"]) == ("2", "24")


def test_without_a_start_amount_the_candidate_waits_for_stable(r: redis.Redis) -> None:
    epoch = in_canary(r, allocation=0.05, allowance=0.01)
    assert permit(r, "green", epoch, "g1", 0.05) == "over_allocation"
    assert permit(r, "blue", epoch, "b1", 0.95) == "ok"
    assert permit(r, "green", epoch, "g1", 0.05) == "ok"  # 0.05 <= 0.06 * 1.0
    assert permit(r, "green", epoch, "g2", 0.05) == "over_allocation"  # 0.1 > 0.06 * 1.05


def test_stable_is_never_refused_for_its_share_and_both_must_say_the_amount(
    r: redis.Redis,
) -> None:
    epoch = in_canary(r, allocation=0.05)
    # The candidate is idle: stable takes everything, however much.
    for i in range(5):
        assert permit(r, "blue", epoch, f"b{i}", 1e6) == "ok"
    assert stakes(r) == (5e6, 0.0)
    # In a canary the stake is required, of either color, and must be a positive number.
    for bad in (None, "", "0", "-1", "nan", "inf", "abc", "1e15"):
        assert permit(r, "blue", epoch, "x", bad) == "amount_required", bad
        assert permit(r, "green", epoch, "x", bad) == "amount_required", bad
    assert not r.exists(KEYS.permit("x"))
    assert r.hget(KEYS.permit_stats, "amount_required") == "16"
    # Outside a canary the amount is neither needed nor counted.
    flip(r, "", flip_id="abort", alloc={"mode": "off", "candidate": "", "allocation": ""})
    epoch += 1
    assert permit(r, "blue", epoch, "plain") == "ok"
    assert permit(r, "blue", epoch, "plain-2", 3.0) == "ok"
    assert stakes(r) == (5e6, 0.0)


def test_a_retried_grant_is_ok_once_and_counted_once(r: redis.Redis) -> None:
    epoch = in_canary(r, allocation=0.5, start=2.0)
    assert permit(r, "green", epoch, "g1", 2.0, token="a") == "ok"
    # The same token (a retry after a lost reply): ok, though the share is used up now.
    assert permit(r, "green", epoch, "g1", 2.0, token="a") == "ok"
    assert permit(r, "green", epoch, "g1", 2.0, token="b") == "duplicate"
    assert stakes(r) == (0.0, 2.0)
    assert permit(r, "blue", epoch, "g1", 2.0) == "duplicate"  # a key is a key, whoever asks


def test_the_split_is_in_force_only_at_its_own_epoch(r: redis.Redis) -> None:
    """Any change of who acts that does not rewrite the split (a bump by something that knows
    nothing of canaries, an operator's SET) ends the canary in the fence at once."""
    epoch = in_canary(r, allocation=0.5, start=10.0)
    assert permit(r, "green", epoch, "g1", 1.0) == "ok"
    assert flip(r, "", flip_id="bump")[0] == "ok"  # no allocation fields: the hash is stale
    epoch += 1
    assert permit(r, "green", epoch, "g2", 1.0) == "not_active"
    assert permit(r, "blue", epoch, "b1") == "ok"  # blue-green again: no amount needed
    # Rewritten at the new epoch, the canary holds again (the stakes kept).
    assert flip(r, "", flip_id="again", alloc={"mode": "canary"})[0] == "ok"
    epoch += 1
    assert permit(r, "green", epoch, "g2", 1.0) == "ok"
    assert stakes(r) == (0.0, 2.0)
    # An operator's raw SET of the active key: the key and the owner disagree, nobody acts.
    r.set(KEYS.active, "green")
    assert permit(r, "green", epoch, "g3", 1.0) == "not_active"
    assert permit(r, "blue", epoch, "b2", 1.0) == "not_active"


def test_an_abort_refuses_the_candidates_next_permit_and_a_promotion_hands_it_all(
    r: redis.Redis,
) -> None:
    epoch = in_canary(r, allocation=0.5, start=10.0)
    assert permit(r, "green", epoch, "g1", 1.0) == "ok"
    abort = flip(r, "", flip_id="abort", alloc={"mode": "off", "candidate": "", "allocation": ""})
    assert abort[0] == "ok"
    # Asked with the epoch it was told or the new one: either way refused.
    assert permit(r, "green", epoch, "g2", 1.0) == "not_active"
    assert permit(r, "green", epoch + 1, "g2", 1.0) == "not_active"
    assert permit(r, "blue", epoch, "b1", 1.0) == "stale_epoch"
    epoch = int(flip(r, "", flip_id="restart", alloc=canary(0.5, start=10.0))[1])
    promote = flip(r, "green", flip_id="promote", alloc={"mode": "off", "candidate": ""})
    assert promote[0:2] == ["ok", str(epoch + 1)]
    epoch += 1
    assert permit(r, "green", epoch, "g2") == "ok"  # in charge alone: no share, no amount
    assert permit(r, "blue", epoch, "b2", 1.0) == "not_active"


def test_the_candidate_is_never_the_color_in_charge(r: redis.Redis) -> None:
    """A hash naming the color the active key names is no canary: that color acts as in
    blue-green, the other not at all."""
    epoch = in_canary(r, allocation=0.5, start=10.0)
    flip(r, "", flip_id="odd", alloc={"candidate": "blue"})
    epoch += 1
    assert permit(r, "blue", epoch, "b1") == "ok"
    assert permit(r, "green", epoch, "g1", 1.0) == "not_active"


def test_an_allocation_hash_under_another_name_is_ignored(r: redis.Redis) -> None:
    """The script checks the name of KEYS[9], as it does the identity key's: a child calling
    it directly cannot hand it a hash of its own making."""
    epoch = in_canary(r, allocation=0.05)
    r.hset("t:permit:forged", mapping={**canary(1.0, 0.0, 1e9), "epoch": str(epoch)})
    forged = [*KEYS.permit_keys("g1", "green")[:8], "t:permit:forged"]
    assert permit(r, "green", epoch, "g1", 1.0, keys=forged) == "not_active"
    # And without KEYS[9] at all (an older client), the candidate cannot act either.
    assert permit(r, "green", epoch, "g1", 1.0, keys=KEYS.permit_keys("g1", "green")[:8]) == (
        "not_active"
    )
    assert permit(r, "blue", epoch, "b1", keys=KEYS.permit_keys("b1", "blue")[:8]) == "ok"


def test_a_step_is_one_flip_and_a_retried_flip_writes_nothing_twice(r: redis.Redis) -> None:
    epoch = in_canary(r, allocation=0.05, start=1.0)
    for i in range(19):
        assert permit(r, "blue", epoch, f"b{i}", 1.0) == "ok"
    assert permit(r, "green", epoch, "g1", 1.0) == "ok"
    step = canary(0.2, 0.0, 1.0, step="1")
    assert flip(r, "", flip_id="step-1", alloc=step)[0:2] == ["ok", str(epoch + 1)]
    assert stakes(r) == (0.0, 0.0)  # a new step counts from zero
    assert r.hmget(KEYS.alloc, "allocation", "step", "epoch") == ["0.2", "1", str(epoch + 1)]
    assert permit(r, "green", epoch, "g2", 1.0) == "stale_epoch"  # asked under the old split
    assert permit(r, "green", epoch + 1, "g2", 1.0) == "ok"
    # The same flip again (a retry after a lost reply): dup, and the stakes stay.
    assert flip(r, "", flip_id="step-1", alloc=step)[0] == "dup"
    assert stakes(r) == (0.0, 1.0)
