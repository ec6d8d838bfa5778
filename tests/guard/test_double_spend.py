"""double_spend: a key executed twice by one color or by both, memory that forgets the oldest
keys and says so, the permit in Redis as the durable record, and memory per key."""

from __future__ import annotations

import gc
import tracemalloc

import pytest
from pydantic import ValidationError

from supervisor.config import Color, DoubleSpendTrigger
from supervisor.guard.double_spend import MAX_KEY_CHARS, DoubleSpend, memory_key, parse_permit
from supervisor.guard.verdict import Action, Severity

BLUE, GREEN = Color.BLUE, Color.GREEN


def guard(memory_keys: int = 50_000, **kw: bool) -> DoubleSpend:
    return DoubleSpend(DoubleSpendTrigger(memory_keys=memory_keys), **kw)


def test_the_same_key_twice_by_one_color() -> None:
    g = guard()
    assert g.execution(BLUE, "order-7", 7, now=10.0) is None
    v = g.execution(BLUE, "order-7", 7, now=12.0)
    assert v is not None
    assert (v.trigger, v.severity, v.action, v.color) == (
        "double_spend",
        Severity.CRITICAL,
        Action.ROLLBACK,
        BLUE,
    )
    assert v.message == (
        "key 'order-7' executed twice: by blue at epoch 7, 2.0 s ago, and now by blue at epoch 7"
    )
    assert (v.value, v.threshold) == (2.0, 1.0)
    # Once per key and color: a third execution by blue is counted, not reported again.
    assert g.execution(BLUE, "order-7", 7, now=13.0) is None
    st = g.state(BLUE, now=20.0)
    assert (st["state"], st["fired"], st["last_fired"], st["last_key"]) == (
        "fired",
        1,
        12.0,
        "order-7",
    )
    assert st["last_fired_ago_s"] == 8.0
    assert g.state(GREEN)["state"] == "ok"


def test_blue_then_green_after_the_switch() -> None:
    g = guard()
    assert g.execution(BLUE, "order-7", 7, now=100.0) is None
    v = g.execution(GREEN, "order-7", 8, now=101.5)
    assert v is not None
    assert v.color is GREEN  # the second executor, whichever color that is
    assert v.action is Action.ROLLBACK
    assert "'order-7'" in v.message
    assert "by blue at epoch 7, 1.5 s ago" in v.message
    assert "now by green at epoch 8" in v.message
    # And blue executing it a second time too is a double spend of its own.
    blue_again = g.execution(BLUE, "order-7", 9, now=102.0)
    assert blue_again is not None
    assert blue_again.color is BLUE


def test_an_unknown_epoch_is_said_so() -> None:
    g = guard()
    g.execution(GREEN, "k", None, now=0.0)
    v = g.execution(BLUE, "k", None, now=0.0)
    assert v is not None
    assert "by green at an unknown epoch" in v.message


def test_distinct_keys_never_fire() -> None:
    g = guard(memory_keys=1000)
    for i in range(20_000):
        color = BLUE if i % 3 else GREEN
        assert g.execution(color, f"order-{i}", i // 1000, now=float(i)) is None
    assert len(g) == 1000
    assert g.evicted == 19_000


def test_eviction_makes_memory_say_it_might_have_forgotten() -> None:
    g = guard(memory_keys=3)
    for key in ("a", "b", "c"):
        assert not g.might_have_forgotten(key)  # nothing forgotten yet: memory vouches
        g.execution(BLUE, key, 1, now=0.0)
        assert not g.might_have_forgotten(key)
    assert not g.might_have_forgotten("never-seen")
    assert g.state(BLUE)["memory_complete"] is True

    g.execution(BLUE, "d", 1, now=1.0)  # "a" is forgotten
    assert g.evicted == 1
    assert not g.might_have_forgotten("d")  # new when memory still had everything
    assert g.might_have_forgotten("a")
    assert g.might_have_forgotten("never-seen")
    assert not g.might_have_forgotten("c")  # still remembered: memory answers for it
    # The forgotten key executed again is not caught by memory: that is what Redis is for.
    assert g.execution(GREEN, "a", 2, now=2.0) is None

    # From now on, a new key may be an old one: asked before or right after execution().
    assert g.might_have_forgotten("e")
    g.execution(BLUE, "e", 1, now=3.0)
    assert g.might_have_forgotten("e")
    g.execution(BLUE, "f", 1, now=3.0)
    assert not g.might_have_forgotten("e")  # and only for the event at hand


def test_a_daemon_restarted_over_old_permits_starts_unsure() -> None:
    g = guard(fresh=False)
    assert g.might_have_forgotten("order-1")
    g.execution(BLUE, "order-1", 1, now=0.0)
    assert g.might_have_forgotten("order-1")
    g.execution(BLUE, "order-2", 1, now=0.0)
    assert not g.might_have_forgotten("order-1")


def test_from_permit_record() -> None:
    g = guard()
    # No permit: it expired, or the agent never asks for one. Nothing to compare.
    assert g.from_permit_record(GREEN, "k0", None, 8) is None
    # This execution's own permit.
    assert g.from_permit_record(GREEN, "k1", "green:8:tok", 8) is None
    assert g.from_permit_record(GREEN, "k1", b"green:8:tok", 8) is None
    # The permit is newer than the epoch the daemon knew: a flip came between the permit and
    # the report, so it is still this execution's own.
    assert g.from_permit_record(GREEN, "k2", "green:9:tok", 8) is None
    # The daemon does not know the epoch: the same color cannot be told apart.
    assert g.from_permit_record(GREEN, "k3", "green:5:tok", None) is None
    # Garbage is not evidence.
    assert g.from_permit_record(GREEN, "k4", "whatever", 8) is None
    assert g.from_permit_record(GREEN, "k4", "red:8:x", 8) is None

    other = g.from_permit_record(GREEN, "order-7", "blue:7:tok", 8, now=50.0)
    assert other is not None
    assert (other.color, other.action, other.severity) == (
        GREEN,
        Action.ROLLBACK,
        Severity.CRITICAL,
    )
    assert "permit went to blue at epoch 7" in other.message
    assert "green executed it at epoch 8" in other.message
    assert g.state(GREEN)["last_fired"] == 50.0

    older = g.from_permit_record(BLUE, "order-8", "blue:6:tok", 9)
    assert older is not None
    assert older.color is BLUE
    assert "blue at epoch 6" in older.message

    # When the agent reports the token it asked with, another token is another execution.
    assert g.from_permit_record(GREEN, "k5", "green:8:tok", 8, token="tok") is None
    assert g.from_permit_record(GREEN, "k5", "green:8:tok", 8, token="other") is not None


def test_memory_then_redis_as_the_daemon_wires_it() -> None:
    g = guard(memory_keys=2)
    g.execution(BLUE, "order-7", 7, now=0.0)
    g.execution(BLUE, "x", 7, now=1.0)
    g.execution(BLUE, "y", 7, now=2.0)  # order-7 forgotten
    # Green executes order-7 after the switch: memory says nothing, but it might have forgotten.
    assert g.execution(GREEN, "order-7", 8, now=3.0) is None
    assert g.might_have_forgotten("order-7")
    v = g.from_permit_record(GREEN, "order-7", "blue:7:abc", 8, now=3.0)
    assert v is not None
    assert v.color is GREEN
    # Reported once: memory now knows green was reported for this key.
    assert g.execution(GREEN, "order-7", 8, now=4.0) is None
    assert g.from_permit_record(GREEN, "order-7", "blue:7:abc", 8) is None


def test_long_keys_are_remembered_by_digest() -> None:
    g = guard()
    base = "k" * 10_000
    assert g.execution(BLUE, base + "1", 1, now=0.0) is None
    assert g.execution(BLUE, base + "2", 1, now=0.0) is None  # a different key
    v = g.execution(GREEN, base + "1", 2, now=1.0)
    assert v is not None
    assert len(v.message) < 300  # the key is shortened in the message
    assert all(len(k) <= MAX_KEY_CHARS for k in g._seen)
    assert memory_key("short") == "short"
    assert memory_key(base) != base[:MAX_KEY_CHARS]


def test_parse_permit() -> None:
    assert parse_permit("blue:7:a:b:c") == ("blue", 7, "a:b:c")
    assert parse_permit("green:x:t") == ("green", None, "t")
    assert parse_permit("green:7") is None


def test_disabled_remembers_nothing() -> None:
    g = DoubleSpend(DoubleSpendTrigger(enabled=False))
    g.execution(BLUE, "k", 1, now=0.0)
    assert g.execution(BLUE, "k", 1, now=0.0) is None
    assert len(g) == 0
    assert not g.might_have_forgotten("k")
    assert g.from_permit_record(GREEN, "k", "blue:1:t", 2) is None


def test_config() -> None:
    assert DoubleSpendTrigger().memory_keys == 50_000
    with pytest.raises(ValidationError):
        DoubleSpendTrigger(memory_keys=0)


def test_memory_is_bounded_at_memory_keys_over_a_million_executions() -> None:
    cap = 50_000
    g = guard(memory_keys=cap)
    for i in range(1_000_000):
        g.execution(GREEN if i & 1 else BLUE, f"order-{i:010d}", 1000 + (i >> 16), float(i))
    assert len(g._seen) == len(g._order) == cap
    assert g.evicted == 1_000_000 - cap
    assert sum(g.fired.values()) == 0


def test_memory_per_key() -> None:
    """Bytes a remembered key costs, with its 16-character key string (order-0000000001),
    the dict slot, the deque slot and the packed record; printed for the report."""
    cap = 50_000
    g = guard(memory_keys=cap)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(cap):
            g.execution(BLUE, f"order-{i:010d}", 1_234, 1_000_000.0 + i)
        full = tracemalloc.get_traced_memory()[0]
        for i in range(cap, 4 * cap):  # churn: evictions must not leave memory behind
            g.execution(BLUE, f"order-{i:010d}", 1_234, 1_000_000.0 + i)
        churned = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    per_key, steady = (full - before) / cap, (churned - before) / cap
    print(
        f"\ndouble_spend memory at {cap:,} keys: {per_key:.0f} bytes/key filled "
        f"({full - before:,} B), {steady:.0f} bytes/key after churn ({churned - before:,} B)"
    )
    assert per_key < 200
    # Evictions leave the dict's table sparser (it resizes for the deleted slots too), but
    # churning three times the cap must not grow memory past the ~10 MB aim.
    assert churned - before < 10_000_000
