"""The shadow's parts that need no daemon: the comparator, the floor rule, the intervals, the
bounded tallies, the page."""

from __future__ import annotations

import math
import random

from supervisor import protocol
from supervisor.config import ComparatorSpec, ShadowSection
from supervisor.shadow.compare import Comparator, Comparators, declared_by, flatten
from supervisor.shadow.html import render
from supervisor.shadow.stats import (
    MAX_FIELDS,
    MAX_KINDS,
    OTHER,
    Counts,
    Mean,
    Series,
    Tally,
    above_floor,
    t975,
)


def fields(live: object, shadow: object, **spec: object) -> list[str]:
    return [d.field for d in Comparator(ComparatorSpec(**spec)).diverging(live, shadow)]


def test_numbers_within_either_tolerance_are_the_same() -> None:
    # Diffy's defaults: 20 % relative, 0.03 absolute.
    assert fields({"x": 2.0}, {"x": 2.39}) == []  # 0.39 <= 0.2 × 2.39
    assert fields({"x": 2.0}, {"x": 2.6}) == ["x"]
    assert fields({"x": 0.0}, {"x": 0.03}) == []  # absolute
    assert fields({"x": 0.0}, {"x": 0.031}) == ["x"]
    assert fields({"x": 2.0}, {"x": 2.1}, relative=0.0, absolute=0.0) == ["x"]
    assert fields({"x": 1}, {"x": 1.0}) == []  # a number is a number


def test_fields_ignore_nesting_lists_and_missing_sides() -> None:
    live = {"bet": {"side": "over", "stake": 1.0}, "note": "a", "legs": [1.0, 2.0]}
    shadow = {"bet": {"side": "under", "stake": 1.0}, "note": "b", "legs": [1.0, 9.0], "new": 1}
    assert sorted(fields(live, shadow)) == ["bet.side", "legs", "new", "note"]
    assert sorted(fields(live, shadow, ignore=["note", "new"])) == ["bet.side", "legs"]
    assert fields(live, shadow, fields=["bet"]) == ["bet.side"]
    assert fields(live, shadow, fields=["bet"], ignore=["bet.side"]) == []
    assert fields({"legs": [1]}, {"legs": [1, 2]}) == ["legs"]
    assert fields(True, 1) == ["output"]  # a bool is not a number
    assert fields("over", "over") == []
    assert flatten({}) == {"output": {}}


def test_a_kind_s_comparator_comes_from_config_over_the_agent_s_declaration() -> None:
    section = ShadowSection(kinds={"dice": ComparatorSpec(ignore=["note"])})
    declared, problems = declared_by(
        {"comparators": {"dice": {"ignore": []}, "crash": {"relative": 0.0}, "bad": {"x": 1}}}
    )
    assert set(declared) == {"dice", "crash"}
    assert len(problems) == 1
    c = Comparators(section, declared)
    assert c.of("dice").ignore == ("note",)
    assert c.of("crash").relative == 0.0
    assert c.of("other").relative == 0.2
    assert declared_by({"comparators": 3})[1] == ["comparators is not an object"]
    assert declared_by(None) == ({}, [])


def test_the_floor_rule() -> None:
    # A planted difference passes even a small floor sample; the same rate on both sides never.
    assert above_floor(50, 50, 0, 5, z=3.0)
    assert not above_floor(260, 500, 55, 100, z=3.0)
    # One divergence in one sample is not certainty.
    assert not above_floor(1, 1, 0, 0, z=3.0)
    # No floor at all: taken as zero, so noise passes (what the floor is for).
    assert above_floor(260, 500, 0, 0, z=3.0)
    assert not above_floor(0, 500, 0, 0, z=3.0)


def test_noise_is_hidden_by_its_floor_in_simulation() -> None:
    """An agent whose field is noisy at 30 % each time it decides: shadow against live and live
    against itself differ alike; over 200 looks at growing samples the floor rule stays quiet
    nearly always, where a floor of zero reports it every time."""
    rng = random.Random(7)
    q = 0.3
    false, naive = 0, 0
    for look in range(200):
        n_s, n_f = 100 + 10 * look, 20 + 2 * look
        k_s = sum(rng.random() < 1 - (1 - q) ** 2 for _ in range(n_s))
        k_f = sum(rng.random() < 1 - (1 - q) ** 2 for _ in range(n_f))
        false += above_floor(k_s, n_s, k_f, n_f, z=3.0)
        naive += above_floor(k_s, n_s, 0, 0, z=3.0)
    assert false <= 4
    assert naive == 200


def test_mean_interval_and_t() -> None:
    assert t975(1) == 12.706
    assert t975(30) == 2.042
    assert math.isinf(t975(0))
    assert abs(t975(60) - 2.000) < 0.002
    assert abs(t975(1000) - 1.962) < 0.001
    m = Mean()
    assert m.interval() is None
    for x in (1.0, 2.0, 3.0, 4.0):
        m.add(x)
    lo, hi = m.interval() or (0, 0)
    assert m.mean == 2.5
    assert abs(m.std - 1.2909944) < 1e-6
    assert abs(hi - (2.5 + 3.182 * 1.2909944 / 2)) < 1e-6
    assert lo < 2.5 < hi


def test_memory_stays_bounded() -> None:
    counts = Counts()
    from supervisor.shadow.compare import Divergence

    for i in range(MAX_KINDS + 50):
        counts.add(f"k{i}", [Divergence(f"f{j}", 1, 2, 1.0) for j in range(MAX_FIELDS + 5)])
    assert len(counts.compared) == MAX_KINDS + 1
    assert counts.compared[OTHER] == 50
    assert all(len(f) <= MAX_FIELDS + 1 for f in counts.diverged.values())
    s = Series(cap=100)
    for i in range(100_000):
        s.add((float(i),))
    pts = s.snapshot()
    assert len(pts) <= 102
    assert pts[-1] == [99_999.0]
    t = Tally()
    for i in range(1000):
        t.keep_top({"i": i}, float(i % 37))
    assert len(t.top) == 20
    assert min(e[0] for e in t.top) >= 35


def test_the_replies_of_scoring_are_in_the_protocol() -> None:
    assert protocol.check({"type": "mirror_scored", "request_id": "r", "pnl": 1.5}) is None
    assert protocol.check({"type": "mirror_scored", "request_id": "r", "pnl": None}) is None
    assert protocol.check({"type": "mirror_scored", "request_id": "r", "pnl": 1e300}) == "range"
    assert protocol.check({"type": "mirror_scored", "pnl": 1.0}) == "field"


def test_the_page_is_self_contained_and_escapes_what_agents_said() -> None:
    report = {
        "color": "green",
        "live": "blue",
        "version": "<b>2</b>",
        "running": True,
        "mirrors": {"answered": 3},
        "reported": ["crash.target"],
        "series": {
            "pnl": [[1.0, -1.0, 1.0], [2.0, -2.0, 0.5], [3.0, -1.0, 2.0]],
            "divergences": [[10.0, 1, 1], [11.0, 2, 1]],
        },
        "pnl": {"scoring": True, "real": {"total": -1.0, "n": 3, "ci95": [-2.0, 1.0]}},
        "kinds": [
            {
                "kind": "crash",
                "compared": 2,
                "floor_compared": 0,
                "fields": [
                    {
                        "field": "target",
                        "diverged": 1,
                        "rate": 0.5,
                        "floor_rate": None,
                        "excess": 0.5,
                        "reported": True,
                    }
                ],
            }
        ],
        "top": [
            {
                "kind": "crash",
                "decision_id": "d<1>",
                "fields": [{"field": "target", "live": 2.0, "shadow": "<script>"}],
                "inputs": {"n": "</code>"},
            }
        ],
        "latency": {"shadow_mirror": {"n": 1, "p50_ms": 1.0}},
    }
    page = render(report)
    assert page.count("<svg") == 2
    assert page.count("<polyline") == 4
    assert "<script" not in page
    assert "&lt;script&gt;" in page
    assert "&lt;b&gt;2" in page
    assert "http" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
