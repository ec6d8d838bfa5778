"""The A/B report's rules on known sums: no verdict before the minimum rounds nor while the
split is broken, and the sums saved and read back exactly (or not at all)."""

from __future__ import annotations

import random
from typing import Any

from supervisor.ab.arms import ARMS, Arms
from supervisor.ab.html import render
from supervisor.ab.report import build


def played(rounds_a: int, rounds_b: int, target_a: float, target_b: float, seed: int = 3) -> Arms:
    """Crash rounds at stake 1 (the seed's example), each arm its own target."""
    rng = random.Random(seed)
    arms = Arms(100.0)
    for arm, rounds, target in zip(ARMS, (rounds_a, rounds_b), (target_a, target_b), strict=True):
        for i in range(rounds):
            point = max(1.0, 0.99 / max(rng.random(), 1e-12))
            arms.execution(arm, f"{arm}{i}", 1.0)
            arms.outcome(arm, target - 1 if point >= target else -1.0, f"{arm}{i}")
    return arms


def report(arms: Arms, min_rounds: int) -> dict[str, Any]:
    return build(
        arms,
        flag="crash_target",
        a="2.0",
        b="3.0",
        split=50.0,
        min_rounds=min_rounds,
        alpha=0.05,
        n_star=2000,
    )


def test_no_verdict_before_the_minimum_rounds_even_when_the_interval_is_clear() -> None:
    arms = played(600, 600, 1.01, 50.0)  # win rates 98 % against 2 %: clear at once
    early = report(arms, min_rounds=1000)
    assert early["verdict"] == {"return": "not_yet", "win_rate": "not_yet"}
    assert "fewer than 1000 rounds" in str(early["why_not"])
    assert early["difference"]["win_rate"]["called"] == "a_better"
    late = report(arms, min_rounds=100)
    assert late["verdict"]["win_rate"] == "a_better"
    assert late["why_not"] is None


def test_a_broken_split_withholds_the_verdict() -> None:
    arms = played(900, 300, 1.01, 50.0)  # B played a third of A's rounds at a 50 % split
    r = report(arms, min_rounds=100)
    assert r["srm"]["rounds"]["broken"] is True
    assert r["verdict"]["win_rate"] == "not_yet"
    assert "sample ratio mismatch" in str(r["why_not"])


def test_the_sums_are_saved_and_read_back_exactly_and_only_for_their_test() -> None:
    arms = played(250, 260, 2.0, 3.0)
    arms.point(1.5, [(0.0, 1.0), None])
    again = Arms.load(arms.dump(), 100.0)
    assert again is not None
    for arm in ARMS:
        before, after = arms.arms[arm], again.arms[arm]
        assert after.rounds == before.rounds
        assert (after.returns.mean, after.returns.var) == (before.returns.mean, before.returns.var)
        assert (after.wins.mean, after.stakes.total, after.pnl) == (
            before.wins.mean,
            before.stakes.total,
            before.pnl,
        )
    assert again.series == arms.series
    assert report(again, 100)["difference"] == report(arms, 100)["difference"]
    assert Arms.load(arms.dump(), 101.0) is None  # another test's sums
    assert Arms.load(b"{not json", 100.0) is None
    assert Arms.load(b'{"id": "100.000", "arms": {}}', 100.0) is None
    assert Arms.load(None, 100.0) is None


def test_the_page_is_one_self_contained_document() -> None:
    arms = played(300, 300, 2.0, 3.0)
    for t in range(1, 6):
        arms.point(float(t), [(-0.5, 0.5), (-0.6, 0.4)])
    r = report(arms, 100)
    page = render({**r, "running": True, "since": 100.0, "seconds": 5.0, "version": "1.0.0"})
    assert page.count("<svg") == 1
    assert "<polygon" in page
    assert "<script" not in page
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
