"""The permit script in an A/B test, one answer at a time, against a real redis-server.

The fence's promise in A/B mode: both arms are held to their share of the test's stake (blue,
the color in charge, to ``1 - allocation``; green to ``allocation``), plus the allowance; an
arm at or under its share is never refused (so two arms whose stakes are large against the
total never refuse each other for ever), and it overshoots by one stake at most."""

from __future__ import annotations

import random

import redis

from tests.canary.test_alloc_script import KEYS, canary, flip, permit, r, stakes

__all__ = ["r"]  # the fixture, shared with the canary's script tests


def in_ab(r: redis.Redis, allocation: float = 0.5, allowance: float = 0.01) -> int:
    """Blue in charge (arm A), green arm B at ``allocation``: the epoch."""
    r.set(KEYS.active, "blue")
    r.set(KEYS.epoch, 4)
    r.set(KEYS.owner, "blue")
    answer = flip(r, "", flip_id="ab", alloc=canary(allocation, allowance, mode="ab"))
    assert answer[0] == "ok"
    return int(answer[1])


def test_both_arms_are_held_to_their_share_and_the_one_behind_always_moves(
    r: redis.Redis,
) -> None:
    epoch = in_ab(r, allocation=0.5, allowance=0.0)
    assert permit(r, "blue", epoch, "b1", 10.0) == "ok"  # nothing staked: blue is behind
    assert permit(r, "blue", epoch, "b2", 1.0) == "over_allocation"  # 11 > 0.5 * 11
    assert permit(r, "green", epoch, "g1", 8.0) == "ok"
    # Stakes as large as the total: no stake of blue's fits its share now (10 + x > 0.5 *
    # (18 + x)), and none of green's (8 + x > 0.5 * (18 + x) for x > 2): the arm at or under
    # its share (green, 8 of 18) is granted all the same.
    assert permit(r, "green", epoch, "g2", 9.0) == "ok"
    assert stakes(r) == (10.0, 17.0)
    assert permit(r, "green", epoch, "g3", 1.0) == "over_allocation"  # now it is ahead
    assert permit(r, "blue", epoch, "b3", 7.0) == "ok"
    assert stakes(r) == (17.0, 17.0)
    # A refused permit burned no key: asked again once it fits, it is granted.
    assert permit(r, "blue", epoch, "b2", 1.0) == "ok"
    assert permit(r, "green", epoch, "g3", 1.0) == "ok"
    assert permit(r, "blue", epoch, "b6", 2.0) == "ok"  # 18 of 36 before it: behind
    assert permit(r, "blue", epoch, "b7", 2.0) == "over_allocation"  # 22 > 0.5 * 40
    # Amounts are still required, and a stale epoch is refused first.
    assert permit(r, "blue", epoch, "b4") == "amount_required"
    assert permit(r, "blue", epoch - 1, "b5", 1.0) == "stale_epoch"


def test_at_an_uneven_split_each_arm_stays_within_its_share_plus_one_stake(
    r: redis.Redis,
) -> None:
    allocation, allowance = 0.3, 0.01
    epoch = in_ab(r, allocation=allocation, allowance=allowance)
    rng = random.Random(5)
    share = {"blue": 1 - allocation, "green": allocation}
    granted = {"blue": 0, "green": 0}
    for i in range(2000):
        color = rng.choice(("blue", "green"))
        amount = round(rng.uniform(0.5, 1.5) * share[color], 6)
        if permit(r, color, epoch, f"k{i}", amount) == "ok":
            granted[color] += 1
        blue, green = stakes(r)
        total = blue + green
        assert blue <= (share["blue"] + allowance) * total + 1.5, (i, blue, green)
        assert green <= (share["green"] + allowance) * total + 1.5, (i, blue, green)
    blue, green = stakes(r)
    assert abs(green / (blue + green) - allocation) < 0.02
    assert min(granted.values()) > 300  # both moved all along


def test_the_canary_is_unchanged_stable_is_never_refused(r: redis.Redis) -> None:
    epoch = flip_to_canary(r)
    for i in range(20):
        assert permit(r, "blue", epoch, f"b{i}", 10.0) == "ok"
    assert permit(r, "green", epoch, "g1", 300.0) == "over_allocation"  # 300 > 0.5 * 500


def flip_to_canary(r: redis.Redis) -> int:
    r.set(KEYS.active, "blue")
    r.set(KEYS.epoch, 4)
    r.set(KEYS.owner, "blue")
    answer = flip(r, "", flip_id="canary", alloc=canary(0.5, 0.0))
    assert answer[0] == "ok"
    return int(answer[1])
